"""The worker side of hardware attestation: a seeded, timed benchmark and the inventory.

:func:`run_challenge` runs on a leased worker; :func:`verify_rows` lets the tenant
recompute a few rows cheaply. :class:`SimulatedBehaviour` models weak or dishonest
providers on devnets. How the tenant judges the answers is in :mod:`.attest`.

>>> Challenge.fresh(n=64, reps=4).flops
2097152
>>> r = run_challenge(7, 64, 4)
>>> verify_rows(Challenge(seed=7, n=64, reps=4), r, [(0, 3), (0, 60)]) is None
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin
from threadpoolctl import threadpool_limits

from ..errors import InvalidRequest
from .hashing import encode_key

BEHAVIOUR_PLUGIN = "gpu_behaviour"

_M32 = 0xFFFFFFFF
_GAIN = 1.0  # B's scale: edge of the ordered regime, so float noise does not grow along a chain
CPU_MAX_N = 768  # ~0.9 GFLOP per product: a few ms to tens of ms on one CPU, matrices ~2 MiB
GPU_MAX_N = 8192  # 1.1 TFLOP per product; the tenant's check generates B (256 MiB in fp32)
_MEMORY_FRACTION = 0.25  # of the claimed memory, for the three n x n matrices
_TOL = {"float32": 1e-3, "float64": 1e-3, "bfloat16": 2e-2, "float16": 2e-2}
_MAX_STEPS = 16  # products per chain: activations stay O(1), bf16 noise stays ~30x below a row sum



@dataclasses.dataclass(frozen=True)
class Challenge:
    """One round for one worker: ``reps`` products of ``n x n`` matrices from ``seed``.

    The products form ``segments`` independent chains of ``reps // segments``
    products each (``X <- tanh(X @ B)``), so the tenant's check of one row costs
    one chain, not the whole challenge.
    """

    seed: int
    n: int
    reps: int
    segments: int = 1

    def __post_init__(self):
        if not (0 <= self.seed < 2**64):
            raise InvalidRequest(f"challenge seed must be a 64-bit unsigned integer, got {self.seed!r}")
        if not (2 <= self.n <= 65536):
            raise InvalidRequest(f"challenge size n must be in [2, 65536], got {self.n!r}")
        if self.reps < 1 or self.segments < 1 or self.reps % self.segments:
            raise InvalidRequest(
                f"reps ({self.reps}) must be a positive multiple of segments ({self.segments})"
            )

    @property
    def steps(self) -> int:
        """Products per chain."""
        return self.reps // self.segments

    @property
    def flops(self) -> int:
        return 2 * self.n**3 * self.reps

    @classmethod
    def fresh(cls, n: int, reps: int, segments: int = 1) -> Challenge:
        """A challenge with a fresh random seed (never reuse one across workers or rounds)."""
        return cls(seed=secrets.randbits(64), n=n, reps=reps, segments=segments)

    @staticmethod
    def size_for(memory_gib: float, simulated: bool, *, cpu_max_n: int = CPU_MAX_N, gpu_max_n: int = GPU_MAX_N) -> int:
        """Matrix size for a claimed memory: three matrices in a quarter of it, capped, a multiple of 64."""
        bytes_per = 4 if simulated else 2
        n = int(math.sqrt(max(memory_gib, 0.0) * 2**30 * _MEMORY_FRACTION / (3 * bytes_per)))
        cap = cpu_max_n if simulated else gpu_max_n
        return max(64, min(cap, n) // 64 * 64)


def _key(seed: int, tag: str) -> int:
    digest = hashlib.sha256(f"gpumarket-attest:{seed}:{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _mix(x):
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def _hash24(idx, key: int):
    """24-bit pseudo-random integers from int64 indices (< 2**32); numpy or torch alike."""
    x = _mix((idx ^ (key & _M32)) & _M32)
    x = _mix(x ^ ((key >> 32) & _M32))
    return x >> 8


def _np_start_rows(seed: int, n: int, segment: int, rows: Sequence[int]) -> np.ndarray:
    idx = (np.asarray(rows, dtype=np.int64)[:, None] * n + np.arange(n, dtype=np.int64)[None, :])
    u = _hash24(idx, _key(seed, f"X{segment}")).astype(np.float32)
    return (u - np.float32(2**23)) / np.float32(2**23)


def _np_b(seed: int, n: int) -> np.ndarray:
    out = np.empty((n, n), dtype=np.float32)
    key = _key(seed, "B")
    scale = np.float32(_GAIN * math.sqrt(3.0 / n))
    block = max(1, 2**22 // n)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        idx = np.arange(r0 * n, r1 * n, dtype=np.int64).reshape(r1 - r0, n)
        u = _hash24(idx, key).astype(np.float32)
        out[r0:r1] = (u - np.float32(2**23)) / np.float32(2**23) * scale
    return out


def _torch_matrix(torch, seed: int, n: int, tag: str, device, scale: float | None):
    idx = torch.arange(n * n, dtype=torch.int64, device=device).reshape(n, n)
    u = _hash24(idx, _key(seed, tag)).to(torch.float32)
    del idx
    m = (u - 2.0**23) / 2.0**23
    if scale is not None:
        m = m * torch.tensor(scale, dtype=torch.float32, device=device)
    return m


def _backend() -> tuple[str, Any]:
    """('cuda'|'cpu', torch) when torch is importable, else ('cpu', None) for numpy."""
    try:
        import torch
    except ImportError:
        return "cpu", None
    return ("cuda" if torch.cuda.is_available() else "cpu"), torch


def _compute(ch: Challenge, clock=time.perf_counter) -> tuple[np.ndarray, str, str, float]:
    """Row sums (segments x n, float64) of each chain's final matrix, device, dtype, and the
    ``clock`` seconds spent in the products alone (generating the inputs is set-up, not throughput)."""
    device, torch = _backend()
    n = ch.n
    scale = float(np.float32(_GAIN * math.sqrt(3.0 / n)))
    seconds = 0.0
    if torch is not None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        with torch.no_grad():
            b = _torch_matrix(torch, ch.seed, n, "B", device, scale).to(dtype)
            out = []
            for s in range(ch.segments):
                x = _torch_matrix(torch, ch.seed, n, f"X{s}", device, None).to(dtype)
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = clock()
                for _ in range(ch.steps):
                    x = torch.tanh(x @ b)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds += clock() - t0
                out.append(x.float().sum(dim=1))
            sums = torch.stack(out)
            return sums.cpu().double().numpy(), device, str(dtype).removeprefix("torch."), seconds
    b = _np_b(ch.seed, n)
    out = []
    for s in range(ch.segments):
        x = _np_start_rows(ch.seed, n, s, range(n))
        buf = np.empty_like(x)
        t0 = clock()
        for _ in range(ch.steps):  # in place: no allocation (and no page faults) inside the clock
            np.matmul(x, b, out=buf)
            np.tanh(buf, out=x)
        seconds += clock() - t0
        out.append(x.sum(axis=1, dtype=np.float64))
    return np.stack(out), "cpu", "float32", seconds


@contextlib.contextmanager
def single_thread():
    """BLAS (and torch's CPU pool) limited to the calling thread, so ``time.thread_time`` sees all the work.

    Simulated (CPU) challenges are timed this way on both sides: a thread's CPU time does
    not count the time the OS gave to other processes, which on a shared machine is most
    of the wall time (a CPU-simulated worker on a busy 2-core box got 20-30 % of a core).
    """
    _, torch = _backend()
    old = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=1):
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(old)


def _digest(sums: np.ndarray) -> str:
    return hashlib.sha256(np.round(np.asarray(sums, dtype=np.float64), 1).tobytes()).hexdigest()


# -- worker side ----------------------------------------------------------------


def _current_worker():
    try:
        from distributed import get_worker

        return get_worker()
    except ValueError:  # not inside a task: the tenant's local calibration
        return None


def _threads(torch) -> int:
    if torch is not None:
        return int(torch.get_num_threads())
    return os.cpu_count() or 1


def _nvml_inventory() -> dict[str, Any] | None:
    try:
        import pynvml  # optional, part of the [gpu] extra
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        index = 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        if visible.isdigit():
            index = int(visible)
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle).total
        return {
            "model": name.decode() if isinstance(name, bytes) else str(name),
            "memory_gib": mem / 2**30,
            "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
            "source": "nvml",
        }
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def inventory(dask_worker=None) -> dict[str, Any]:
    """What this worker's GPU is: NVML when present, else its declared profile.

    Keys: ``model``, ``memory_gib``, ``driver``, ``source`` (``"nvml"``,
    ``"declared"`` or ``"none"``), ``simulated``, ``declared`` (the profile
    dict or None), ``device``, ``threads``. Usable with ``client.run`` too.
    """
    from ..cluster.runtime import PROFILE_PLUGIN

    worker = dask_worker if dask_worker is not None else _current_worker()
    declared = None
    if worker is not None:
        plugin = worker.plugins.get(PROFILE_PLUGIN)
        if plugin is not None:
            declared = plugin.profile.to_dict()
    device, torch = _backend()
    info: dict[str, Any] = {"device": device, "threads": _threads(torch), "declared": declared}
    nvml = _nvml_inventory()
    if nvml is not None:
        info.update(nvml, simulated=False)
    elif declared is not None:
        info.update(
            model=declared["model"],
            memory_gib=float(declared["memory_gib"]),
            driver=None,
            source="declared",
            simulated=bool(declared.get("simulated", True)),
        )
    else:
        info.update(model=None, memory_gib=0.0, driver=None, source="none", simulated=True)
    return info


def timed_compute(ch: Challenge, simulated: bool, behaviour: SimulatedBehaviour | None = None):
    """``(row sums, device, dtype, seconds)``: CPU seconds of this thread on one BLAS thread when
    ``simulated``, else wall seconds. A devnet ``behaviour`` slows down or corrupts inside the clock."""
    clock = time.thread_time if simulated else time.perf_counter
    with single_thread() if simulated else contextlib.nullcontext():
        sums, device, dtype, seconds = _compute(ch, clock)
        if behaviour is not None:
            sums, seconds = behaviour.apply(ch, sums, clock, seconds)
        return sums, device, dtype, seconds


def run_challenge(seed: int, n: int, reps: int, segments: int = 1) -> dict[str, Any]:
    """Worker side of one round: inventory, then the timed seeded benchmark.

    Returns ``row_sums`` (``segments x n`` list of floats: the commitment the
    tenant samples), ``digest`` (SHA-256 of the rounded sums), ``seconds`` and
    ``tflops`` as the worker measured them, ``clock`` (``"thread_cpu"`` for a
    simulated worker: this thread's CPU time on one BLAS thread, which the
    tenant uses for the devnet calibration; ``"wall"`` on a real GPU, where
    the tenant times the round trip itself), ``device``, ``dtype`` and ``inventory``.
    """
    ch = Challenge(seed=int(seed), n=int(n), reps=int(reps), segments=int(segments))
    worker = _current_worker()
    inv = inventory(worker)
    simulated = inv["source"] != "nvml"
    behaviour = worker.plugins.get(BEHAVIOUR_PLUGIN) if worker is not None else None
    sums, device, dtype, seconds = timed_compute(ch, simulated, behaviour)
    return {
        "seed": ch.seed,
        "n": ch.n,
        "reps": ch.reps,
        "segments": ch.segments,
        "row_sums": sums.tolist(),
        "digest": _digest(sums),
        "seconds": seconds,
        "clock": "thread_cpu" if simulated else "wall",
        "tflops": ch.flops / max(seconds, 1e-12) / 1e12,
        "device": device,
        "dtype": dtype,
        "inventory": inv,
    }


class SimulatedBehaviour(WorkerPlugin):
    """Devnet-only: make a worker deliver ``throughput`` of its speed and invent ``wrong_rows`` of its results.

    ``throughput=0.5`` does the work of each challenge twice (a provider claiming twice
    what it has: its CPU time per challenge doubles, and so does its wall time);
    ``wrong_rows=f`` replaces a fraction ``f`` of the returned row sums with made-up
    numbers (a provider skipping work); ``wrong_tasks=f`` returns a wrong result (a
    number or numeric array off by one) for a fraction ``f`` of the tasks, chosen by
    key, and signs it in its execution receipts as a cheater would.
    Install with ``Worker(plugins={SimulatedBehaviour(...)})``, or on one worker
    with ``client.run(simulate_behaviour, throughput=0.5, workers=[addr])``.
    """

    name = BEHAVIOUR_PLUGIN

    def __init__(self, throughput: float = 1.0, wrong_rows: float = 0.0, wrong_tasks: float = 0.0):
        if not (0.0 < throughput <= 1.0):
            raise InvalidRequest(f"throughput must be in (0, 1], got {throughput!r}")
        for name, value in (("wrong_rows", wrong_rows), ("wrong_tasks", wrong_tasks)):
            if not (0.0 <= value <= 1.0):
                raise InvalidRequest(f"{name} must be in [0, 1], got {value!r}")
        self.throughput = float(throughput)
        self.wrong_rows = float(wrong_rows)
        self.wrong_tasks = float(wrong_tasks)
        self._workers: list = []
        self._tampered: set = set()

    def __getstate__(self) -> dict:
        # Sent to worker processes as configuration only: the workers it serves here stay here.
        return {**self.__dict__, "_workers": [], "_tampered": set()}

    def setup(self, worker) -> None:
        self._workers.append(worker)

    def transition(self, key, start, finish, **kwargs) -> None:
        if self.wrong_tasks > 0 and finish == "memory" and start in ("executing", "long-running"):
            worker = next((w for w in self._workers if key in w.data), None)
            if worker is not None:
                self.tamper(worker, key)

    def tamper(self, worker, key) -> None:
        """Replace the result of task ``key`` on ``worker`` if it is one of the chosen wrong ones (once)."""
        if self.wrong_tasks <= 0 or key in self._tampered:
            return
        pick = int.from_bytes(hashlib.sha256(encode_key(key)).digest()[:8], "big") / 2**64
        if pick >= self.wrong_tasks:
            return
        wrong = _off_by_one(worker.data[key])
        if wrong is not None:
            self._tampered.add(key)
            worker.data[key] = wrong

    def apply(self, ch: Challenge, sums: np.ndarray, clock, seconds: float) -> tuple[np.ndarray, float]:
        """Invent rows, then do ``1/throughput - 1`` times the products again; returns sums and ``clock`` seconds."""
        if self.wrong_rows > 0:
            rng = np.random.default_rng()
            sums = sums.copy()
            bad = rng.random(sums.shape) < self.wrong_rows
            sums[bad] = rng.normal(0.0, math.sqrt(ch.n), size=int(bad.sum()))
        if self.throughput < 1.0:
            # Real work, not sleep: the extra time must show on the CPU clock as it would on a
            # slower device.
            extra = round(ch.reps * (1.0 / self.throughput - 1.0))  # products, to the nearest one
            if extra:
                seconds += _compute(Challenge(ch.seed, ch.n, extra, segments=extra), clock)[3]
        return sums, seconds


def _off_by_one(value):
    """A plausible wrong result: numbers and numeric arrays plus one; None for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value + 1
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        return value + 1
    return None


def simulate_behaviour(dask_worker=None, throughput: float = 1.0, wrong_rows: float = 0.0) -> None:
    """``client.run(simulate_behaviour, throughput=..., wrong_rows=..., workers=[...])``; 1.0/0.0 removes it."""
    worker = dask_worker if dask_worker is not None else _current_worker()
    if throughput >= 1.0 and wrong_rows <= 0.0:
        worker.plugins.pop(BEHAVIOUR_PLUGIN, None)
    else:
        worker.plugins[BEHAVIOUR_PLUGIN] = SimulatedBehaviour(throughput, wrong_rows)


# -- tenant side ----------------------------------------------------------------


def verify_rows(ch: Challenge, result: Mapping[str, Any], picks: Sequence[tuple[int, int]]) -> str | None:
    """Recompute the (segment, row) sums ``picks`` in float64; None if they match, else why not."""
    sums = np.asarray(result.get("row_sums"), dtype=np.float64)
    if sums.shape != (ch.segments, ch.n):
        return f"result has row sums of shape {sums.shape}, expected {(ch.segments, ch.n)}"
    if not np.all(np.isfinite(sums)):
        return "result has non-finite row sums"
    if not picks:
        return None
    b = _np_b(ch.seed, ch.n).astype(np.float64)
    tol = _TOL.get(str(result.get("dtype")), max(_TOL.values())) * math.sqrt(ch.n)
    by_segment: dict[int, list[int]] = {}
    for seg, row in picks:
        by_segment.setdefault(int(seg), []).append(int(row))
    wrong = 0
    worst = 0.0
    for seg, rows in by_segment.items():
        x = _np_start_rows(ch.seed, ch.n, seg, rows).astype(np.float64)
        for _ in range(ch.steps):
            x = np.tanh(x @ b)
        diff = np.abs(x.sum(axis=1) - sums[seg, rows])
        wrong += int((diff > tol).sum())
        worst = max(worst, float(diff.max()))
    if wrong:
        return (
            f"result digest wrong: {wrong} of {len(picks)} sampled rows differ from the tenant's "
            f"recomputation (worst by {worst:.3g}, tolerance {tol:.3g})"
        )
    return None


