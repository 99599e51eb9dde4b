"""Reusable Dask workflows a notebook runs on a ``distributed.Client``.

Each works on any Client (a leased GPU cluster or a ``LocalCluster``), ships
its own synthetic data or model, and returns results a notebook can plot.

- :mod:`workflows.dataprep`: read, clean, join, hourly features, partitioned Parquet.
- :mod:`workflows.finetune`: data-parallel PyTorch with periodic averaging (local SGD / DiLoCo).
- :mod:`workflows.inference`: batched model inference over a dask DataFrame.

Submodules import lazily so that ``import workflows`` does not pull in PyTorch.

>>> from workflows import WorkflowInputError
>>> from jupyter_gpumarket.errors import InvalidRequest
>>> issubclass(WorkflowInputError, InvalidRequest)
True
"""

from ._common import EmptyDataset, MissingColumns, ModelTooLarge, WorkflowInputError, WrongDtype

__all__ = ["EmptyDataset", "MissingColumns", "ModelTooLarge", "WorkflowInputError", "WrongDtype"]
