"""The one place that decides the dataframe backend: ``"cudf"`` or ``"pandas"``.

Workflows are written once against :mod:`dask.dataframe`. When every worker
has a GPU and cuDF (with dask-cudf) importable, the backend is ``"cudf"``;
otherwise ``"pandas"``. Nothing here imports cuDF at module level, so this
works on machines without the ``[gpu]`` extra.

>>> choose_backend()        # no client: ask this process
'pandas'
>>> with dataframe_backend() as name:
...     import dask; dask.config.get("dataframe.backend") == name
True
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import dask

from jupyter_gpumarket.errors import InvalidRequest

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

BACKENDS = ("pandas", "cudf")
#: Set to "pandas" or "cudf" to override detection (e.g. to compare both on one GPU box).
ENV_OVERRIDE = "GPUMARKET_DATAFRAME_BACKEND"


def gpu_dataframe_available() -> bool:
    """True when this process can run cuDF on a GPU (cudf, dask_cudf and a device).

    Runs on each worker through ``client.run``; must never raise.
    """
    if importlib.util.find_spec("cudf") is None or importlib.util.find_spec("dask_cudf") is None:
        return False
    try:  # importing cudf succeeds on some GPU-less hosts, so touch a device too
        import cudf  # noqa: PLC0415

        return int(cudf.Series([1]).sum()) == 1
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
        return False


def choose_backend(client: Client | None = None, *, prefer: str | None = None) -> str:
    """Return ``"cudf"`` if the tenant and *all* workers can run cuDF, else ``"pandas"``.

    ``prefer`` (or the ``GPUMARKET_DATAFRAME_BACKEND`` variable) forces a
    backend; forcing ``"cudf"`` where it is unavailable is an error, because a
    silent fallback would make benchmark numbers lie.

    >>> choose_backend(prefer="pandas")
    'pandas'
    """
    prefer = prefer or os.environ.get(ENV_OVERRIDE) or None
    if prefer is not None and prefer not in BACKENDS:
        raise InvalidRequest(f"dataframe backend must be one of {BACKENDS}, not {prefer!r}")
    if prefer == "pandas":
        return "pandas"
    # The tenant builds the graph, so it needs dask_cudf too, not only the workers.
    able = gpu_dataframe_available()
    if able and client is not None:
        answers = client.run(gpu_dataframe_available)
        able = bool(answers) and all(answers.values())
    if prefer == "cudf" and not able:
        raise InvalidRequest(
            "dataframe backend 'cudf' was requested but cuDF/dask-cudf or a GPU is "
            "missing on the tenant or on a worker (install the [gpu] extra on GPU hosts)"
        )
    return "cudf" if able else "pandas"


@contextlib.contextmanager
def dataframe_backend(client: Client | None = None, *, prefer: str | None = None) -> Iterator[str]:
    """Set dask's ``dataframe.backend`` config for the block; yields the backend name.

    Collections created inside the block (``dd.read_parquet``, ``dd.from_dict``,
    ...) use that backend; use :func:`to_backend` for frames made elsewhere.
    """
    name = choose_backend(client, prefer=prefer)
    with dask.config.set({"dataframe.backend": name}):
        yield name


def to_backend(frame, backend: str):
    """Move a dask or pandas frame to ``backend``; a no-op when it is already there."""
    if backend == "pandas" and type(frame).__module__.startswith("pandas"):
        return frame
    if hasattr(frame, "to_backend"):  # dask collections
        return frame.to_backend(backend)
    if backend == "cudf":  # a pandas object going to the GPU
        import cudf  # noqa: PLC0415

        return cudf.from_pandas(frame)
    return frame.to_pandas()  # a cudf object coming back


__all__ = [
    "BACKENDS",
    "ENV_OVERRIDE",
    "choose_backend",
    "dataframe_backend",
    "gpu_dataframe_available",
    "to_backend",
]
