"""Hardware attestation of a lease's workers, run by the tenant at lease start.

Within the contract's grace period the tenant checks, through its
``distributed.Client``, that every leased worker has the GPU its provider
claimed (DESIGN.md, flow step 6 and "Verification"). For each worker:

1. **Inventory.** :func:`inventory` runs on the worker: GPU model, memory and
   driver through NVML (optional ``pynvml``) when an NVIDIA GPU is there,
   otherwise the profile the worker declares through the runtime's
   ``gpu_profile`` plugin (``simulated=True`` on CPU devnets). The model must
   contain the claimed model name, the memory must be at least the claimed
   memory (less 7 %: NVML reports 79.6 GiB for an "80 GB" card), and a profile
   that says "real GPU" while NVML sees none fails. This call is also timed as
   the worker's round-trip latency.
2. **Timed, seeded benchmark.** :func:`run_challenge` computes, from a fresh
   random 64-bit seed per worker and per round (:mod:`secrets`), chains of
   matrix products ``X <- tanh(X @ B)`` (``reps`` products in ``segments``
   independent chains of at most 16) over matrices generated from the seed by a counter-based
   integer hash, so the worker (torch on CUDA in bf16, the precision dense
   TFLOPS claims are quoted in; torch or numpy in fp32 on CPU) and the tenant
   (numpy) generate bit-identical inputs. The worker returns the sum of every
   row of every chain's final matrix (a commitment to the whole result) and a
   SHA-256 of those sums rounded (recorded with the lease). The matrix size
   grows with the claimed memory, up to a cap that keeps the tenant's check
   cheap (768 on CPU, 8192 on GPU); the number of products is chosen so one
   round takes about ``round_seconds``.
3. **Result check.** After the worker has committed to all row sums, the tenant
   draws ``sample_rows`` random (chain, row) pairs and recomputes them locally
   in float64: row ``i`` of a ``tanh(X @ B)`` chain depends only on row ``i``
   of the start matrix and on ``B``, so one row costs ``steps * n**2`` instead
   of the worker's ``n * steps * n**2``. A worker that skipped a fraction ``f``
   of the work and invented the rest is caught with probability
   ``1 - (1 - f) ** sample_rows``; one that fabricates everything always is.
   Sums must agree within ``1e-3 * sqrt(n)`` (fp32) or ``2e-2 * sqrt(n)``
   (bf16/fp16; measured error ~5e-3) while a row sum is ~0.2 sqrt(n) and an
   invented one is off by about as much; no exact
   float hash is compared, so honest hardware never fails on rounding.
4. **Throughput.** On a real GPU time is measured by the tenant, not reported
   by the worker: the wall time of the ``client.submit`` round trip minus the
   inventory round trip, so a worker cannot claim to be faster than it is (on
   CPU devnets see the calibration below). Each worker
   runs ``rounds`` rounds (more, up to ``max_rounds``, while the verdict is
   within 30 % of the threshold) and the fastest round counts (robust to a
   transient stall); ``flops = 2 * n**3 * reps``. The worker fails when
   ``measured < tolerance * expected``, with the figures in the reason.

Calibration on CPU devnets
--------------------------
A simulated worker claims, say, an H100's 989 TFLOPS, but is a CPU thread
that delivers ~0.05 TFLOPS: comparing the two would fail every honest devnet
provider. For simulated workers the tenant therefore measures *this* CPU with
the same computation in its own process, interleaved with the worker's rounds
(local, remote, remote, local, ...), and both sides time it the same way:
**the computing thread's CPU time** (``time.thread_time``) with BLAS held to
that one thread (:func:`.challenge.single_thread`). Wall time does not work here: on a
shared 2-core machine a worker's thread got 20-30 % of a core, so honest
simulated providers measured 0.25-0.32 of the tenant's speed; a thread's CPU
time leaves out the time the OS gave to other processes. Only the products are
timed (inputs are generated before the clock starts, products run in place), so
allocator and page-fault differences between processes do not count. Measured
at load average 7 on 2 cores: honest workers 0.92-1.04 (median paired ratio),
half-throughput ones 0.46-0.51. With ``cpu_reference_tflops`` (the claimed
figure that stands for one CPU thread; default: the worker's own claim) the
worker's throughput in claim units is::

    measured_tflops = median over rounds of (local_seconds / remote_seconds) * cpu_reference_tflops

and it passes when ``measured_tflops >= tolerance * claimed``. With the
default reference this is simply ``remote / cpu >= tolerance``: an honest
simulated worker has ratio ~1, a worker that does each challenge's work twice
(a provider with half the throughput it claims, or :class:`SimulatedBehaviour`
with ``throughput=0.5``) has ratio ~0.5 < 0.6 and fails. The worker reports its
own CPU seconds, which the tenant accepts only if they fit in the round trip it
timed: a simulated profile is a devnet stand-in, not hardware to distrust. For
real GPUs (``simulated=False``) the tenant's wall-clock timing and the claim
apply, nothing the worker reports. ``measured_tflops`` is in the claim's units,
so it can feed the auction's ``measured_tflops``.

On a devnet every worker shares the tenant's CPU, so simulated workers are
attested one after the other (``concurrent=None`` decides: concurrent only when
no worker is simulated, i.e. each worker has its own GPU).

:class:`SimulatedBehaviour` is a devnet-only worker plugin that models
dishonest or weak providers for tests and the market simulation (deliver a
fraction of the throughput, invent a fraction of the results). It can only
make a worker slower or wrong, never make one pass, so attestation does not
need to trust it.

>>> Challenge.fresh(n=64, reps=4).flops
2097152
>>> r = run_challenge(7, 64, 4)
>>> verify_rows(Challenge(seed=7, n=64, reps=4), r, [(0, 3), (0, 60)]) is None
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


from ..errors import InvalidRequest, WrongState

__all__ = [
    "AttestationFailed",
    "AttestationReport",
    "Challenge",
    "SimulatedBehaviour",
    "WorkerAttestation",
    "attest_lease",
    "inventory",
    "run_challenge",
    "simulate_behaviour",
    "verify_rows",
]

#: Worker plugin name of :class:`SimulatedBehaviour`.
from .challenge import (  # noqa: F401  (re-exported: the worker side of attestation)
    BEHAVIOUR_PLUGIN,
    CPU_MAX_N,
    GPU_MAX_N,
    _MAX_STEPS,
    Challenge,
    SimulatedBehaviour,
    inventory,
    timed_compute,
    run_challenge,
    simulate_behaviour,
    verify_rows,
)

_MARGIN = 1.3  # verdicts within this factor of the tolerance get more rounds
_MEMORY_SLACK = 0.93


class AttestationFailed(WrongState):
    """A lease's hardware failed attestation (see :attr:`AttestationReport.reason`)."""


# -- the challenge ------------------------------------------------------------




@dataclasses.dataclass
class WorkerAttestation:
    """The verdict on one worker. ``measured_tflops`` is in the claim's units (calibrated on CPU devnets)."""

    address: str
    passed: bool
    reason: str
    model: str | None = None
    memory_gib: float | None = None
    driver: str | None = None
    source: str | None = None
    simulated: bool | None = None
    claimed_tflops: float | None = None
    measured_tflops: float | None = None
    ratio: float | None = None  # measured / claimed
    raw_tflops: float | None = None  # what the worker's hardware did, tenant-timed
    cpu_tflops: float | None = None  # the tenant's own CPU, for simulated workers
    n: int | None = None
    reps: int | None = None
    rounds: int = 0
    digest: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class AttestationReport:
    """All workers' verdicts; ``passed`` only when every worker passed."""

    workers: list[WorkerAttestation]
    tolerance: float
    seconds: float

    @property
    def passed(self) -> bool:
        return bool(self.workers) and all(w.passed for w in self.workers)

    @property
    def failed(self) -> list[WorkerAttestation]:
        return [w for w in self.workers if not w.passed]

    @property
    def measured_tflops(self) -> float | None:
        """Median over workers that were measured, in claim units (for the auction's ``measured_tflops``)."""
        vals = [w.measured_tflops for w in self.workers if w.measured_tflops is not None]
        return statistics.median(vals) if vals else None

    @property
    def reason(self) -> str:
        if not self.workers:
            return "no workers to attest"
        if self.passed:
            return f"all {len(self.workers)} worker(s) passed"
        return "; ".join(f"{w.address}: {w.reason}" for w in self.failed)

    def raise_if_failed(self) -> AttestationReport:
        if not self.passed:
            raise AttestationFailed(f"attestation failed: {self.reason}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "measured_tflops": self.measured_tflops,
            "seconds": self.seconds,
            "tolerance": self.tolerance,
            "workers": [w.to_dict() for w in self.workers],
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{w.address}</td><td>{w.model}</td><td>{w.memory_gib}</td>"
            f"<td>{'' if w.measured_tflops is None else f'{w.measured_tflops:.4g}'}</td>"
            f"<td>{'' if w.ratio is None else f'{w.ratio:.2f}'}</td>"
            f"<td>{'pass' if w.passed else 'FAIL'}</td><td>{w.reason}</td></tr>"
            for w in self.workers
        )
        return (
            "<table><tr><th>worker</th><th>model</th><th>GiB</th><th>TFLOPS</th><th>ratio</th>"
            f"<th>verdict</th><th>reason</th></tr>{rows}</table>"
        )


def _normalise_model(s: str) -> str:
    s = s.lower().replace("nvidia", " ").replace("-", " ")
    return " ".join(s.split())


_calibration_lock = threading.Lock()


_calibration_pool: ThreadPoolExecutor | None = None


def _local_round(ch: Challenge) -> float:
    """CPU seconds this process's thread takes for ``ch`` on one BLAS thread (the CPU calibration).

    Measured exactly as a simulated worker measures its challenge
    (:func:`timed_compute`), on a dedicated thread like a Dask worker's task.
    """
    global _calibration_pool
    with _calibration_lock:
        if _calibration_pool is None:
            _calibration_pool = ThreadPoolExecutor(1, thread_name_prefix="attest-calibration")
        return _calibration_pool.submit(lambda: timed_compute(ch, simulated=True)[3]).result()


class _Timeout(Exception):
    pass


def _call(client, fn: Callable, address: str, timeout: float, *args) -> tuple[Any, float]:
    fut = client.submit(fn, *args, workers=[address], pure=False, allow_other_workers=False)
    t0 = time.perf_counter()
    try:
        result = fut.result(timeout=timeout)
    except TimeoutError as e:
        with contextlib.suppress(Exception):
            fut.cancel()
        raise _Timeout from e
    return result, time.perf_counter() - t0


def _attest_one(
    client,
    address: str,
    claim_tflops: float | None,
    claim_model: str | None,
    claim_memory_gib: float | None,
    *,
    tolerance: float,
    sample_check: bool,
    sample_rows: int,
    rounds: int,
    max_rounds: int,
    round_seconds: float,
    timeout: float,
    cpu_reference_tflops: float | None,
    cpu_max_n: int,
    gpu_max_n: int,
    rng: random.Random,
    sizing: dict,
) -> WorkerAttestation:
    t_start = time.perf_counter()
    w = WorkerAttestation(address=address, passed=False, reason="")

    def done(passed: bool, reason: str) -> WorkerAttestation:
        w.passed, w.reason = passed, reason
        w.seconds = time.perf_counter() - t_start
        return w

    # 1. inventory (and the round-trip latency that the benchmark timing excludes)
    try:
        inv, rtt = _call(client, inventory, address, timeout)
        inv, rtt2 = _call(client, inventory, address, timeout)
        rtt = min(rtt, rtt2)
    except _Timeout:
        return done(False, f"did not answer the inventory request within {timeout:g} s")
    except Exception as e:  # worker gone, plugin error...
        return done(False, f"inventory failed: {e!r}")
    declared = inv.get("declared") or {}
    w.model, w.memory_gib, w.driver = inv.get("model"), inv.get("memory_gib"), inv.get("driver")
    w.source, w.simulated = inv.get("source"), bool(inv.get("simulated"))
    if claim_tflops is None:
        claim_tflops = declared.get("tflops")
    if claim_tflops is None or claim_tflops <= 0:
        return done(False, "no throughput claim to check (pass claim_tflops)")
    w.claimed_tflops = float(claim_tflops)
    if w.source == "none":
        return done(False, "no GPU inventory: NVML sees no GPU and the worker declares no GPU profile")
    if w.source == "declared" and declared.get("simulated") is False:
        return done(False, f"profile declares a real {w.model} but NVML sees no GPU on the worker")
    if claim_model and _normalise_model(claim_model) not in _normalise_model(w.model or ""):
        return done(False, f"model mismatch: claimed {claim_model!r}, worker has {w.model!r}")
    if claim_memory_gib and (w.memory_gib or 0.0) < _MEMORY_SLACK * claim_memory_gib:
        return done(False, f"memory mismatch: claimed {claim_memory_gib:g} GiB, worker has {w.memory_gib:.1f} GiB")

    # 2. size the challenge
    simulated = w.simulated
    n = Challenge.size_for(w.memory_gib or 0.0, simulated, cpu_max_n=cpu_max_n, gpu_max_n=gpu_max_n)
    if simulated:
        key = n
        if key not in sizing:
            _local_round(Challenge.fresh(n=n, reps=1))  # warm-up (page faults, BLAS buffers)
            sizing[key] = min(_local_round(Challenge.fresh(n=n, reps=1)) for _ in range(2))
        per_product = sizing[key]
        total = max(1, min(64, round(round_seconds / max(per_product, 1e-6))))
    else:
        per_product = 2 * n**3 / (w.claimed_tflops * 1e12)
        total = max(1, min(1024, round(round_seconds / max(per_product, 1e-9))))
    segments = -(-total // _MAX_STEPS)
    steps = -(-total // segments)
    reps = steps * segments
    w.n, w.reps = n, reps

    # 3. rounds: (local calibration, remote challenge) interleaved; best of each
    remote_times: list[float] = []
    local_times: list[float] = []
    reference = cpu_reference_tflops or w.claimed_tflops
    while True:
        # Local and remote rounds alternate as L R R L L R ...: neither side always runs first
        # (caches and BLAS threads left warm or busy by one measurement affect the next).
        local_first = w.rounds % 2 == 0
        if simulated and local_first:
            local_times.append(_local_round(Challenge.fresh(n, reps, segments)))
        ch = Challenge.fresh(n, reps, segments)
        try:
            result, wall = _call(client, run_challenge, address, timeout, ch.seed, ch.n, ch.reps, ch.segments)
        except _Timeout:
            return done(False, f"did not answer the benchmark within {timeout:g} s")
        except Exception as e:
            return done(False, f"benchmark failed on the worker: {e!r}")
        w.rounds += 1
        w.digest = result.get("digest")
        picks = [(rng.randrange(ch.segments), rng.randrange(ch.n)) for _ in range(sample_rows if sample_check else 0)]
        problem = verify_rows(ch, result, picks)
        if problem:
            return done(False, problem)
        if simulated:
            # Devnet calibration: the worker's own CPU clock, against ours (see the module notes).
            cpu = result.get("seconds")
            if result.get("clock") != "thread_cpu" or not isinstance(cpu, float) or not 0 < cpu <= wall * 1.05 + 0.01:
                return done(False, f"benchmark timing is inconsistent: {cpu!r} CPU seconds reported "
                                   f"for a round trip of {wall:.3g} s")
            remote_times.append(cpu)
        else:
            remote_times.append(max(wall - rtt, 1e-9))
        if simulated and not local_first:
            local_times.append(_local_round(Challenge.fresh(n, reps, segments)))
        if simulated:
            # Median of the paired ratios: each pair ran back to back, so a change of load on
            # the machine between rounds cancels, and a disturbed round or two do not count.
            w.raw_tflops = 2 * n**3 * reps / statistics.median(remote_times) / 1e12
            w.cpu_tflops = 2 * n**3 * reps / statistics.median(local_times) / 1e12
            paired = statistics.median(loc / rem for loc, rem in zip(local_times, remote_times))
            w.measured_tflops = paired * reference
        else:
            # Fastest round: a real GPU's best is its speed; slower rounds met a transient stall.
            w.raw_tflops = 2 * n**3 * reps / min(remote_times) / 1e12
            w.measured_tflops = w.raw_tflops
        w.ratio = w.measured_tflops / w.claimed_tflops
        if w.rounds >= max_rounds:
            break
        # After the base rounds, keep measuring only while the verdict is close to the
        # threshold: best-of-more converges on the undisturbed speed on both sides.
        if w.rounds >= rounds and not (tolerance / _MARGIN <= w.ratio <= tolerance * _MARGIN):
            break

    unit = "TFLOPS" + (f" (calibrated: this CPU = {reference:.4g} claimed TFLOPS)" if simulated else "")
    if w.ratio < tolerance:
        return done(
            False,
            f"throughput too low: measured {w.measured_tflops:.4g} of {w.claimed_tflops:.4g} claimed {unit} "
            f"(ratio {w.ratio:.2f} < tolerance {tolerance:g})",
        )
    return done(True, f"ok: {w.measured_tflops:.4g} of {w.claimed_tflops:.4g} claimed {unit}, ratio {w.ratio:.2f}")


def attest_lease(
    client,
    workers: Sequence[str] | None = None,
    claim_tflops: Any = None,
    tolerance: float = 0.6,
    sample_check: bool = True,
    *,
    claim_model: str | None = None,
    claim_memory_gib: float | None = None,
    timeout: float = 10.0,
    rounds: int = 4,
    max_rounds: int = 12,
    round_seconds: float = 0.05,
    sample_rows: int = 16,
    cpu_reference_tflops: float | None = None,
    cpu_max_n: int = CPU_MAX_N,
    gpu_max_n: int = GPU_MAX_N,
    concurrent: bool | None = None,
    rng: random.Random | None = None,
) -> AttestationReport:
    """Attest ``workers`` (addresses; default: all of the client's) against a claim.

    ``claim_tflops`` is the claimed dense TFLOPS per GPU: a float, a mapping
    address -> float, a :class:`~jupyter_gpumarket.spec.HardwareClaim` (also
    gives ``claim_model`` and ``claim_memory_gib``), or None to use each
    worker's declared profile. ``claim_model`` must appear in the worker's GPU
    name (case and "NVIDIA" ignored). A worker fails on a model or memory
    mismatch, a wrong sampled result, throughput below ``tolerance`` times the
    claim, or no answer within ``timeout`` seconds per call. See the module
    docstring for the timing and the CPU calibration (``cpu_reference_tflops``).
    """
    if not (0.0 < tolerance <= 1.0):
        raise InvalidRequest(f"tolerance must be in (0, 1], got {tolerance!r}")
    if rounds < 1 or sample_rows < 1 or timeout <= 0 or round_seconds <= 0:
        raise InvalidRequest("rounds, sample_rows, timeout and round_seconds must be positive")
    t0 = time.perf_counter()
    if hasattr(claim_tflops, "gpu_model") and hasattr(claim_tflops, "tflops"):  # spec.HardwareClaim
        claim_model = claim_model or claim_tflops.gpu_model
        claim_memory_gib = claim_memory_gib or claim_tflops.memory_gib
        claim_tflops = claim_tflops.tflops
    info = client.scheduler_info(n_workers=-1)["workers"]
    known = set(info)
    addresses = sorted(known) if workers is None else list(workers)
    if not addresses:
        raise InvalidRequest("no workers to attest")
    rng = rng or random.Random(secrets.randbits(64))

    def claim_for(a: str) -> float | None:
        if isinstance(claim_tflops, Mapping):
            return claim_tflops.get(a)
        return None if claim_tflops is None else float(claim_tflops)

    kwargs = dict(
        sizing={},
        tolerance=tolerance, sample_check=sample_check, sample_rows=sample_rows, rounds=rounds,
        max_rounds=max(rounds, max_rounds),
        round_seconds=round_seconds, timeout=timeout, cpu_reference_tflops=cpu_reference_tflops,
        cpu_max_n=cpu_max_n, gpu_max_n=gpu_max_n,
    )

    def one(a: str, r: random.Random) -> WorkerAttestation:
        if a not in known:
            return WorkerAttestation(address=a, passed=False, reason="worker is not connected to the scheduler")
        return _attest_one(client, a, claim_for(a), claim_model, claim_memory_gib, rng=r, **kwargs)

    if concurrent is None:
        # Concurrent only when every worker has its own GPU (its profile says simulated=False);
        # simulated workers share this machine's CPU, so they are attested one at a time.
        from ..cluster.runtime import PROFILE_PLUGIN

        profiles = [(info.get(a) or {}).get(PROFILE_PLUGIN) or {} for a in addresses]
        concurrent = all(p.get("simulated") is False for p in profiles)
    rngs = [random.Random(rng.randrange(2**64)) for _ in addresses]
    if concurrent and len(addresses) > 1:
        with ThreadPoolExecutor(max_workers=len(addresses)) as pool:
            verdicts = list(pool.map(one, addresses, rngs))
    else:
        verdicts = [one(a, r) for a, r in zip(addresses, rngs)]
    return AttestationReport(workers=verdicts, tolerance=tolerance, seconds=time.perf_counter() - t0)
