"""Rent GPUs from a decentralised market and run Dask on them from Jupyter."""

from .errors import GpuMarketError
from .spec import Bid, GpuSpec, HardwareClaim, Lease, Money, Order, Provider, Receipt

__version__ = "0.1.0"

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
