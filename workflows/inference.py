"""Batched PyTorch inference over a dask DataFrame, the model sent once per worker.

The model is serialised once on the tenant, scattered to every worker
(``client.scatter(..., broadcast=True)``) and deserialised at most once per
worker process into a cache keyed by the model's token; every partition that
worker handles reuses it. :func:`load_counts` reports the deserialisations.

>>> preds = predict(client, ddf, model, columns=["x0", "x1"])   # doctest: +SKIP
>>> preds[["prediction", "confidence"]].compute().hist()        # doctest: +SKIP
>>> client.run(load_counts)                                     # doctest: +SKIP
{'tcp://127.0.0.1:40001': {'3f2a...': 1}, 'tcp://127.0.0.1:40002': {'3f2a...': 1}}
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

import cloudpickle
import numpy as np
import pandas as pd
import torch

from ._common import (
    EmptyDataset,
    WorkflowInputError,
    check_columns,
    check_model_memory,
    check_positive,
    show_progress,
)

_CACHE: OrderedDict[str, torch.nn.Module] = OrderedDict()
_CACHE_SIZE = 2  # models kept per worker process; older ones are dropped
_LOADS: Counter[str] = Counter()
_LOCK = threading.Lock()  # a multi-threaded worker must not load the same model twice


@dataclass(frozen=True)
class ModelPayload:
    """A model as bytes plus a token naming its contents."""

    token: str
    blob: bytes

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ModelPayload:
        buf = io.BytesIO()
        # cloudpickle carries classes defined in a notebook by value
        torch.save(model, buf, pickle_module=cloudpickle)
        blob = buf.getvalue()
        return cls(token=hashlib.sha256(blob).hexdigest()[:16], blob=blob)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cached_model(payload: ModelPayload) -> torch.nn.Module:
    """This process's copy of the payload's model, deserialising it on first use only."""
    with _LOCK:
        model = _CACHE.get(payload.token)
        if model is None:
            model = torch.load(io.BytesIO(payload.blob), map_location=_device(), weights_only=False)
            model.eval()
            _LOADS[payload.token] += 1
            _CACHE[payload.token] = model
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(payload.token)
        return model


def load_counts() -> dict[str, int]:
    """How many times each model token was deserialised in this process (use with ``client.run``)."""
    return dict(_LOADS)


@torch.no_grad()
def run_model(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Outputs for rows ``x``: ``prediction`` (class, or value for one output) and
    ``confidence`` (top softmax probability) for classifiers."""
    device = next(model.parameters()).device
    chunks = [model(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu()
              for i in range(0, len(x), batch_size)]
    out = torch.cat(chunks) if chunks else model(torch.zeros(0, x.shape[1], device=device)).cpu()
    if out.dim() == 1 or out.shape[1] == 1:
        return {"prediction": out.reshape(-1).numpy()}
    probs = out.softmax(1)
    conf, cls = probs.max(1)
    return {"prediction": cls.numpy().astype("int64"), "confidence": conf.numpy()}


def predict_partition(part, payload: ModelPayload, columns: list[str], batch_size: int):
    """One partition in, the same rows with prediction columns added."""
    model = cached_model(payload)
    # a writable host copy: pandas may hand out read-only views, which torch warns about
    x = np.ascontiguousarray(part[columns].to_numpy(dtype="float32", copy=True))
    return part.assign(**run_model(model, x, batch_size))


def predict(client, ddf, model: torch.nn.Module, columns: list[str], *, batch_size: int = 1024,
            max_memory_bytes: int | None = None, persist: bool = True, progress: bool = False):
    """Add the model's ``prediction`` (and ``confidence``) columns to every row of ``ddf``.

    ``columns``: the numeric feature columns, in the order the model expects.
    ``persist=True`` (default) runs now and keeps results on the cluster, and
    raises :class:`EmptyDataset` if there were no rows; ``persist=False``
    returns the lazy collection. ``progress`` shows Dask's progress bar.
    """
    columns = list(columns)
    check_positive(batch_size=batch_size)
    if not hasattr(ddf, "map_partitions"):
        raise WorkflowInputError(
            f"ddf must be a dask DataFrame, not {type(ddf).__name__}; use dd.from_pandas(frame)")
    if not columns:
        raise WorkflowInputError("columns must name at least one feature column")
    check_columns(ddf._meta, dict.fromkeys(columns, "numeric"), what="input frame")
    check_model_memory(model, max_memory_bytes, batch_size=batch_size, copies=1)
    try:  # fail here, not on every partition, if the model and columns disagree
        probe = run_model(model.eval(), np.zeros((1, len(columns)), dtype="float32"), 1)
    except Exception as exc:  # noqa: BLE001 - any failure means the shapes disagree
        raise WorkflowInputError(
            f"model does not accept {len(columns)} input features {columns}: {exc}") from exc
    payload = ModelPayload.from_model(model)
    # one copy per worker; tasks receive the worker's local copy, not a per-partition one
    handle = client.scatter(payload, broadcast=True, hash=False)
    meta = ddf._meta.assign(**{k: pd.Series(v[:0], dtype=v.dtype) for k, v in probe.items()})
    out = ddf.map_partitions(predict_partition, handle, columns, batch_size, meta=meta)
    if not persist:
        return out
    out = client.persist(out)
    if progress:
        show_progress(out)
    if int(client.compute(out.map_partitions(len).sum(), sync=True)) == 0:
        raise EmptyDataset("input frame has no rows to run inference on")
    return out


__all__ = ["ModelPayload", "cached_model", "load_counts", "predict", "predict_partition", "run_model"]
