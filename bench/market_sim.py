"""Market simulation: which bid-selection rule gets jobs done for the least money?

Thousands of providers with heterogeneous hardware bid on a stream of jobs;
each job is a fixed amount of work (TFLOP-hours) on 1-4 GPUs of one provider.
The tenant picks a bid with the package's own selection code
(:func:`jupyter_gpumarket.market.auction.select_bids`) under five policies:

``price``         lowest hourly price, claims taken at face value, no checks;
``ecc_claims``    lowest expected cost to complete (``cost_score``) on claimed
                  TFLOPS, no reputation (every provider at the prior), no checks;
``price_attested``lowest hourly price, with the checks below (isolates the
                  selection rule from the checks);
``ecc_attested``  expected cost to complete with attestation (the measured
                  TFLOPS replace the claim, later auctions reuse it; a provider
                  under 85% of its claim is rejected at lease start with a full
                  refund), reputation (``Provider.reliability`` from completed /
                  rejected / disputes-lost counters that evolve as on chain) and
                  spot checks at the rate of
                  :func:`jupyter_gpumarket.verify.sampling.choose_sampling`
                  (a caught cheater's payment is refunded and its whole stake
                  slashed to the tenant, which leaves it below the minimum stake,
                  i.e. out of the market);
``hyperscaler``   every job on an H100 at a published on-demand price
                  (AWS p5: $98.32/h for 8 H100 = $12.29/GPU-h; range $8-12/h).

Provider behaviours: *honest* (delivers 88-100% of its claim), *slow* (delivers
30-70% of its claim: a power-capped or different card behind an H100 claim),
*cheating* (owns the hardware but returns wrong results on a fraction 5-50% of
tasks, skipping that work, so it can undercut), *flaky* (its node dies mid-job
with probability 20-60% per lease). Every policy is run on the same providers
and the same order stream; a tenant retries a job it knows failed (at most
``attempts`` leases per order, next best bid of the same auction). What the
tenant cannot see, a silently wrong result, counts as a failed job and its
payment as money lost to cheaters.

Assumptions, stated so they can be argued with:

* prices per GPU-hour on the open market: H100 $1.9-3.2, A100-80G $1.1-1.9,
  A100-40G $0.8-1.4, RTX 4090 $0.30-0.60, L4 $0.35-0.75 (Vast.ai / RunPod
  ranges, 2024-25); dense BF16 TFLOPS 989 / 312 / 312 / 165 / 121;
* slow providers ask 70-100% of their claimed class's price, flaky ones
  60-90%, cheaters 50-85% (they save the work they skip);
* 35% of jobs need at least 40 GiB per GPU (rules out 4090 and L4);
* slow jobs without attestation are topped up until done (paid per hour);
  flaky deaths are paid up to the last heartbeat; on chain a heartbeat close
  counts as a *completed* lease (``_settle``), so reputation does not see flakiness;
* the spot-check rate uses ``C = R`` (a tenant cannot know the provider's
  cost; this is the cautious choice), colluding checker fraction r = 0.1,
  margin 1.5; re-running the sampled tasks costs the tenant ``rate x payment``;
  a checker colludes with probability r;
* cheaters never adapt: the worst case for the checks (PoS predicts a rational
  provider would stop cheating at this rate).

Prints a table, then one JSON line. Deterministic for a given ``--seed``.

Findings (default run: 2000 providers, 5000 orders, seed 7; ~8-13 s on 2 cores):
cost per completed job $18.17 (price), $16.22 (ecc_claims), $16.77
(price_attested), $13.04 (ecc_attested), $62.28 on AWS p5 ($40.5-60.8 at
$8-12/h): attested expected-cost selection is 28% cheaper than lowest price
(goal >= 25%; seeds 1-3: 28-32%) and 22% cheaper than lowest price with the
same checks, so about half the saving is the selection rule and half the
checks. Orders without a correct result: 24.7% / 36.7% / 12.3% / 1.9%.
Cheaters keep 13.9% of payments under lowest price, 20.3% under claims-only
expected cost (a cheater's undercut price on a real claim scores best), and
0.53% under ecc_attested (goal < 1%; seeds 1-3: 0.44-0.71%). That share is
cumulative and falls as caught cheaters are slashed out of the market: 3.0%
over the first 500 orders, 0.08% over the second half. Caveats: the 5%
floor on the sampling rate matters (PoS rate alone, margin 1.5: 1.2% share,
27% saving); spot checks cost 8.2% of spend, above the 5% goal of the
spot-check bench, because with ``C = R`` the PoS rate grows with the job's
value relative to the stake (stake scaled to the lease would lower it); and
reputation does not see flaky providers (a heartbeat close counts as
completed on chain), so ecc_attested sees more mid-job deaths (715) than
lowest price (452).

    python bench/market_sim.py [--providers 2000] [--orders 5000] [--seed 7] [--out bench/out/market_sim.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from jupyter_gpumarket.market.auction import select_bids
from jupyter_gpumarket.spec import Bid, GpuSpec, HardwareClaim, Provider
from jupyter_gpumarket.verify.sampling import choose_sampling

BASE = 1_000_000  # token base units per dollar (6 decimals)

# name, dense BF16 TFLOPS per GPU, memory GiB, share of providers, price band $/GPU-h
HARDWARE = (
    ("H100", 989.0, 80, 0.20, (1.9, 3.2)),
    ("A100-80G", 312.0, 80, 0.15, (1.1, 1.9)),
    ("A100-40G", 312.0, 40, 0.15, (0.8, 1.4)),
    ("RTX 4090", 165.0, 24, 0.35, (0.30, 0.60)),
    ("L4", 121.0, 24, 0.15, (0.35, 0.75)),
)
BEHAVIOURS = ("honest", "slow", "cheating", "flaky")
HYPERSCALER_H100_PER_GPU_HOUR = 98.32 / 8  # AWS p5.48xlarge on demand, us-east-1
HYPERSCALER_RANGE = (8.0, 12.0)  # H100 on-demand $/GPU-h, per the project brief
POLICIES = ("price", "ecc_claims", "price_attested", "ecc_attested")


@dataclass(frozen=True)
class SimConfig:
    providers: int = 2000
    orders: int = 5000
    seed: int = 7
    behaviour_mix: tuple[float, float, float, float] = (0.70, 0.10, 0.10, 0.10)  # honest, slow, cheating, flaky
    bidders: int = 40  # providers that bid on one order (a random sample of the free, fitting ones)
    attempts: int = 4  # leases per order at most (retries after a visible failure)
    attest_tolerance: float = 0.15  # reject below (1 - tol) x claim
    stake_range: tuple[float, float] = (200.0, 1000.0)  # $ bonded per provider
    colluding_fraction: float = 0.1
    sampling_margin: float = 1.5
    sampling_floor: float = 0.05  # never check less than 5% of tasks (the operating point of the spot-check bench)
    tflop_hours_per_task: float = 20.0
    big_memory_share: float = 0.35
    busy_share: float = 0.10  # target share of providers on a lease at any time


@dataclass
class World:
    """Provider population, shared by every policy (each policy copies the mutable parts)."""

    hw: np.ndarray  # index into HARDWARE
    behaviour: np.ndarray  # index into BEHAVIOURS
    gpu_count: np.ndarray
    memory: np.ndarray
    claim: np.ndarray  # TFLOPS per GPU
    efficiency: np.ndarray  # delivered / claimed throughput
    ask: np.ndarray  # $ per GPU-hour
    stake: np.ndarray  # $
    cheat_fraction: np.ndarray
    die_prob: np.ndarray
    providers: dict[int, Provider]  # claims, zero counters


@dataclass(frozen=True)
class SimOrder:
    id: int
    arrival: float  # hours
    work: float  # TFLOP-hours for the whole job
    gpus: int
    min_memory: int


@dataclass
class PolicyResult:
    name: str
    spend: float = 0.0  # what tenants paid, net of refunds, plus spot-check re-runs
    paid_providers: float = 0.0  # kept by providers at the end
    paid_cheaters: float = 0.0  # kept by cheating providers (payments not refunded)
    spot_check_cost: float = 0.0
    slashed_to_tenants: float = 0.0
    completed: int = 0
    failed: int = 0  # no correct result: out of attempts, no bid, or a silently wrong result
    wrong_results: int = 0  # failed jobs whose result was silently wrong
    leases: int = 0
    rejected_at_attestation: int = 0
    cheaters_caught: int = 0
    flaky_deaths: int = 0
    mean_rate: float = 0.0
    paid_curve: list[float] = field(default_factory=list)  # cumulative paid_providers after each order
    cheater_curve: list[float] = field(default_factory=list)  # cumulative paid_cheaters after each order

    @property
    def orders(self) -> int:
        return self.completed + self.failed

    @property
    def cost_per_job(self) -> float:
        return self.spend / self.completed if self.completed else math.inf

    @property
    def failure_rate(self) -> float:
        return self.failed / self.orders if self.orders else 0.0

    @property
    def cheater_share(self) -> float:
        return self.paid_cheaters / self.paid_providers if self.paid_providers else 0.0

    def cheater_share_between(self, start: int, stop: int) -> float:
        """Cheaters' share of what providers kept from orders ``start`` to ``stop`` (0-based, end excluded)."""
        paid = np.concatenate([[0.0], self.paid_curve])
        cheat = np.concatenate([[0.0], self.cheater_curve])
        total = paid[stop] - paid[start]
        return float((cheat[stop] - cheat[start]) / total) if total > 0 else 0.0


def make_world(cfg: SimConfig, rng: np.random.Generator) -> World:
    n = cfg.providers
    shares = np.array([h[3] for h in HARDWARE])
    hw = rng.choice(len(HARDWARE), size=n, p=shares / shares.sum())
    mix = np.array(cfg.behaviour_mix)
    behaviour = rng.choice(len(BEHAVIOURS), size=n, p=mix / mix.sum())
    gpu_count = rng.choice([1, 2, 4, 8], size=n, p=[0.35, 0.25, 0.25, 0.15])
    claim = np.array([HARDWARE[h][1] for h in hw])
    memory = np.array([HARDWARE[h][2] for h in hw])
    lo = np.array([HARDWARE[h][4][0] for h in hw])
    hi = np.array([HARDWARE[h][4][1] for h in hw])
    band = lo + (hi - lo) * rng.random(n)
    discount = np.ones(n)
    efficiency = rng.uniform(0.88, 1.0, n)
    cheat_fraction = np.zeros(n)
    die_prob = np.zeros(n)
    slow, cheat, flaky = (behaviour == 1), (behaviour == 2), (behaviour == 3)
    efficiency[slow] = rng.uniform(0.30, 0.70, slow.sum())
    discount[slow] = rng.uniform(0.70, 1.00, slow.sum())
    cheat_fraction[cheat] = rng.uniform(0.05, 0.50, cheat.sum())
    discount[cheat] = rng.uniform(0.50, 0.85, cheat.sum())
    die_prob[flaky] = rng.uniform(0.20, 0.60, flaky.sum())
    discount[flaky] = rng.uniform(0.60, 0.90, flaky.sum())
    ask = np.round(band * discount, 4)
    stake = rng.uniform(*cfg.stake_range, n)
    providers = {
        i: Provider(
            id=i,
            owner=f"0x{i:040x}",
            stake=int(stake[i] * BASE),
            claim=HardwareClaim(HARDWARE[hw[i]][0], int(gpu_count[i]), int(memory[i]), float(claim[i])),
            active=True,
        )
        for i in range(n)
    }
    return World(hw, behaviour, gpu_count, memory, claim, efficiency, ask, stake, cheat_fraction, die_prob, providers)


def make_orders(cfg: SimConfig, rng: np.random.Generator) -> list[SimOrder]:
    work = rng.lognormal(mean=math.log(2000.0), sigma=0.8, size=cfg.orders)  # median ~2 H100-hours
    gpus = rng.choice([1, 2, 4], size=cfg.orders, p=[0.6, 0.25, 0.15])
    big = rng.random(cfg.orders) < cfg.big_memory_share
    # Arrivals: keep about busy_share of providers leased (a mean lease is ~4 h).
    per_hour = max(cfg.providers * cfg.busy_share / 4.0, 1e-9)
    arrival = np.cumsum(rng.exponential(1.0 / per_hour, cfg.orders))
    return [
        SimOrder(i, float(arrival[i]), float(work[i] * gpus[i]), int(gpus[i]), 40 if big[i] else 0)
        for i in range(cfg.orders)
    ]


def run_policy(name: str, world: World, orders: list[SimOrder], cfg: SimConfig) -> PolicyResult:
    """Play the order stream against the providers under one policy."""
    rule = "price" if name.startswith("price") else "cost"
    checks = name.endswith("attested")
    rng = np.random.default_rng([cfg.seed, POLICIES.index(name)])
    providers = dict(world.providers)  # counters evolve here when checks (and so reputation) are on
    measured: dict[int, float] = {}
    busy_until = np.zeros(cfg.providers)
    active = np.ones(cfg.providers, dtype=bool)
    res = PolicyResult(name)
    rates = []
    bid_id = 0
    for order in orders:
        fits = active & (busy_until <= order.arrival) & (world.gpu_count >= order.gpus)
        fits &= world.memory >= order.min_memory
        pool = np.flatnonzero(fits)
        if len(pool) > cfg.bidders:
            pool = rng.choice(pool, size=cfg.bidders, replace=False)
        jitter = rng.uniform(0.95, 1.05, len(pool))
        bids = []
        for pid, j in zip(pool.tolist(), jitter.tolist()):
            bid_id += 1
            price = max(1, int(round(world.ask[pid] * j * BASE)))
            bids.append(Bid(bid_id, order.id, pid, price, order.gpus))
        spec = GpuSpec(count=order.gpus, min_memory_gib=order.min_memory)
        excluded: set[int] = set()
        outcome = "no_bid"
        for _ in range(cfg.attempts):
            live = [b for b in bids if b.provider_id not in excluded]
            sel = select_bids(
                live, providers if checks else world.providers, order.gpus, spec, rule=rule,
                measured_tflops=measured if checks and rule == "cost" else None,
            )
            if not sel.accepted:
                outcome = "no_bid"
                break
            bid = sel.accepted[0]
            pid = bid.provider_id
            excluded.add(pid)
            outcome = _lease(world, cfg, rng, res, order, bid, providers, measured, busy_until, active, checks, rates)
            if outcome in ("done", "wrong"):
                break
        if outcome == "done":
            res.completed += 1
        else:
            res.failed += 1
            res.wrong_results += outcome == "wrong"
        res.paid_curve.append(res.paid_providers)
        res.cheater_curve.append(res.paid_cheaters)
    res.mean_rate = float(np.mean(rates)) if rates else 0.0
    return res


def _lease(world, cfg, rng, res, order, bid, providers, measured, busy_until, active, checks, rates) -> str:
    """One lease: 'done', 'wrong' (silently), or a visible failure ('rejected', 'died', 'caught')."""
    pid = bid.provider_id
    price = bid.price_per_gpu_hour / BASE * order.gpus  # $ per hour for the lease
    claim = world.claim[pid] * order.gpus
    delivered = claim * world.efficiency[pid]
    behaviour = BEHAVIOURS[world.behaviour[pid]]
    res.leases += 1

    def counters(**inc):
        if checks:
            p = providers[pid]
            providers[pid] = replace(p, **{k: getattr(p, k) + v for k, v in inc.items()})

    if checks:  # attestation at lease start: a timed benchmark, a few % of noise
        measured_per_gpu = world.claim[pid] * world.efficiency[pid] * rng.uniform(0.97, 1.03)
        measured[pid] = measured_per_gpu
        if measured_per_gpu < world.claim[pid] * (1 - cfg.attest_tolerance):
            res.rejected_at_attestation += 1
            counters(leases_rejected=1)  # rejectLease: full refund, nothing paid
            return "rejected"

    if behaviour == "cheating":
        hours = order.work * (1 - world.cheat_fraction[pid]) / delivered
    else:
        hours = order.work / delivered  # slow ones are topped up until done
    if behaviour == "flaky" and rng.random() < world.die_prob[pid]:
        hours_paid = hours * rng.random()
        pay = price * hours_paid
        res.spend += pay
        res.paid_providers += pay
        res.flaky_deaths += 1
        busy_until[pid] = order.arrival + hours_paid
        counters(leases_completed=1)  # closeLeaseAtHeartbeat settles as a completed lease
        return "died"

    pay = price * hours
    busy_until[pid] = order.arrival + hours
    res.spend += pay
    res.paid_providers += pay
    rate = 0.0
    if checks:
        plan = choose_sampling(
            cost_honest=pay, payment=pay, stake=world.stake[pid],
            colluding_fraction=cfg.colluding_fraction, margin=cfg.sampling_margin, floor=cfg.sampling_floor,
        )
        rate = plan.rate
        rates.append(rate)
        check_cost = rate * pay  # re-running the sampled tasks elsewhere at a similar price
        res.spend += check_cost
        res.spot_check_cost += check_cost
    if behaviour != "cheating":
        counters(leases_completed=1)
        return "done"

    n_tasks = max(10, int(round(order.work / cfg.tflop_hours_per_task)))
    bad = rng.binomial(n_tasks, world.cheat_fraction[pid])
    if checks and bad > 0:
        sampled_bad = rng.binomial(bad, rate)
        checker_honest = rng.random() >= cfg.colluding_fraction
        if sampled_bad > 0 and checker_honest:  # dispute: payment refunded, stake slashed to the tenant
            res.spend -= pay
            res.paid_providers -= pay
            res.slashed_to_tenants += world.stake[pid]
            res.cheaters_caught += 1
            active[pid] = False  # stake below minStake: cannot bid again
            counters(disputes_lost=1)
            return "caught"
    if bad == 0:  # got lucky: every task happened to be computed
        counters(leases_completed=1)
        return "done"
    res.paid_cheaters += pay
    counters(leases_completed=1)
    return "wrong"


def hyperscaler(orders: list[SimOrder], price: float = HYPERSCALER_H100_PER_GPU_HOUR) -> float:
    """Cost per job with every job on H100s at ``price`` per GPU-hour (delivering 94% of 989 TFLOPS)."""
    total = sum(o.work / (989.0 * 0.94) * price for o in orders)
    return total / len(orders)


def simulate(cfg: SimConfig) -> dict:
    rng = np.random.default_rng(cfg.seed)
    world = make_world(cfg, rng)
    orders = make_orders(cfg, rng)
    results = {name: run_policy(name, world, orders, cfg) for name in POLICIES}
    return {
        "config": cfg,
        "world": world,
        "orders": orders,
        "results": results,
        "hyperscaler": hyperscaler(orders),
        "hyperscaler_range": tuple(hyperscaler(orders, p) for p in HYPERSCALER_RANGE),
    }


def summary(sim: dict) -> dict:
    r = sim["results"]
    price, ecc = r["price"], r["ecc_attested"]
    n = ecc.orders
    return {
        "providers": sim["config"].providers,
        "orders": sim["config"].orders,
        "seed": sim["config"].seed,
        "cost_per_job_price": round(price.cost_per_job, 3),
        "cost_per_job_ecc_claims": round(r["ecc_claims"].cost_per_job, 3),
        "cost_per_job_price_attested": round(r["price_attested"].cost_per_job, 3),
        "cost_per_job_ecc_attested": round(ecc.cost_per_job, 3),
        "ecc_vs_price_saving": round(1 - ecc.cost_per_job / price.cost_per_job, 4),
        "ecc_claims_vs_price_saving": round(1 - r["ecc_claims"].cost_per_job / price.cost_per_job, 4),
        "ecc_vs_price_attested_saving": round(1 - ecc.cost_per_job / r["price_attested"].cost_per_job, 4),
        "failure_rate_price": round(price.failure_rate, 4),
        "failure_rate_ecc_claims": round(r["ecc_claims"].failure_rate, 4),
        "failure_rate_ecc_attested": round(ecc.failure_rate, 4),
        "cheater_payment_share_price": round(price.cheater_share, 5),
        "cheater_payment_share_ecc_claims": round(r["ecc_claims"].cheater_share, 5),
        "cheater_payment_share_attested": round(ecc.cheater_share, 5),
        "cheater_payment_share_attested_first_tenth": round(ecc.cheater_share_between(0, max(1, n // 10)), 5),
        "cheater_payment_share_attested_second_half": round(ecc.cheater_share_between(n // 2, n), 5),
        "money_lost_to_cheaters_price": round(price.paid_cheaters, 2),
        "money_lost_to_cheaters_attested": round(ecc.paid_cheaters, 2),
        "mean_spot_check_rate_attested": round(ecc.mean_rate, 4),
        "spot_check_cost_share_attested": round(ecc.spot_check_cost / ecc.spend, 4) if ecc.spend else 0.0,
        "cheaters_slashed_attested": ecc.cheaters_caught,
        "slashed_to_tenants_attested": round(ecc.slashed_to_tenants, 2),
        "hyperscaler_cost_per_job": round(sim["hyperscaler"], 3),
        "hyperscaler_cost_per_job_8_to_12": [round(x, 3) for x in sim["hyperscaler_range"]],
        "ecc_attested_vs_hyperscaler_saving": round(1 - ecc.cost_per_job / sim["hyperscaler"], 4),
        "goal_saving_25pct_met": bool(1 - ecc.cost_per_job / price.cost_per_job >= 0.25),
        "goal_cheater_share_below_1pct_met": bool(ecc.cheater_share < 0.01),
    }


def table(sim: dict) -> str:
    head = (f"{'policy':<16}{'$/done job':>11}{'fail %':>8}{'wrong %':>8}{'cheat pay %':>12}{'lost to cheat $':>16}"
            f"{'leases':>8}{'rejected':>9}{'caught':>7}{'died':>6}{'check %':>8}")
    lines = [head, "-" * len(head)]
    for name, r in sim["results"].items():
        lines.append(
            f"{name:<16}{r.cost_per_job:>11.2f}{100 * r.failure_rate:>8.2f}{100 * r.wrong_results / r.orders:>8.2f}"
            f"{100 * r.cheater_share:>12.3f}{r.paid_cheaters:>16.2f}{r.leases:>8}{r.rejected_at_attestation:>9}"
            f"{r.cheaters_caught:>7}{r.flaky_deaths:>6}{100 * r.mean_rate:>8.2f}"
        )
    lo, hi = sim["hyperscaler_range"]
    lines.append(f"{'hyperscaler':<16}{sim['hyperscaler']:>11.2f}{0:>8.2f}{0:>8.2f}{0:>12.3f}{0:>16.2f}"
                 f"   (AWS p5 $12.29/GPU-h; ${lo:.2f}-${hi:.2f} per job at $8-12/h)")
    return "\n".join(lines)


def plot(sim: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = sim["results"]
    names = list(results) + ["hyperscaler"]
    colours = ["#c0504d", "#f79646", "#9bbb59", "#4f81bd", "#7f7f7f"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    cost = [results[n].cost_per_job for n in results] + [sim["hyperscaler"]]
    ax = axes[0][0]
    ax.bar(names, cost, color=colours)
    lo, hi = sim["hyperscaler_range"]
    ax.axhspan(lo, hi, color="#7f7f7f", alpha=0.15, label="H100 on demand at $8-12/h")
    ax.set_ylabel("$ per completed job")
    ax.set_title("Cost per completed job (lower is better)")
    ax.legend(loc="upper left", fontsize=8)
    for i, v in enumerate(cost):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax = axes[0][1]
    fail = [100 * results[n].failure_rate for n in results]
    wrong = [100 * results[n].wrong_results / results[n].orders for n in results]
    ax.bar(list(results), fail, color=colours[:4], label="failed (any cause)")
    ax.bar(list(results), wrong, color="black", alpha=0.35, label="of which silently wrong")
    ax.set_ylabel("% of orders")
    ax.set_title("Jobs without a correct result")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    for (n, r), c in zip(results.items(), colours):
        paid = np.array(r.paid_curve)
        share = np.divide(100 * np.array(r.cheater_curve), paid, out=np.zeros_like(paid), where=paid > 0)
        ax.plot(np.arange(1, len(share) + 1), share, color=c, label=n)
    ax.axhline(1.0, color="black", ls="--", lw=0.8, label="1% goal")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(0, 100)
    ax.set_xlabel("orders so far")
    ax.set_ylabel("% of provider payments kept by cheaters")
    ax.set_title("Cheaters' share of payments (cumulative)")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    lost = [results[n].paid_cheaters for n in results]
    ax.bar(list(results), lost, color=colours[:4])
    ax.set_ylabel("$ kept by cheaters")
    ax.set_title("Money lost to cheaters")
    for a in axes.flat:
        a.tick_params(axis="x", labelrotation=20, labelsize=8)
    cfg = sim["config"]
    fig.suptitle(f"Market simulation: {cfg.providers} providers, {cfg.orders} orders, seed {cfg.seed}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", type=int, default=2000)
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "market_sim.png")
    parser.add_argument("--out", default=default_out, help="PNG path (default bench/out/market_sim.png)")
    args = parser.parse_args(argv)
    if args.providers < 1 or args.orders < 1:
        parser.error("--providers and --orders must be at least 1")
    started = time.perf_counter()
    sim = simulate(SimConfig(providers=args.providers, orders=args.orders, seed=args.seed))
    print(table(sim))
    plot(sim, args.out)
    out = summary(sim)
    out["seconds"] = round(time.perf_counter() - started, 2)
    out["plot"] = args.out
    print(f"plot: {args.out}", file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
