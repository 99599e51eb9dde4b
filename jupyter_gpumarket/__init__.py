"""Rent GPUs from a decentralised market and run Dask on them from Jupyter."""

from .errors import GpuMarketError
from .spec import Bid, GpuSpec, HardwareClaim, Lease, Money, Order, Provider, Receipt

__version__ = "0.1.0"


def load_ipython_extension(ipython) -> None:
    """``%load_ext jupyter_gpumarket``: register ``%%gpurent`` and ``%gpumarket``."""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .notebook.magics import unload_ipython_extension as unload

    unload(ipython)

__all__ = [
    "Bid",
    "GpuMarketError",
    "GpuSpec",
    "HardwareClaim",
    "Lease",
    "Money",
    "Order",
    "Provider",
    "Receipt",
    "__version__",
]
