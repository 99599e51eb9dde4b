"""The provider-side Dask runtime of one lease.

:class:`LeaseRuntime` runs, inside the calling process, a TLS-only Dask
scheduler (for the first lease of an order) and one single-threaded worker
per leased GPU. Everything lives on a private asyncio loop in a background
thread, so a plain thread-based provider agent drives it through a small sync
API (:meth:`~LeaseRuntime.start`, :meth:`~LeaseRuntime.close`), and killing
the provider process kills its workers with it.

On a GPU box with ``dask_cuda`` installed each GPU gets a nanny-managed
worker process pinned to it (``CUDA_VISIBLE_DEVICES`` rotated and the
``dask_cuda.initialize`` preload, as ``dask_cuda.CUDAWorker`` does; built
directly so that resources, name and profile plugin reach every worker).
Everywhere else the workers are plain ``distributed.Worker`` objects in this
process (threads, no nanny) that declare a simulated :class:`GpuProfile`.

With ``python=`` (the interpreter of an environment built for the tenant's
package set, see :mod:`jupyter_gpumarket.cluster.environment`) each worker is
instead a process of that interpreter (``python -m
jupyter_gpumarket.cluster.runtime SPEC``), made with the same arguments, TLS
and plugins, which the runtime stops on close; the worker also stops when the
agent that started it goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import os
import pickle
import signal
import sys
import tempfile
import threading
from pathlib import Path
from collections.abc import Coroutine
from typing import Any

from distributed import Scheduler, Security, Worker
from distributed.diagnostics.plugin import WorkerPlugin

from jupyter_gpumarket.errors import InvalidRequest, WrongState

__all__ = ["GpuProfile", "LeaseRuntime", "LeaseRuntimeError", "worker_profile", "PROFILE_PLUGIN"]

logger = logging.getLogger(__name__)

#: Name of the worker plugin carrying the GPU profile; also the key in the
#: scheduler's per-worker info (``client.scheduler_info()["workers"][a]["gpu_profile"]``).
PROFILE_PLUGIN = "gpu_profile"

_DEFAULT_TIMEOUT = 30.0


class LeaseRuntimeError(WrongState):
    """The lease's Dask runtime failed to start, or was used after close()."""


@dataclasses.dataclass(frozen=True)
class GpuProfile:
    """What a worker's GPU is: read from NVML, or declared (``simulated=True``) on CPU."""

    model: str
    memory_gib: int
    tflops: float
    simulated: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuProfile:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    @classmethod
    def detect(cls, tflops: float = 0.0) -> GpuProfile | None:
        """Profile of GPU 0 through NVML, or None without NVIDIA GPUs or ``pynvml``.

        NVML does not report throughput; ``tflops`` is what the provider
        claims (attestation measures it).
        """
        try:
            import pynvml  # optional, part of the [gpu] extra
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return None
        try:
            if pynvml.nvmlDeviceGetCount() < 1:
                return None
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            return cls(model=name, memory_gib=round(mem / 2**30), tflops=float(tflops), simulated=False)
        except Exception:
            return None
        finally:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()

    @staticmethod
    def gpu_count() -> int:
        """Number of NVIDIA GPUs NVML sees (0 without NVML)."""
        try:
            import pynvml
        except ImportError:
            return 0
        try:
            pynvml.nvmlInit()
            try:
                return int(pynvml.nvmlDeviceGetCount())
            finally:
                pynvml.nvmlShutdown()
        except Exception:
            return 0


class GpuProfilePlugin(WorkerPlugin):
    """Attaches the lease's GPU profile to a worker (``worker.gpu_profile``)."""

    name = PROFILE_PLUGIN

    def __init__(self, profile: GpuProfile, lease_id: int):
        self.profile = profile
        self.lease_id = lease_id

    def setup(self, worker):
        worker.gpu_profile = self.profile.to_dict()
        worker.lease_id = self.lease_id


class _ProfileInfo:
    """Picklable ``startup_information`` callable: the profile as a dict."""

    def __init__(self, profile: GpuProfile):
        self.profile = profile

    def __call__(self, worker) -> dict[str, Any]:
        return self.profile.to_dict()


def worker_profile(dask_worker=None) -> dict[str, Any]:
    """The GPU profile a worker declares; use as ``client.run(worker_profile)``."""
    if dask_worker is None:
        from distributed import get_worker

        dask_worker = get_worker()
    plugin = dask_worker.plugins.get(PROFILE_PLUGIN)
    if plugin is None:
        raise LookupError(f"worker {dask_worker.address} carries no GPU profile")
    return {**plugin.profile.to_dict(), "lease_id": plugin.lease_id, "name": dask_worker.name}


def _cuda_available() -> bool:
    return importlib.util.find_spec("dask_cuda") is not None and GpuProfile.gpu_count() > 0


class LeaseRuntime:
    """Scheduler and/or workers for one lease, on a private event loop thread.

    ``scheduler_address=None`` starts a TLS scheduler on ``host`` (free port)
    plus ``gpus`` workers; otherwise only the workers start and join the given
    scheduler over TLS, so several leases of one order form one cluster.
    Each worker has one thread, ``resources={"GPU": 1}``, the name
    ``lease-{lease_id}-gpu-{i}`` and the lease's :class:`GpuProfile`
    (``client.run(worker_profile)`` or the ``gpu_profile`` entry of the
    scheduler's worker info).
    """

    def __init__(
        self,
        lease_id: int,
        security: Security,
        profile: GpuProfile,
        gpus: int,
        scheduler_address: str | None = None,
        host: str = "127.0.0.1",
        *,
        use_cuda: bool | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
        plugins: tuple = (),
        python: str | None = None,
    ):
        if not isinstance(security, Security) or not security.require_encryption:
            raise InvalidRequest("LeaseRuntime needs a distributed.Security with require_encryption=True")
        if not security.tls_ca_file or not security.tls_worker_cert:
            raise InvalidRequest("LeaseRuntime needs a Security with a CA and worker certificate (ProviderKey.security)")
        if scheduler_address is None and not security.tls_scheduler_cert:
            raise InvalidRequest("hosting the scheduler needs a scheduler certificate in the Security")
        if not isinstance(gpus, int) or gpus < 1:
            raise InvalidRequest(f"gpus must be a positive integer, got {gpus!r}")
        if scheduler_address is not None and not scheduler_address.startswith("tls://"):
            raise InvalidRequest(f"scheduler address must be tls://host:port, got {scheduler_address!r}")
        self.lease_id = int(lease_id)
        self.security = security
        self.profile = profile
        self.gpus = gpus
        self.host = host
        self.timeout = timeout
        self.extra_plugins = tuple(plugins)  # e.g. a devnet-only SimulatedBehaviour
        self.use_cuda = _cuda_available() if use_cuda is None else use_cuda
        self.python = python  # None: workers in this process; else processes of this interpreter
        self._given_scheduler = scheduler_address
        self._scheduler: Scheduler | None = None
        self._workers: list[Any] = []  # Worker, Nanny (one per GPU) with dask_cuda, or _WorkerProcess
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state = "created"  # created -> running -> closed
        self.scheduler_address: str | None = scheduler_address
        self.dashboard_link: str | None = None

    def __repr__(self) -> str:
        return (
            f"<LeaseRuntime lease={self.lease_id} {self._state} scheduler={self.scheduler_address} "
            f"workers={len(self._workers)}>"
        )

    # -- the loop thread -----------------------------------------------------

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                    for t in pending:
                        t.cancel()
                    if pending:
                        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"lease-{self.lease_id}-dask", daemon=True)
        self._thread.start()
        ready.wait()

    def _call(self, coro: Coroutine, timeout: float | None) -> Any:
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def _stop_loop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop = self._thread = None

    # -- sync API ------------------------------------------------------------

    def start(self) -> str:
        """Start the scheduler (if hosting it) and the workers; returns the scheduler address."""
        with self._lock:
            if self._state == "running":
                return self.scheduler_address  # type: ignore[return-value]
            if self._state == "closed":
                raise LeaseRuntimeError(f"lease {self.lease_id}: runtime already closed")
            self._start_loop()
            try:
                self._call(self._astart(), self.timeout + 5)
            except BaseException as e:
                with contextlib.suppress(Exception):
                    self._call(self._aclose(), self.timeout)
                self._stop_loop()
                self._state = "closed"
                if isinstance(e, Exception):
                    raise LeaseRuntimeError(f"lease {self.lease_id}: Dask runtime failed to start: {e!r}") from e
                raise
            self._state = "running"
            logger.info("lease %s: %d worker(s) on %s", self.lease_id, len(self._workers), self.scheduler_address)
            return self.scheduler_address  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the workers (they leave the scheduler) and the scheduler if hosted. Idempotent."""
        with self._lock:
            if self._state == "closed":
                return
            try:
                if self._loop is not None:
                    with contextlib.suppress(Exception):
                        self._call(self._aclose(), self.timeout)
            finally:
                self._stop_loop()
                self._state = "closed"

    def __enter__(self) -> LeaseRuntime:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def workers(self) -> list[str]:
        """Addresses of this lease's workers."""
        out: list[str] = []
        for w in self._workers:
            if isinstance(w, Worker):
                if w.address:
                    out.append(w.address)
            elif getattr(w, "worker_address", None):  # Nanny on GPU providers, or a worker process
                out.append(w.worker_address)
        return out

    @property
    def alive(self) -> bool:
        """Running, with the scheduler (if hosted) and every worker up."""
        if self._state != "running" or self._thread is None or not self._thread.is_alive():
            return False
        if self._scheduler is not None and self._scheduler.status.name != "running":
            return False
        for w in self._workers:
            if w.status.name not in ("running", "paused"):
                return False
        return bool(self._workers)

    # -- on the loop ---------------------------------------------------------

    async def _astart(self) -> None:
        if self._given_scheduler is None:
            bokeh = importlib.util.find_spec("bokeh") is not None
            self._scheduler = Scheduler(
                host=self.host,
                port=0,
                protocol="tls",
                security=self.security,
                dashboard=bokeh,
                dashboard_address=f"{self.host}:0",
                validate=False,
            )
            await asyncio.wait_for(self._scheduler.start(), self.timeout)
            self.scheduler_address = self._scheduler.address
            if bokeh:
                port = self._scheduler.http_server.port
                self.dashboard_link = f"http://{self.host}:{port}/status"
        plugin = GpuProfilePlugin(self.profile, self.lease_id)
        common = dict(
            host=self.host,
            protocol="tls",
            nthreads=1,
            resources={"GPU": 1},
            security=self.security,
            plugins={plugin, *self.extra_plugins},
            startup_information={PROFILE_PLUGIN: _ProfileInfo(self.profile)},
            death_timeout=self.timeout,
            validate=False,
        )
        if self.python is not None:
            # On GPUs each process gets its device and dask_cuda's preload, as the nannies below do.
            if self.use_cuda:
                from dask_cuda.utils import cuda_visible_devices  # optional; GPU providers only

            new = [
                _WorkerProcess(
                    self.python, self.scheduler_address, f"lease-{self.lease_id}-gpu-{i}",
                    {**common, "preload": ["dask_cuda.initialize"]} if self.use_cuda else common,
                    env={"CUDA_VISIBLE_DEVICES": cuda_visible_devices(i)} if self.use_cuda else {},
                )
                for i in range(self.gpus)
            ]
        elif self.use_cuda:
            # One nanny-managed worker process per GPU, as dask_cuda.CUDAWorker
            # does, built directly so that resources/plugins reach the worker.
            from dask_cuda.utils import cuda_visible_devices  # optional; GPU providers only
            from distributed import Nanny

            new = [
                Nanny(
                    self.scheduler_address,
                    name=f"lease-{self.lease_id}-gpu-{i}",
                    env={"CUDA_VISIBLE_DEVICES": cuda_visible_devices(i)},
                    preload=["dask_cuda.initialize"],
                    **common,
                )
                for i in range(self.gpus)
            ]
        else:
            new = [
                Worker(self.scheduler_address, name=f"lease-{self.lease_id}-gpu-{i}", **common)
                for i in range(self.gpus)
            ]
        self._workers.extend(new)
        await asyncio.wait_for(asyncio.gather(*(w.start() for w in new)), self.timeout)

    async def _aclose(self) -> None:
        workers, self._workers = self._workers, []
        if workers:
            await asyncio.gather(
                *(w.close(reason=f"lease {self.lease_id} closed") for w in workers),
                return_exceptions=True,
            )
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                await self._scheduler.close(reason=f"lease {self.lease_id} closed")
            self._scheduler = None


class _WorkerProcess:
    """One Dask worker run by another interpreter (a lease's package environment).

    The worker's arguments (Security, plugins, profile) are pickled into a file
    only this agent writes and the child reads; the child writes its address back.
    """

    def __init__(self, python: str, scheduler: str, name: str, kwargs: dict[str, Any],
                 env: dict[str, str] | None = None) -> None:
        self.python = python
        self.env = env or {}
        self.scheduler = scheduler
        self.name = name
        self.kwargs = kwargs
        self.worker_address: str | None = None
        self._dir = tempfile.TemporaryDirectory(prefix=f"gpumarket-{name}-")
        self._process: asyncio.subprocess.Process | None = None

    @property
    def status(self):
        from distributed.core import Status

        running = self._process is not None and self._process.returncode is None and self.worker_address
        return Status.running if running else Status.closed

    async def start(self) -> None:
        root = Path(self._dir.name)
        spec = {"scheduler": self.scheduler, "name": self.name, "kwargs": self.kwargs,
                "address_file": str(root / "address"), "parent": os.getpid()}
        (root / "spec.pkl").write_bytes(pickle.dumps(spec))
        log = open(root / "worker.log", "wb")
        try:
            self._process = await asyncio.create_subprocess_exec(
                self.python, "-m", "jupyter_gpumarket.cluster.runtime", str(root / "spec.pkl"),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        finally:
            log.close()
        address_file = root / "address"
        while not address_file.exists():
            if self._process.returncode is not None:
                tail = (root / "worker.log").read_text(errors="replace")[-2000:]
                logger.error("worker %s exited with %s:\n%s", self.name, self._process.returncode, tail)
                raise LeaseRuntimeError(f"worker {self.name} exited with code {self._process.returncode} at start")
            await asyncio.sleep(0.05)
        self.worker_address = address_file.read_text().strip()

    async def close(self, reason: str = "") -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        self._dir.cleanup()


async def _run_worker_process(spec: dict[str, Any]) -> None:
    worker = Worker(spec["scheduler"], name=spec["name"], **spec["kwargs"])
    await worker
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.close(reason="stopped by the provider")))
    ready = Path(spec["address_file"] + ".tmp")
    ready.write_text(worker.address)
    ready.replace(spec["address_file"])  # atomic: the agent never reads half an address
    while worker.status.name in ("running", "paused", "init"):
        if os.getppid() != spec["parent"]:  # the agent died: do not serve on without it
            await worker.close(reason="provider agent exited")
            break
        await asyncio.sleep(0.5)
    await worker.finished()


if __name__ == "__main__":  # a worker process in a lease's package environment (see _WorkerProcess)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_run_worker_process(pickle.loads(Path(sys.argv[1]).read_bytes())))
