"""One exception root for the whole package.

Each category also subclasses the builtin a caller would already catch:

>>> issubclass(InvalidRequest, ValueError), issubclass(NotAuthorized, PermissionError)
(True, True)

Errors decoded from the contract live in :mod:`jupyter_gpumarket.chain.errors`
and subclass these categories, so ``except InvalidRequest`` catches a refused
bid price as well as a bad argument caught in Python before any transaction.
"""

from __future__ import annotations


class GpuMarketError(Exception):
    """Root of every error this package raises on purpose."""


class InvalidRequest(GpuMarketError, ValueError):
    """The request cannot be carried out as given; the message says what to change."""


class InsufficientFunds(InvalidRequest):
    """Not enough balance, allowance or budget."""


class NotAuthorized(GpuMarketError, PermissionError):
    """The caller's account may not do this."""


class NotFound(GpuMarketError, LookupError):
    """No such order, bid, lease or provider."""


class WrongState(GpuMarketError, RuntimeError):
    """The object exists but is not in a state that allows this (closed, ended, ...)."""


class ChainUnavailable(GpuMarketError, ConnectionError):
    """No chain answers at the configured RPC URL, or it is the wrong chain."""


class ProviderUnreachable(GpuMarketError, ConnectionError):
    """A provider's control endpoint or workers do not answer."""
