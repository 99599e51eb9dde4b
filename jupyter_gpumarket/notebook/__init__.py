"""Notebook front end: magics, widgets, cell receipts."""

from .magics import current_session
from .receipts import CellReceipt

__all__ = ["CellReceipt", "current_session"]
