"""The Proof-of-Sampling payoff model (jupyter_gpumarket.verify.sampling) and the market simulation.

The statistical tests use fixed seeds and bounds at ~4.4 standard errors, and
check first that the bound is tight enough to tell the right formula from
the plausible wrong ones (so they can fail).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from jupyter_gpumarket.errors import InvalidRequest
from jupyter_gpumarket.verify.sampling import (
    SamplingPlan,
    choose_sampling,
    detection_probability,
    expected_cheater_gain,
    min_sampling_rate,
    min_stake,
)

Z = 4.4  # two-sided tail ~1e-5 per comparison

# (cost_honest, payment, stake, colluding_fraction): threshold below 1 in every case
CASES = [
    (1.0, 2.0, 8.0, 0.0),
    (4.0, 5.0, 195.0, 0.2),
    (10.0, 10.0, 500.0, 0.1),
    (0.3, 0.5, 20.0, 0.45),
    (7.5, 12.0, 40.0, 0.0),
    (1e-3, 1e-3, 1.0, 0.9),
]


# --- known values -----------------------------------------------------------------------------

def test_min_sampling_rate_known_values():
    assert min_sampling_rate(1.0, 2.0, 8.0, 0.0) == pytest.approx(0.1)
    assert min_sampling_rate(1.0, 2.0, 8.0, 0.5) == pytest.approx(0.2)  # half the checkers collude: twice the rate
    assert min_sampling_rate(4.0, 5.0, 195.0, 0.2) == pytest.approx(4 / (0.8 * 200))
    assert min_sampling_rate(0.0, 2.0, 8.0, 0.3) == 0.0
    assert min_sampling_rate(50.0, 2.0, 8.0, 0.0) == 1.0  # 5.0 before clipping
    assert min_sampling_rate(3, 0, 30, 0) == pytest.approx(0.1)  # ints accepted, stake alone at risk


def test_detection_probability_known_values():
    assert detection_probability(0.1, 1) == pytest.approx(0.1)
    assert detection_probability(0.1, 2) == pytest.approx(0.19)
    assert detection_probability(0.05, 10) == pytest.approx(1 - 0.95**10)
    assert detection_probability(0.0, 100) == 0.0
    assert detection_probability(1.0, 1) == 1.0
    assert detection_probability(0.7, 0) == 0.0
    assert detection_probability(1e-9, 1) == pytest.approx(1e-9, rel=1e-6)  # no cancellation at tiny rates


def test_expected_cheater_gain_known_values():
    assert expected_cheater_gain(1.0, 2.0, 8.0, 0.0, rate=0.05) == pytest.approx(0.5)
    assert expected_cheater_gain(1.0, 2.0, 8.0, 0.0, rate=0.0) == pytest.approx(1.0)  # unchecked: saves C
    assert expected_cheater_gain(1.0, 2.0, 8.0, 0.0, rate=1.0) == pytest.approx(-9.0)  # always caught: C - (R + S)
    # 2 of 10 tasks faked at p = 0.1, half the checkers colluding: 0.2 - 0.5 * 0.19 * 10
    assert expected_cheater_gain(1.0, 2.0, 8.0, 0.5, rate=0.1, n_bad_tasks=2, n_tasks=10) == pytest.approx(-0.75)
    assert expected_cheater_gain(1.0, 2.0, 8.0, 0.0, rate=0.3, n_bad_tasks=0, n_tasks=10) == 0.0


def test_min_stake_known_values_and_round_trip():
    assert min_stake(1.0, 2.0, rate=0.1, colluding_fraction=0.0) == pytest.approx(8.0)
    assert min_stake(1.0, 20.0, rate=0.1, colluding_fraction=0.0) == 0.0
    assert min_stake(0.0, 1.0, rate=0.0, colluding_fraction=0.0) == 0.0
    for c, r_pay, _, r in CASES:
        for rate in (0.01, 0.05, 0.3):
            s = min_stake(c, r_pay, rate, r)
            if s > 0:
                assert min_sampling_rate(c, r_pay, s, r) == pytest.approx(rate)


# --- monotonicity -----------------------------------------------------------------------------

def test_min_rate_monotone_in_each_input():
    base = dict(cost_honest=2.0, payment=5.0, stake=100.0, colluding_fraction=0.2)
    sweeps = {
        "cost_honest": ([0.5, 1, 2, 4, 8], +1),
        "payment": ([1, 2, 5, 10, 50], -1),
        "stake": ([0, 10, 100, 1000, 10_000], -1),
        "colluding_fraction": ([0.0, 0.2, 0.5, 0.8, 0.95], +1),
    }
    for name, (values, sign) in sweeps.items():
        rates = [min_sampling_rate(**{**base, name: v}) for v in values]
        diffs = np.diff(rates) * sign
        assert (diffs > 0).all(), (name, rates)


def test_detection_monotone_in_rate_and_bad_tasks():
    rates = np.linspace(0, 1, 21)
    by_rate = [detection_probability(float(p), 7) for p in rates]
    assert all(b > a for a, b in zip(by_rate, by_rate[1:])), by_rate
    by_k = [detection_probability(0.03, k) for k in range(0, 60)]
    assert all(b > a for a, b in zip(by_k, by_k[1:]))
    assert all(0.0 <= d <= 1.0 for d in by_rate + by_k)


def test_gain_falls_as_rate_rises():
    gains = [expected_cheater_gain(2.0, 5.0, 100.0, 0.2, rate=float(p)) for p in np.linspace(0, 1, 11)]
    assert all(b < a for a, b in zip(gains, gains[1:]))


# --- the PoS threshold ------------------------------------------------------------------------

@pytest.mark.parametrize("c, r_pay, s, r", CASES)
def test_threshold_makes_cheating_not_pay(c, r_pay, s, r):
    p = min_sampling_rate(c, r_pay, s, r)
    assert 0 < p < 1
    tol = 1e-12 * max(1.0, c)
    assert expected_cheater_gain(c, r_pay, s, r, rate=p) <= tol  # whole-job cheat: break-even at best
    assert expected_cheater_gain(c, r_pay, s, r, rate=0.9 * p) > 0  # a little under: cheating pays
    for n in (1, 5, 40):  # partial cheats are deterred by the same rate
        for k in range(1, n + 1):
            assert expected_cheater_gain(c, r_pay, s, r, rate=p, n_bad_tasks=k, n_tasks=n) <= tol


def test_choose_sampling_applies_margin_floor_and_clip():
    plan = choose_sampling(1.0, 2.0, 8.0, 0.0)
    assert isinstance(plan, SamplingPlan)
    assert plan.min_rate == pytest.approx(0.1) and plan.rate == pytest.approx(0.15) and plan.margin == 1.5
    assert plan.deters and plan.cheater_gain < 0 and plan.stake_needed < 8.0
    assert choose_sampling(1.0, 2.0, 8.0, 0.0, margin=1.0).rate == pytest.approx(0.1)
    assert choose_sampling(1.0, 2.0, 8.0, 0.0, floor=0.4).rate == pytest.approx(0.4)
    assert choose_sampling(1.0, 2.0, 8.0, 0.0, margin=20).rate == 1.0
    assert choose_sampling(0.0, 2.0, 8.0, 0.0).rate == 0.0  # nothing to save by cheating


def test_choose_sampling_reports_a_stake_too_small():
    plan = choose_sampling(cost_honest=10.0, payment=2.0, stake=3.0, colluding_fraction=0.0)
    assert plan.rate == 1.0 and plan.min_rate == 1.0
    assert not plan.deters and plan.cheater_gain > 0
    assert plan.stake_needed == pytest.approx(8.0)  # C / (1 * 1) - R
    fixed = choose_sampling(10.0, 2.0, plan.stake_needed, 0.0, margin=1.0)
    assert fixed.deters


# --- nonsense input ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: min_sampling_rate(-1.0, 2.0, 8.0, 0.1), "cost_honest"),
        (lambda: min_sampling_rate(1.0, -2.0, 8.0, 0.1), "payment"),
        (lambda: min_sampling_rate(1.0, 2.0, -8.0, 0.1), "stake"),
        (lambda: min_sampling_rate(1.0, 2.0, 8.0, 1.0), "colluding_fraction"),
        (lambda: min_sampling_rate(1.0, 2.0, 8.0, 1.5), "colluding_fraction"),
        (lambda: min_sampling_rate(1.0, 2.0, 8.0, -0.1), "colluding_fraction"),
        (lambda: min_sampling_rate(1.0, 0.0, 0.0, 0.1), "nothing to lose"),
        (lambda: min_sampling_rate(float("nan"), 2.0, 8.0, 0.1), "cost_honest"),
        (lambda: min_sampling_rate(1.0, float("inf"), 8.0, 0.1), "payment"),
        (lambda: min_sampling_rate("1", 2.0, 8.0, 0.1), "cost_honest"),
        (lambda: min_sampling_rate(True, 2.0, 8.0, 0.1), "cost_honest"),
        (lambda: detection_probability(1.2, 3), "p"),
        (lambda: detection_probability(-0.1, 3), "p"),
        (lambda: detection_probability(0.1, -1), "n_bad_tasks"),
        (lambda: detection_probability(0.1, 2.5), "n_bad_tasks"),
        (lambda: expected_cheater_gain(1.0, 2.0, 8.0, 0.1, rate=0.1, n_bad_tasks=5, n_tasks=3), "only n_tasks=3"),
        (lambda: expected_cheater_gain(1.0, 2.0, 8.0, 0.1, rate=0.1, n_tasks=0), "n_tasks"),
        (lambda: expected_cheater_gain(1.0, 2.0, 8.0, 0.1, rate=2.0), "p"),
        (lambda: choose_sampling(1.0, 2.0, 8.0, 0.1, margin=0.9), "margin"),
        (lambda: choose_sampling(1.0, 2.0, 8.0, 0.1, floor=1.5), "floor"),
        (lambda: min_stake(1.0, 2.0, rate=0.0, colluding_fraction=0.1), "rate is 0"),
        (lambda: min_stake(1.0, "2", rate=0.1, colluding_fraction=0.1), "payment"),
    ],
)
def test_nonsense_input_is_refused_with_a_clear_message(call, words):
    with pytest.raises(InvalidRequest, match=words):
        call()


def test_invalid_request_is_a_value_error():
    with pytest.raises(ValueError):
        min_sampling_rate(1.0, 2.0, 8.0, 1.0)


# --- statistics: catch rate of a simulated cheater --------------------------------------------

def _simulated_catch_rate(rng, n_tasks, bad_fraction, p, trials):
    """A cheater corrupts ``bad_fraction`` of ``n_tasks``; each task is re-run with probability ``p``."""
    bad = rng.permutation(n_tasks)[: round(bad_fraction * n_tasks)]  # which tasks it faked
    caught = 0
    for start in range(0, trials, 5000):
        chunk = min(5000, trials - start)
        sampled = rng.random((chunk, n_tasks)) < p
        caught += int(sampled[:, bad].any(axis=1).sum())
    return caught / trials, len(bad)


@pytest.mark.parametrize(
    "n_tasks, bad_fraction, p",
    [(200, 0.05, 0.05), (100, 0.5, 0.01), (400, 0.0075, 0.2), (60, 0.2, 0.03)],
)
def test_spot_checks_catch_at_the_predicted_rate(n_tasks, bad_fraction, p):
    rng = np.random.default_rng(20240501 + n_tasks)
    trials = 20_000
    empirical, k = _simulated_catch_rate(rng, n_tasks, bad_fraction, p, trials)
    predicted = detection_probability(p, k)
    bound = Z * math.sqrt(predicted * (1 - predicted) / trials)
    # The bound is tight enough to reject the naive models "p per job" and "p times k".
    assert abs(p - predicted) > 2 * bound
    assert abs(min(1.0, p * k) - predicted) > 2 * bound
    assert abs(empirical - predicted) <= bound, (empirical, predicted, bound)


@pytest.mark.parametrize(
    "n_tasks, k, rate_factor, sign",
    [
        (1, 1, 1.0, -1),  # whole job faked, at the plan's rate: loses
        (1, 1, 1 / 3, +1),  # the same at a third of the rate: pays (the threshold matters)
        (50, 10, 1.0, -1),
        (50, 50, 1.0, -1),
        (50, 1, 1 / 3, -1),  # faking 1 task of 50 saves little: deterred even below the rate
    ],
)
def test_simulated_cheater_payoff_matches_the_model(n_tasks, k, rate_factor, sign):
    """A Monte Carlo of the cheater's payoff agrees with expected_cheater_gain, sign included."""
    rng = np.random.default_rng(1000 * n_tasks + k)
    c, r_pay, s, r = 6.0, 8.0, 150.0, 0.1
    trials = 200_000
    rate = choose_sampling(c, r_pay, s, r).rate * rate_factor
    sampled_bad = rng.binomial(k, rate, trials)  # how many faked tasks the sample hit
    honest_checker = rng.random(trials) >= r
    caught = (sampled_bad > 0) & honest_checker
    gain = c * k / n_tasks - caught * (r_pay + s)  # relative to computing honestly
    mean, se = gain.mean(), gain.std(ddof=1) / math.sqrt(trials)
    predicted = expected_cheater_gain(c, r_pay, s, r, rate, n_bad_tasks=k, n_tasks=n_tasks)
    assert sign * predicted > Z * se  # far enough from zero that the sign is testable
    assert abs(mean - predicted) <= Z * se
    assert sign * mean > 0


# --- the market simulation, small -------------------------------------------------------------

def _load_market_sim():
    path = Path(__file__).resolve().parents[2] / "bench" / "market_sim.py"
    spec = importlib.util.spec_from_file_location("bench_market_sim", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def market_sim():
    return _load_market_sim()


def test_market_sim_small_run_ecc_attested_beats_price(market_sim, tmp_path, capsys, monkeypatch):
    calls = {"price": 0, "cost": 0}
    real = market_sim.select_bids

    def counting(*args, **kwargs):
        calls[kwargs.get("rule", "cost")] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(market_sim, "select_bids", counting)  # the real selection code does the choosing
    out = tmp_path / "sim.png"
    summary = market_sim.main(["--providers", "50", "--orders", "100", "--seed", "3", "--out", str(out)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == summary
    assert "ecc_attested" in "\n".join(printed[:-1])
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert calls["price"] >= 200 and calls["cost"] >= 200  # two policies per rule, 100 orders each
    assert summary["cost_per_job_ecc_attested"] < summary["cost_per_job_price"]
    assert summary["ecc_vs_price_saving"] > 0
    assert summary["hyperscaler_cost_per_job"] > summary["cost_per_job_ecc_attested"]
    assert 0 <= summary["cheater_payment_share_attested"] <= summary["cheater_payment_share_price"]


def test_market_sim_is_deterministic(market_sim):
    cfg = market_sim.SimConfig(providers=40, orders=60, seed=11)
    a, b = market_sim.summary(market_sim.simulate(cfg)), market_sim.summary(market_sim.simulate(cfg))
    assert a == b
    c = market_sim.summary(market_sim.simulate(market_sim.SimConfig(providers=40, orders=60, seed=12)))
    assert c != a


def test_market_sim_slow_providers_are_rejected_and_refunded(market_sim):
    sim = market_sim.simulate(market_sim.SimConfig(providers=30, orders=40, seed=1, behaviour_mix=(0, 1, 0, 0)))
    attested, plain = sim["results"]["ecc_attested"], sim["results"]["price"]
    assert attested.completed == 0 and attested.spend == 0.0  # every lease refused at start, deposits back
    assert attested.rejected_at_attestation == attested.leases > 0
    assert plain.completed == plain.orders and plain.spend > 0  # without attestation they are paid to crawl


def test_market_sim_honest_market_has_no_false_positives(market_sim):
    sim = market_sim.simulate(market_sim.SimConfig(providers=40, orders=80, seed=2, behaviour_mix=(1, 0, 0, 0)))
    for r in sim["results"].values():
        assert r.rejected_at_attestation == 0 and r.cheaters_caught == 0 and r.failed == 0
        assert r.paid_cheaters == 0.0 and r.completed == 80


def test_market_sim_catches_and_slashes_cheaters(market_sim):
    sim = market_sim.simulate(market_sim.SimConfig(providers=60, orders=150, seed=4, behaviour_mix=(0.5, 0, 0.5, 0)))
    attested, plain = sim["results"]["ecc_attested"], sim["results"]["price"]
    assert attested.cheaters_caught > 0 and attested.slashed_to_tenants > 0
    assert plain.cheaters_caught == 0 and plain.wrong_results > 0
    assert attested.wrong_results < plain.wrong_results
    assert attested.paid_cheaters < plain.paid_cheaters
