"""How often to spot-check so that cheating does not pay: the Proof-of-Sampling payoff model.

A provider paid ``R`` for a job that costs it ``C`` to compute honestly, with
stake ``S`` bonded, can skip the work and return made-up results. The tenant
re-runs each task with probability ``p`` on another provider (a checker); a
fraction ``r`` of checkers collude and wave anything through. A cheater who is
caught loses the payment (refunded to the tenant) and its stake (slashed to the
tenant). Compared with computing honestly, cheating on the whole job gains

    C - p (1 - r) (R + S)

so it stops paying once ``p >= C / ((1 - r)(R + S))`` (Proof of Sampling,
Zhang et al., arXiv:2405.00295, the asserter's payoff). Cheating on only
``k`` of ``n`` tasks saves ``C k / n`` but is caught with probability
``(1 - r)(1 - (1 - p)^k) >= (1 - r) p``, so the same threshold deters every
partial cheat as well.

All functions are pure; amounts can be in any one unit (dollars, base units).

>>> round(min_sampling_rate(cost_honest=4.0, payment=5.0, stake=195.0, colluding_fraction=0.2), 4)
0.025
>>> round(detection_probability(0.05, n_bad_tasks=10), 4)
0.4013
>>> plan = choose_sampling(cost_honest=4.0, payment=5.0, stake=195.0, colluding_fraction=0.2)
>>> round(plan.rate, 4), plan.deters
(0.0375, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

from ..errors import InvalidRequest

__all__ = [
    "SamplingPlan",
    "choose_sampling",
    "detection_probability",
    "expected_cheater_gain",
    "min_sampling_rate",
    "min_stake",
]


def _amount(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise InvalidRequest(f"{name} is {value}; it must be zero or more")
    return float(value)


def _fraction(name: str, value, *, upper_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a number between 0 and 1, got {value!r}")
    if value < 0 or value > 1 or (upper_open and value == 1):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise InvalidRequest(f"{name} is {value}; it must lie in {bound}")
    return float(value)


def _count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidRequest(f"{name} must be a whole number of tasks, got {value!r}")
    if value < minimum:
        raise InvalidRequest(f"{name} is {value}; it must be at least {minimum}")
    return int(value)


def _model(cost_honest, payment, stake, colluding_fraction) -> tuple[float, float, float, float]:
    c = _amount("cost_honest", cost_honest)
    r_pay = _amount("payment", payment)
    s = _amount("stake", stake)
    r = _fraction(
        "colluding_fraction", colluding_fraction, upper_open=True
    )  # r = 1: every checker colludes, no rate helps
    if r_pay + s <= 0:
        raise InvalidRequest("payment + stake is 0: a cheater has nothing to lose; require a stake or pay on delivery")
    return c, r_pay, s, r


def min_sampling_rate(cost_honest: float, payment: float, stake: float, colluding_fraction: float) -> float:
    """Smallest per-task spot-check probability at which cheating does not pay.

    ``C / ((1 - r)(R + S))`` clipped to ``[0, 1]``. A result of 1.0 may mean that
    even checking every task is not enough (see :func:`min_stake`).

    >>> min_sampling_rate(1.0, 2.0, 8.0, 0.0)
    0.1
    >>> min_sampling_rate(0.0, 2.0, 8.0, 0.5)  # free to compute honestly: nothing to save by cheating
    0.0
    >>> min_sampling_rate(50.0, 2.0, 8.0, 0.0)  # clipped: stake too small for sampling alone
    1.0
    >>> min_sampling_rate(1.0, 2.0, 8.0, 1.0)
    Traceback (most recent call last):
    ...
    jupyter_gpumarket.errors.InvalidRequest: colluding_fraction is 1.0; it must lie in [0, 1)
    """
    c, r_pay, s, r = _model(cost_honest, payment, stake, colluding_fraction)
    return min(1.0, max(0.0, c / ((1.0 - r) * (r_pay + s))))


def detection_probability(p: float, n_bad_tasks: int) -> float:
    """Chance that sampling each task with probability ``p`` hits at least one of ``n_bad_tasks``.

    ``1 - (1 - p)^k``; checkers are assumed honest here (multiply by ``1 - r`` otherwise).

    >>> round(detection_probability(0.1, 1), 12)
    0.1
    >>> round(detection_probability(0.1, 2), 4)
    0.19
    >>> detection_probability(0.3, 0)
    0.0
    """
    p = _fraction("p", p)
    k = _count("n_bad_tasks", n_bad_tasks)
    if k == 0 or p == 0:
        return 0.0
    if p == 1:
        return 1.0
    return -math.expm1(k * math.log1p(-p))  # accurate for small p, exact p at k = 1 up to rounding


def expected_cheater_gain(
    cost_honest: float,
    payment: float,
    stake: float,
    colluding_fraction: float,
    rate: float,
    n_bad_tasks: int = 1,
    n_tasks: int = 1,
) -> float:
    """Expected gain of cheating on ``n_bad_tasks`` of a job's ``n_tasks``, over computing it honestly.

    Saving ``C k / n`` minus the chance of being caught, ``(1 - r)(1 - (1 - p)^k)``, times
    what is lost when caught, ``R + S``. Positive: cheating pays; zero or less: it does not.

    >>> round(expected_cheater_gain(1.0, 2.0, 8.0, 0.0, rate=0.1), 12)  # at the threshold: nothing to gain
    0.0
    >>> round(expected_cheater_gain(1.0, 2.0, 8.0, 0.0, rate=0.05), 12)
    0.5
    >>> round(expected_cheater_gain(1.0, 2.0, 8.0, 0.0, rate=0.1, n_bad_tasks=1, n_tasks=10), 4)  # partial cheat
    -0.9
    """
    c, r_pay, s, r = _model(cost_honest, payment, stake, colluding_fraction)
    n = _count("n_tasks", n_tasks, minimum=1)
    k = _count("n_bad_tasks", n_bad_tasks)
    if k > n:
        raise InvalidRequest(f"n_bad_tasks is {k} but the job has only n_tasks={n}")
    caught = (1.0 - r) * detection_probability(rate, k)
    return c * k / n - caught * (r_pay + s)


def min_stake(cost_honest: float, payment: float, rate: float, colluding_fraction: float) -> float:
    """Smallest stake at which checking each task with probability ``rate`` deters cheating.

    ``C / (rate (1 - r)) - R``, never below 0.

    >>> min_stake(1.0, 2.0, rate=0.1, colluding_fraction=0.0)
    8.0
    >>> min_stake(1.0, 20.0, rate=0.1, colluding_fraction=0.0)  # the payment at risk is enough
    0.0
    """
    c = _amount("cost_honest", cost_honest)
    r_pay = _amount("payment", payment)
    r = _fraction("colluding_fraction", colluding_fraction, upper_open=True)
    rate = _fraction("rate", rate)
    if rate == 0:
        if c == 0:
            return 0.0
        raise InvalidRequest("rate is 0: without any spot checks no stake deters a cheater; sample some tasks")
    return max(0.0, c / (rate * (1.0 - r)) - r_pay)


@dataclass(frozen=True)
class SamplingPlan:
    """What :func:`choose_sampling` picked, and why."""

    rate: float  # per-task probability of a spot check
    min_rate: float  # the Proof-of-Sampling threshold (clipped to 1)
    margin: float
    deters: bool  # whether cheating (whole or partial) has expected gain <= 0 at ``rate``
    cheater_gain: float  # expected gain of cheating on the whole job at ``rate``
    stake_needed: float  # smallest stake at which ``rate`` deters (compare with the stake given)


def choose_sampling(
    cost_honest: float,
    payment: float,
    stake: float,
    colluding_fraction: float,
    margin: float = 1.5,
    floor: float = 0.0,
) -> SamplingPlan:
    """Spot-check rate for one lease: ``margin`` times the PoS threshold, at least ``floor``, at most 1.

    The margin covers error in the estimate of the provider's cost ``C`` (a tenant
    cannot know it; taking ``C = payment`` is the cautious choice). When even
    ``rate = 1`` cannot deter (stake too small), the plan says so (``deters`` is
    False) and ``stake_needed`` gives the stake that would.

    >>> plan = choose_sampling(cost_honest=1.0, payment=2.0, stake=8.0, colluding_fraction=0.0)
    >>> round(plan.rate, 4), plan.min_rate, plan.deters, plan.cheater_gain <= 0
    (0.15, 0.1, True, True)
    >>> choose_sampling(10.0, 2.0, 3.0, 0.0).deters  # stake too small: checking everything still pays off to cheat
    False
    >>> choose_sampling(1.0, 2.0, 8.0, 0.0, margin=0.5)
    Traceback (most recent call last):
    ...
    jupyter_gpumarket.errors.InvalidRequest: margin is 0.5; use 1 or more (below 1 the rate is under the threshold)
    """
    c, r_pay, s, r = _model(cost_honest, payment, stake, colluding_fraction)
    if isinstance(margin, bool) or not isinstance(margin, Real) or not math.isfinite(margin) or margin < 1:
        raise InvalidRequest(f"margin is {margin}; use 1 or more (below 1 the rate is under the threshold)")
    floor = _fraction("floor", floor)
    exact = c / ((1.0 - r) * (r_pay + s))
    rate = min(1.0, max(floor, margin * exact))
    gain = expected_cheater_gain(c, r_pay, s, r, rate)
    needed = min_stake(c, r_pay, rate, r) if rate > 0 else 0.0
    return SamplingPlan(
        rate=rate,
        min_rate=min(1.0, exact),
        margin=float(margin),
        deters=gain <= 1e-12 * max(1.0, c),
        cheater_gain=gain,
        stake_needed=needed,
    )
