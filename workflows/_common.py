"""Errors and input checks shared by the workflows.

Every bad input becomes one :class:`WorkflowInputError` (an
:class:`~jupyter_gpumarket.errors.InvalidRequest`, hence also a ``ValueError``)
whose message names the problem, raised on the tenant before any work is sent.

>>> import pandas as pd
>>> check_columns(pd.DataFrame({"a": [1]}), {"a": "numeric", "b": "numeric"}, what="trips")
Traceback (most recent call last):
...
workflows._common.MissingColumns: trips is missing column(s) ['b'] (has ['a'])
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from jupyter_gpumarket.errors import InvalidRequest


class WorkflowInputError(InvalidRequest):
    """A workflow was given input it cannot use."""


class MissingColumns(WorkflowInputError):
    """Required columns are absent."""


class WrongDtype(WorkflowInputError):
    """A column has a dtype the workflow cannot use."""


class EmptyDataset(WorkflowInputError):
    """The data set has no rows (or none survive cleaning)."""


class ModelTooLarge(WorkflowInputError):
    """The model does not fit the declared ``max_memory_bytes``."""


# kind -> (test, words for the message)
_KINDS = {
    "numeric": (lambda t: pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t),
                "a numeric dtype"),
    "integer": (pd.api.types.is_integer_dtype, "an integer dtype"),
    "datetime": (pd.api.types.is_datetime64_any_dtype, "a datetime64 dtype"),
    "flag": (lambda t: pd.api.types.is_bool_dtype(t) or pd.api.types.is_integer_dtype(t),
             "a bool or integer dtype"),
    "text": (lambda t: pd.api.types.is_string_dtype(t) or isinstance(t, pd.CategoricalDtype),
             "a string or category dtype"),
}


def check_columns(meta, schema: Mapping[str, str], *, what: str) -> None:
    """Raise if ``meta`` (a pandas/cudf frame, or a dask frame's ``_meta``) lacks a column
    of ``schema`` or has it with the wrong kind of dtype (``numeric``, ``integer``,
    ``datetime``, ``flag`` or ``text``)."""
    have = list(meta.columns)
    missing = [c for c in schema if c not in have]
    if missing:
        raise MissingColumns(f"{what} is missing column(s) {missing} (has {have})")
    for col, kind in schema.items():
        test, words = _KINDS[kind]
        dtype = meta[col].dtype
        if not test(dtype):
            raise WrongDtype(f"{what} column {col!r} has dtype {dtype}, expected {words}")


def check_positive(**values: float) -> None:
    """Raise naming the first argument that is not > 0.

    >>> check_positive(batch_size=0)
    Traceback (most recent call last):
    ...
    workflows._common.WorkflowInputError: batch_size must be > 0, got 0
    """
    for name, value in values.items():
        if value is None or not value > 0:
            raise WorkflowInputError(f"{name} must be > 0, got {value!r}")


def model_memory_bytes(model, *, batch_size: int, copies: int = 3) -> int:
    """Rough bytes a PyTorch model needs for training or inference on one device.

    ``copies`` counts parameter-sized buffers: weights, gradients and one
    optimiser/averaging buffer for training (3), weights alone for inference (1).
    Activations are estimated as a batch through the widest layer, twice (saved
    for backward). It is an estimate for refusing hopeless requests early, not
    an allocator.
    """
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    widest = max((p.shape[0] for p in params if p.dim() > 0), default=0)
    depth = max(1, sum(1 for p in params if p.dim() > 1))
    activation_bytes = 2 * batch_size * widest * depth * 4
    return copies * param_bytes + activation_bytes


def check_model_memory(model, max_memory_bytes: int | None, *, batch_size: int, copies: int) -> int:
    """Raise :class:`ModelTooLarge` if the estimate exceeds ``max_memory_bytes``; return it."""
    need = model_memory_bytes(model, batch_size=batch_size, copies=copies)
    if max_memory_bytes is not None and need > max_memory_bytes:
        n = sum(p.numel() for p in model.parameters())
        raise ModelTooLarge(
            f"model needs about {need / 2**20:.1f} MiB ({n:,} parameters at batch_size "
            f"{batch_size}) but max_memory_bytes is {max_memory_bytes / 2**20:.1f} MiB; "
            "use a smaller model or batch, or lease a GPU with more memory"
        )
    return need


def leave_checkpoint(client, name: str, round: int, data: bytes) -> None:
    """Leave ``data`` as the cluster's latest checkpoint on its scheduler, where the tenant's
    watchdog pulls it from before it releases an idle cluster or one whose notebook died
    (see :mod:`jupyter_gpumarket.watchdog`). Kept by the scheduler, so it outlives the kernel."""
    from jupyter_gpumarket.watchdog import publish_checkpoint  # noqa: PLC0415

    publish_checkpoint(client, name, round, data)


def show_progress(*futures_or_collections) -> None:
    """Show Dask's progress bar: a live widget in Jupyter (returns at once), a text
    bar in a terminal (returns when done). The caller then waits for its results."""
    from distributed import progress  # noqa: PLC0415

    progress(*futures_or_collections)
