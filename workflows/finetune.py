"""Data-parallel PyTorch training across a Dask cluster with periodic averaging.

One model replica per worker runs ``sync_every`` (H) local SGD steps on its own
shard; the tenant then averages the replicas (local SGD), optionally through a
DiLoCo-style outer optimiser (Nesterov momentum on the averaged delta). Each
round is one Dask task per worker, pinned with ``workers=`` but allowed to move:
if a worker dies mid-round, Dask resubmits its task, whose input is the last
checkpoint, on a remaining worker. The checkpoint (state-dict bytes) is back on
the tenant after every round, so a lost worker costs at most one round. Each
round's checkpoint is also left on the scheduler (``checkpoint_name``), where
the tenant's watchdog pulls it to disk before it releases an idle lease or the
lease of a notebook that died.

The shipped task (:class:`SyntheticTask`) is a Gaussian-mixture classification
problem generated from a seed, learned by a small MLP; nothing is downloaded.

>>> result = finetune(client, steps=256, sync_every=16)        # doctest: +SKIP
>>> result.accuracy, result.bytes_communicated                  # doctest: +SKIP
(0.91, 1342176)
>>> result.frame().plot(x="samples_seen", y=["train_loss", "test_loss"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
import uuid
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from jupyter_gpumarket.errors import WrongState

from ._common import WorkflowInputError, check_model_memory, check_positive, leave_checkpoint, show_progress

OUTER_OPTIMISERS = ("average", "nesterov")


@dataclass(frozen=True)
class SyntheticTask:
    """Classify points drawn from ``clusters_per_class`` Gaussian blobs per class.

    Blobs overlap (``noise``), so the best possible loss is well above zero and
    loss comparisons between runs are meaningful. Everything derives from ``seed``.

    >>> x, y = SyntheticTask(n_test=8).data("test")
    >>> tuple(x.shape), int(y.max()) < 8
    ((8, 20), True)
    """

    seed: int = 0
    n_features: int = 20
    n_classes: int = 8
    clusters_per_class: int = 2
    spread: float = 0.55
    noise: float = 1.4
    n_train: int = 16_384
    n_test: int = 4_096
    hidden: int = 128
    depth: int = 2

    def build_model(self) -> nn.Module:
        """A fresh MLP with seed-determined initial weights (identical on every worker)."""
        torch.manual_seed(self.seed)
        layers: list[nn.Module] = []
        width = self.n_features
        for _ in range(self.depth):
            layers += [nn.Linear(width, self.hidden), nn.ReLU()]
            width = self.hidden
        layers.append(nn.Linear(width, self.n_classes))
        return nn.Sequential(*layers)

    def data(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, labels)`` of the ``"train"`` or ``"test"`` split (cached per process)."""
        return _make_split(self, split)


@functools.lru_cache(maxsize=8)
def _make_split(task: SyntheticTask, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(task.seed)
    n_blobs = task.n_classes * task.clusters_per_class
    centres = torch.randn(n_blobs, task.n_features, generator=gen) * task.spread * task.n_features ** 0.5 / 2
    gen.manual_seed(task.seed * 1000 + (1 if split == "train" else 2))
    n = task.n_train if split == "train" else task.n_test
    blob = torch.randint(0, n_blobs, (n,), generator=gen)
    x = centres[blob] + task.noise * torch.randn(n, task.n_features, generator=gen)
    return x, blob % task.n_classes


@functools.lru_cache(maxsize=4)
def _permutation(task: SyntheticTask, epoch: int) -> torch.Tensor:
    return torch.randperm(task.n_train, generator=torch.Generator().manual_seed(task.seed + 7919 * epoch))


def batch_indices(task: SyntheticTask, step: int, rank: int, world: int, batch_size: int) -> torch.Tensor:
    """Training rows for replica ``rank`` of ``world`` at global ``step``.

    At each step the replicas read consecutive slices of one shuffled stream,
    so one process with ``world`` times the steps sees the same samples in order.
    """
    pos = (step * world + rank) * batch_size + torch.arange(batch_size)
    epochs = pos // task.n_train
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        sel = epochs == epoch
        out[sel] = _permutation(task, epoch)[pos[sel] % task.n_train]
    return out


# ---------------------------------------------------------------- (de)serialisation
def state_to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def bytes_to_state(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- worker side
@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads. A small model gains nothing from more
    threads than its worker has, and oversubscribed OpenMP threads on a busy host
    slow it down by an order of magnitude."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def local_steps(model_bytes: bytes, task: SyntheticTask, *, first_step: int, n_steps: int,
                rank: int, world: int, batch_size: int, lr: float) -> dict:
    """Run ``n_steps`` of plain SGD from the given weights; the body of one round's task.

    Plain SGD keeps no optimiser state, so the checkpoint is the whole state.
    """
    try:
        from distributed import get_worker  # noqa: PLC0415

        worker = get_worker()
        address, threads = worker.address, worker.state.nthreads
    except ValueError:  # not on a worker: the single-process reference
        address, threads = "local", 1
    with torch_threads(threads):
        return _sgd(model_bytes, task, first_step=first_step, n_steps=n_steps, rank=rank,
                    world=world, batch_size=batch_size, lr=lr) | {"worker": address}


def _sgd(model_bytes, task, *, first_step, n_steps, rank, world, batch_size, lr) -> dict:
    started = time.perf_counter()
    device = _device()
    model = task.build_model().to(device)
    model.load_state_dict(bytes_to_state(model_bytes))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x_all, y_all = task.data("train")
    losses = []
    for step in range(first_step, first_step + n_steps):
        idx = batch_indices(task, step, rank, world, batch_size)
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"state": state_to_bytes(state), "losses": losses, "device": str(device),
            "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------- tenant side
@torch.no_grad()
def evaluate(task: SyntheticTask, state: dict, split: str = "test") -> tuple[float, float]:
    """``(loss, accuracy)`` of weights ``state`` on a split, on the tenant's CPU."""
    model = task.build_model()
    model.load_state_dict(state)
    x, y = task.data(split)
    with torch_threads(1):
        logits = model(x[:task.n_test])
    y = y[:task.n_test]
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def average_states(states: list[dict]) -> dict:
    return {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}


def outer_step(global_state: dict, averaged: dict, momentum: dict | None, *, kind: str,
               lr: float, mu: float) -> tuple[dict, dict | None]:
    """New global weights from the replicas' average.

    ``average`` is local SGD. ``nesterov`` (DiLoCo) treats ``global - average``
    as a gradient and takes a Nesterov-momentum step of size ``lr`` on it.
    """
    if kind == "average":
        return averaged, None
    momentum = momentum or {k: torch.zeros_like(v) for k, v in global_state.items()}
    new, new_m = {}, {}
    for k, g in global_state.items():
        delta = g - averaged[k]
        new_m[k] = mu * momentum[k] + delta
        new[k] = g - lr * (delta + mu * new_m[k])
    return new, new_m


@dataclass
class FinetuneResult:
    """Loss curve, accuracy, traffic and time of a run; ``frame()`` / ``plot()`` for notebooks."""

    history: list[dict]
    step_losses: list[float]
    initial_loss: float
    final_loss: float
    accuracy: float
    bytes_communicated: int
    wall_seconds: float
    sync_every: int
    samples_seen: int
    checkpoint: bytes = field(repr=False)
    recovered_rounds: list[int] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """One row per round: samples_seen, train_loss, test_loss, accuracy, bytes, seconds."""
        return pd.DataFrame(self.history)

    def plot(self, ax=None):
        """Train and held-out loss against samples seen (needs matplotlib)."""
        return self.frame().plot(x="samples_seen", y=["train_loss", "test_loss"], ax=ax,
                                 title=f"H={self.sync_every}, accuracy {self.accuracy:.3f}")


def _validate(client, task, *, steps, sync_every, batch_size, lr, outer, max_memory_bytes, workers):
    check_positive(steps=steps, sync_every=sync_every, batch_size=batch_size, lr=lr)
    if outer not in OUTER_OPTIMISERS:
        raise WorkflowInputError(f"outer must be one of {OUTER_OPTIMISERS}, not {outer!r}")
    if not isinstance(task, SyntheticTask):
        raise WorkflowInputError(f"task must be a SyntheticTask, not {type(task).__name__}")
    check_model_memory(task.build_model(), max_memory_bytes, batch_size=batch_size, copies=3)
    if client is not None and not (workers or _alive(client)):
        raise WorkflowInputError("the client has no workers to train on; scale the cluster first")


def _alive(client) -> list[str]:
    # nthreads() asks the scheduler directly; scheduler_info() can return a totals-only cache
    return sorted(client.nthreads())


def _round(client, model_bytes, task, *, rnd, first_step, n_steps, workers, key, progress, **kw):
    """Submit one round (a task per worker) and gather its results, in rank order."""
    from distributed import KilledWorker  # noqa: PLC0415

    for attempt in range(3):
        addrs = workers or _alive(client)
        if not addrs:
            raise WrongState(f"no workers left to run round {rnd}; the last checkpoint is intact")
        futures = [
            client.submit(local_steps, model_bytes, task, first_step=first_step, n_steps=n_steps,
                          rank=rank, world=len(addrs), **kw,
                          key=f"finetune-{key}-round{rnd}-try{attempt}-rank{rank}",
                          workers=[addr], allow_other_workers=True, retries=2, pure=False)
            for rank, addr in enumerate(addrs)
        ]
        if progress:
            show_progress(futures)
        try:
            return addrs, client.gather(futures)
        except KilledWorker:  # Dask gave up on a task: resubmit from the same checkpoint
            client.cancel(futures)
    raise RuntimeError(f"round {rnd} failed three times; the checkpoint is intact")


def finetune(client, task: SyntheticTask | None = None, *, steps: int = 512, sync_every: int = 8,
             batch_size: int = 64, lr: float = 0.1, outer: str = "average",
             outer_lr: float = 0.7, outer_momentum: float = 0.9, workers: list[str] | None = None,
             max_memory_bytes: int | None = None, resume_from: bytes | None = None,
             progress: bool = False, on_round=None, checkpoint_name: str | None = "finetune") -> FinetuneResult:
    """Train ``task`` on every worker of ``client``, averaging every ``sync_every`` steps.

    ``steps``: local SGD steps per replica in total. ``outer``: ``"average"``
    (local SGD) or ``"nesterov"`` (DiLoCo outer step with ``outer_lr`` and
    ``outer_momentum``). ``workers``: addresses to use (default: all, re-read
    each round). ``resume_from``: a ``result.checkpoint`` to continue from.
    ``on_round(row)`` is called on the tenant after each round, e.g. to live-plot.
    ``checkpoint_name``: each round's checkpoint is left on the scheduler under this name
    for the watchdog to pull before a release (``None``: don't).
    """
    task = task or SyntheticTask()
    _validate(client, task, steps=steps, sync_every=sync_every, batch_size=batch_size, lr=lr,
              outer=outer, max_memory_bytes=max_memory_bytes, workers=workers)
    started = time.perf_counter()
    global_state = {k: v.detach() for k, v in task.build_model().state_dict().items()}
    momentum, first_round = None, 0
    if resume_from is not None:
        ckpt = bytes_to_state(resume_from)
        global_state, momentum, first_round = ckpt["model"], ckpt["momentum"], ckpt["round"] + 1
    initial_loss = evaluate(task, global_state, "train")[0]
    history, step_losses, recovered, devices = [], [], [], set()
    traffic, samples, checkpoint, run_key = 0, 0, resume_from, uuid.uuid4().hex[:8]
    n_rounds = -(-steps // sync_every)
    for rnd in range(first_round, n_rounds):
        n_steps = min(sync_every, steps - rnd * sync_every)
        model_bytes = state_to_bytes(global_state)
        addrs, outs = _round(client, model_bytes, task, rnd=rnd, first_step=rnd * sync_every,
                             n_steps=n_steps, workers=workers, key=run_key, progress=progress,
                             batch_size=batch_size, lr=lr)
        traffic += len(model_bytes) * len(addrs) + sum(len(o["state"]) for o in outs)
        if any(o["worker"] != a for o, a in zip(outs, addrs)):
            recovered.append(rnd)  # a replica ran somewhere else: its worker was lost
        devices.update(o["device"] for o in outs)
        averaged = average_states([bytes_to_state(o["state"]) for o in outs])
        global_state, momentum = outer_step(global_state, averaged, momentum, kind=outer,
                                            lr=outer_lr, mu=outer_momentum)
        checkpoint = state_to_bytes({"model": global_state, "momentum": momentum, "round": rnd})
        if checkpoint_name:
            leave_checkpoint(client, checkpoint_name, rnd, checkpoint)
        per_step = torch.tensor([o["losses"] for o in outs]).mean(0).tolist()
        step_losses += per_step
        samples += n_steps * batch_size * len(addrs)
        test_loss, acc = evaluate(task, global_state)
        row = {"round": rnd, "samples_seen": samples, "workers": len(addrs),
               "train_loss": sum(per_step) / len(per_step), "test_loss": test_loss,
               "accuracy": acc, "bytes": traffic, "seconds": time.perf_counter() - started}
        history.append(row)
        if on_round is not None:
            on_round(row)
    final_loss, accuracy = evaluate(task, global_state)
    return FinetuneResult(history=history, step_losses=step_losses, initial_loss=initial_loss,
                          final_loss=final_loss, accuracy=accuracy, bytes_communicated=traffic,
                          wall_seconds=time.perf_counter() - started, sync_every=sync_every,
                          samples_seen=samples, checkpoint=checkpoint, recovered_rounds=recovered,
                          devices=sorted(devices))


def train_single_process(task: SyntheticTask | None = None, *, steps: int = 1024,
                         batch_size: int = 64, lr: float = 0.1,
                         max_memory_bytes: int | None = None) -> FinetuneResult:
    """The same SGD in this process, one replica, no averaging: the baseline to compare with.

    Use ``steps = finetune_steps * n_workers`` to match the samples a cluster run sees.
    """
    task = task or SyntheticTask()
    _validate(None, task, steps=steps, sync_every=1, batch_size=batch_size, lr=lr,
              outer="average", max_memory_bytes=max_memory_bytes, workers=None)
    started = time.perf_counter()
    state = task.build_model().state_dict()
    initial_loss = evaluate(task, state, "train")[0]
    out = local_steps(state_to_bytes(state), task, first_step=0, n_steps=steps, rank=0, world=1,
                      batch_size=batch_size, lr=lr)
    state = bytes_to_state(out["state"])
    loss, acc = evaluate(task, state)
    row = {"round": 0, "samples_seen": steps * batch_size, "workers": 1,
           "train_loss": sum(out["losses"]) / steps, "test_loss": loss, "accuracy": acc,
           "bytes": 0, "seconds": time.perf_counter() - started}
    return FinetuneResult(history=[row], step_losses=out["losses"], initial_loss=initial_loss,
                          final_loss=loss, accuracy=acc, bytes_communicated=0,
                          wall_seconds=row["seconds"], sync_every=steps,
                          samples_seen=row["samples_seen"],
                          checkpoint=state_to_bytes({"model": state, "momentum": None, "round": 0}),
                          devices=[out["device"]])


__all__ = [
    "FinetuneResult",
    "SyntheticTask",
    "average_states",
    "batch_indices",
    "evaluate",
    "finetune",
    "local_steps",
    "outer_step",
    "train_single_process",
]
