"""Spot checks: re-run a sampled fraction of a graph's tasks locally, and dispute what does not match.

:class:`SpotChecker` computes a Dask collection on the leased cluster and
samples each of its tasks with probability ``rate`` (a seeded RNG, so a check
can be replayed). The sampled tasks and their inputs are fetched with the
outputs, in the same ``client.get``; each sampled task is then run again here,
from the inputs the cluster delivered, and its result compared with the
delivered one by :func:`~.compare.results_match` (exact for integers, bytes and
strings, ``rtol``/``atol`` for floats). Re-running one task from its delivered
inputs checks exactly that task, as Verde's bisection ends with the arbiter
re-running one step (DESIGN.md, "Disputes"); a wrong input was itself produced
by a task that is sampled with the same probability. A job whose provider is
wrong on ``k`` tasks is caught with probability ``1 - (1 - rate)**k``
(:func:`~.sampling.detection_probability`).

A mismatch becomes :class:`Evidence`: the provider's signed execution receipt
that covers the task (with the per-task hashes it signed), the task's key, the
delivered result's hash as signed, the recomputed result's hash and the hashes
of the inputs. Its hash (keccak of a canonical encoding, :meth:`Evidence.hash`)
goes on chain with ``openDispute``; the arbiter (:mod:`.arbiter`) checks it and
resolves. Running tasks here runs the graph's functions in the tenant's
process, as ``dask.compute`` with the local scheduler would.

>>> from jupyter_gpumarket.verify.spotcheck import SpotChecker
>>> checker = SpotChecker(rate=0.5, seed=3)
>>> sorted(checker.sample([("t", i) for i in range(8)]))
[('t', 0), ('t', 2), ('t', 5), ('t', 6)]
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from numbers import Real

from dask._task_spec import Task, convert_legacy_graph
from eth_hash.auto import keccak

from ..errors import InvalidRequest
from .compare import results_match
from .hashing import encode_key, hash_result
from .receipts import SignedReceipt
from .runtime_receipts import ReceiptCollector, TaskReceipt

__all__ = ["Evidence", "Mismatch", "SpotCheckReport", "SpotChecker", "dispute_mismatches", "open_dispute"]

_EVIDENCE_PREFIX = b"GpuMarket/evidence/v1"


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


@dataclass(frozen=True)
class Evidence:
    """What a tenant shows the arbiter: one task whose delivered result is not what its inputs give."""

    lease_id: int
    receipt: SignedReceipt
    items: tuple[tuple[object, bytes], ...]  # every (key, result hash) the receipt signs
    key: object
    delivered_hash: bytes  # as the provider signed it
    recomputed_hash: bytes
    input_hashes: tuple[tuple[object, bytes], ...]

    def to_json(self) -> dict:
        """Canonical JSON (keys by their canonical encoding, in hex), the input of :meth:`hash`."""
        return {
            "lease_id": self.lease_id,
            "receipt": self.receipt.to_json(),
            "items": sorted([encode_key(k).hex(), _hex(h)] for k, h in self.items),
            "key": encode_key(self.key).hex(),
            "delivered_hash": _hex(self.delivered_hash),
            "recomputed_hash": _hex(self.recomputed_hash),
            "inputs": sorted([encode_key(k).hex(), _hex(h)] for k, h in self.input_hashes),
        }

    def hash(self) -> bytes:
        """keccak-256 of the canonical JSON (sorted keys, no spaces): what ``openDispute`` records."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return keccak(_EVIDENCE_PREFIX + text.encode())


@dataclass(frozen=True)
class Mismatch:
    """A sampled task whose recomputation disagreed with what the cluster delivered."""

    key: object
    delivered: object
    recomputed: object
    inputs: dict
    task: Task
    evidence: Evidence | None  # None when no receipt covers the task (nothing to dispute with)
    reason: str


@dataclass
class SpotCheckReport:
    """Outcome of one checked computation."""

    tasks: int = 0  # executable tasks in the graph
    sampled: int = 0
    checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    unreceipted: int = 0  # sampled tasks no receipt covered
    unchecked: list[str] = field(default_factory=list)  # sampled tasks that could not run here, and why
    extra_seconds: float = 0.0  # the tenant's wall time re-running sampled tasks (as Dask times tasks)

    @property
    def passed(self) -> bool:
        return not self.mismatches


class SpotChecker:
    """Re-run a fraction ``rate`` of tasks locally and compare (see the module docstring)."""

    def __init__(self, rate: float, seed: int | None = None, rtol: float = 1e-6, atol: float = 1e-9) -> None:
        if isinstance(rate, bool) or not isinstance(rate, Real) or not 0 < rate <= 1 or not math.isfinite(rate):
            raise InvalidRequest(f"spot-check rate must be a fraction in (0, 1], e.g. 0.05; got {rate!r}")
        self.rate = float(rate)
        self.rng = random.Random(seed)
        self.rtol, self.atol = rtol, atol
        self.reports: list[SpotCheckReport] = []
        self.disputes: list[tuple[Mismatch, object]] = []  # (mismatch, openDispute tx), filled by the tenant

    def summary(self) -> str:
        """One line for people: what was re-run, what matched, which disputes were opened."""
        tasks = sum(r.tasks for r in self.reports)
        checked = sum(r.checked for r in self.reports)
        wrong = sum(len(r.mismatches) for r in self.reports)
        line = f"spot checks: {checked} of {tasks} tasks re-run here at rate {self.rate:g}, "
        if not wrong:
            return line + "all matched"
        opened = ", ".join(f"lease {m.evidence.lease_id} (tx {tx.hash})" for m, tx in self.disputes)
        return line + f"{wrong} did not match" + (f"; dispute opened on {opened}" if opened else "")

    def sample(self, keys) -> list:
        """Each key with probability ``rate`` (in the canonical order of the keys, so a seed replays)."""
        ordered = sorted(keys, key=encode_key)
        return [k for k in ordered if self.rng.random() < self.rate]

    def check(self, graph: dict, values: dict, sampled, collector: ReceiptCollector | None = None) -> SpotCheckReport:
        """Re-run ``sampled`` tasks of ``graph`` (key -> GraphNode) from the delivered ``values``."""
        import time

        report = SpotCheckReport(tasks=sum(isinstance(n, Task) for n in graph.values()), sampled=len(sampled))
        t0 = time.perf_counter()
        for key in sampled:
            task = graph[key]
            inputs = {d: values[d] for d in task.dependencies}
            try:
                recomputed = task(inputs)
            except Exception as exc:  # e.g. needs something only the workers have: not the provider's fault
                report.unchecked.append(f"{key!r}: {type(exc).__name__}")
                continue
            report.checked += 1
            delivered = values[key]
            covered = collector.covering(key) if collector is not None else None
            if covered is None:
                report.unreceipted += 1
            if results_match(delivered, recomputed, self.rtol, self.atol):
                continue
            report.mismatches.append(self._mismatch(key, task, inputs, delivered, recomputed, covered))
        report.extra_seconds = time.perf_counter() - t0
        return report

    def _mismatch(self, key, task, inputs, delivered, recomputed, covered: TaskReceipt | None) -> Mismatch:
        evidence = None
        reason = "result differs from the tenant's recomputation"
        if covered is not None:
            if hash_result(delivered) != covered.result_hash:
                reason += "; the delivered result is not the one the provider signed"
            evidence = Evidence(
                covered.lease_id, covered.signed, covered.items, key, covered.result_hash, hash_result(recomputed),
                tuple((k, hash_result(v)) for k, v in sorted(inputs.items(), key=lambda kv: encode_key(kv[0]))),
            )
        return Mismatch(key, delivered, recomputed, inputs, task, evidence, reason)

    def get(self, client, dsk, keys, collector: ReceiptCollector | None = None,
            workers_by_lease: dict[int, list[str]] | None = None, **kwargs):
        """A Dask ``get``: compute ``keys`` of ``dsk`` on ``client``'s cluster, spot-checking it.

        The report goes to :attr:`reports`. ``collector`` and ``workers_by_lease`` (lease id
        -> worker addresses) let the check fetch the providers' receipts for evidence;
        without them mismatches are found but cannot be disputed.
        """
        if hasattr(dsk, "__dask_graph__"):  # dask.compute hands a scheduler a graph expression
            dsk = dsk.__dask_graph__()
        graph = convert_legacy_graph(dict(dsk))
        executable = [k for k, node in graph.items() if isinstance(node, Task)]
        sampled = self.sample(executable)
        extra = list(dict.fromkeys([*sampled, *(d for k in sampled for d in graph[k].dependencies)]))
        outputs, fetched = client.get(graph, [keys, extra])
        values = dict(zip(extra, fetched))
        if collector is not None and workers_by_lease:
            collector.collect(client, workers_by_lease)
        self.reports.append(self.check(graph, values, sampled, collector))
        return outputs

    def compute(self, client, collection, collector: ReceiptCollector | None = None,
                workers_by_lease: dict[int, list[str]] | None = None):
        """``(result, report)`` for one Dask collection (see :meth:`get`)."""
        outputs = self.get(client, collection.__dask_graph__(), collection.__dask_keys__(), collector,
                           workers_by_lease)
        finalize, args = collection.__dask_postcompute__()
        return finalize(outputs, *args), self.reports[-1]


def open_dispute(market_client, evidence: Evidence):
    """Tenant opens a dispute on chain over ``evidence``; returns the transaction."""
    return market_client.open_dispute(evidence.lease_id, evidence.hash())


def dispute_mismatches(market_client, report: SpotCheckReport) -> list[tuple[Mismatch, object]]:
    """Open one dispute per lease caught (the contract holds one open dispute per lease).

    Returns ``(mismatch, transaction)`` pairs; the mismatch carries what the arbiter needs.
    """
    opened, disputed = [], set()
    for mismatch in report.mismatches:
        evidence = mismatch.evidence
        if evidence is None or evidence.lease_id in disputed:
            continue
        disputed.add(evidence.lease_id)
        opened.append((mismatch, open_dispute(market_client, evidence)))
    return opened
