"""Spot checks and runtime-signed receipts on a real Dask LocalCluster (no chain), and the sampling math."""

from __future__ import annotations

import math

import dask
import pytest
from distributed import Client, LocalCluster

from jupyter_gpumarket.chain.accounts import Signer
from jupyter_gpumarket.errors import InvalidRequest
from jupyter_gpumarket.verify.challenge import SimulatedBehaviour
from jupyter_gpumarket.verify.heartbeat import HeartbeatDomain
from jupyter_gpumarket.verify.runtime_receipts import RECEIPT_PLUGIN, ReceiptCollector, ReceiptPlugin, fetch_receipts
from jupyter_gpumarket.verify.sampling import detection_probability
from jupyter_gpumarket.verify.spotcheck import SpotChecker

PROVIDER = Signer.from_key("0x" + "22" * 32)
STRANGER = Signer.from_key("0x" + "33" * 32)
DOMAIN = HeartbeatDomain(chain_id=31337, market="0x" + "11" * 20)
LEASE = 7

inc = lambda x: x + 1  # noqa: E731  (lambdas travel by value to the workers)
square = lambda x: x * x  # noqa: E731


def job(n: int):
    """``n`` independent deterministic tasks, then a sum: ``n + 1`` executable tasks."""
    parts = [dask.delayed(square, pure=True)(dask.delayed(inc, pure=True)(i)) for i in range(n)]
    return dask.delayed(sum, pure=True)(parts)


@pytest.fixture
def cluster_with(request):
    """A LocalCluster whose in-process workers carry a ReceiptPlugin (and optionally a behaviour)."""
    clusters = []

    def make(behaviour=None, batch_size=16):
        plugin = ReceiptPlugin(LEASE, PROVIDER, DOMAIN, batch_size=batch_size)
        plugins = {plugin} | ({behaviour} if behaviour else set())
        cluster = LocalCluster(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None,
                               plugins=plugins)
        client = Client(cluster)
        clusters.append((client, cluster))
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        return client, plugin, workers

    yield make
    for client, cluster in clusters:
        client.close()
        cluster.close()


def collector() -> ReceiptCollector:
    c = ReceiptCollector(DOMAIN)
    c.add_lease(LEASE, PROVIDER.address)
    return c


def test_statistical_detection_rate_matches_sampling_math():
    """Provider wrong on k of n tasks, each task checked with probability p: caught in 1 - (1-p)^k of jobs."""
    n, k, p, trials = 40, 3, 0.1, 600
    graph = dict(job(n).__dask_graph__())
    from dask._task_spec import Task, convert_legacy_graph

    graph = convert_legacy_graph(graph)
    honest = dask.get(graph, list(graph))  # every task's true value
    values = dict(zip(graph, honest))
    squares = sorted(key for key, node in graph.items() if isinstance(node, Task) and node.func is square)
    assert len(squares) == n
    wrong = dict(values)
    for key in squares[:k]:
        wrong[key] = values[key] + 1  # off by one, exactly: ints compare exactly
    (total,) = [key for key, node in graph.items() if isinstance(node, Task) and node.func is sum]
    wrong[total] = graph[total]({d: wrong[d] for d in graph[total].dependencies})  # honest sum of wrong parts
    checker = SpotChecker(rate=p, seed=2026)
    caught = 0
    for _ in range(trials):
        executable = [key for key, node in graph.items() if isinstance(node, Task)]
        report = checker.check(graph, wrong, checker.sample(executable))
        caught += bool(report.mismatches)
        assert {m.key for m in report.mismatches} <= set(squares[:k])  # never a false accusation
    expected = detection_probability(p, k)  # 0.271
    bound = 3.29 * math.sqrt(expected * (1 - expected) / trials)  # 99.9 % two-sided binomial band
    assert abs(caught / trials - expected) <= bound, (caught / trials, expected, bound)
    # and an honest job is never flagged, whatever is sampled
    for _ in range(50):
        assert checker.check(graph, values, checker.sample(list(graph))).passed


def test_honest_runtime_receipts_verify_and_spot_checks_pass(cluster_with):
    client, plugin, workers = cluster_with(batch_size=16)
    books = collector()
    checker = SpotChecker(rate=0.3, seed=1)
    for _ in range(3):  # repeated runs: no false positive
        result, report = checker.compute(client, job(60), books, {LEASE: workers})
        assert result == sum((i + 1) ** 2 for i in range(60))
        assert report.passed and report.checked == report.sampled > 0 and report.unreceipted == 0
    book = books.books[LEASE]
    assert len(book) >= 3 and not books.refused
    seqs = [s.receipt.seq for s in book.receipts]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(s.signer(DOMAIN) == PROVIDER.address for s in book.receipts)
    # The provider's root over the same receipts is the tenant's root: what it posts on chain.
    root, count = plugin.merkle_root()
    assert (root, count) == (book.merkle_root(), len(book))


def test_wrong_results_are_caught_with_signed_evidence(cluster_with):
    client, plugin, workers = cluster_with(behaviour=SimulatedBehaviour(wrong_tasks=0.3))
    books = collector()
    checker = SpotChecker(rate=0.5, seed=5)
    result, report = checker.compute(client, job(40), books, {LEASE: workers})
    assert result != sum((i + 1) ** 2 for i in range(40))  # the cheater's answer
    assert report.mismatches
    for m in report.mismatches:
        assert m.recomputed == m.task(m.inputs) and m.delivered == m.recomputed + 1
        ev = m.evidence
        assert ev is not None and ev.lease_id == LEASE
        assert ev.receipt.signer(DOMAIN) == PROVIDER.address  # the cheater signed its wrong result
        assert dict(ev.items)[m.key] == ev.delivered_hash != ev.recomputed_hash
        assert len(ev.hash()) == 32 and ev.hash() == ev.hash()


def test_forged_replayed_and_cross_lease_runtime_receipts_are_refused(cluster_with):
    client, plugin, workers = cluster_with(batch_size=4)
    client.gather(client.map(square, range(12)))
    records = client.run(fetch_receipts, lease_id=LEASE, after=0, workers=workers[:1])[workers[0]]
    assert len(records) >= 3
    books = collector()
    assert books.accept(LEASE, records[0]) is not None
    # replay of an accepted receipt
    assert books.accept(LEASE, records[0]) is None and "replays" in books.refused[-1]
    # forged: same content signed by someone else
    from jupyter_gpumarket.verify.receipts import SignedReceipt

    genuine = SignedReceipt.from_json(records[1]["receipt"])
    forged = dict(records[1], receipt=genuine.receipt.sign(STRANGER, DOMAIN).to_json())
    assert books.accept(LEASE, forged) is None and "not its provider" in books.refused[-1]
    # tampered list: the items do not fold into the signed hashes
    items = list(records[1]["items"])
    items[0] = (items[0][0], "0x" + "00" * 32)
    assert books.accept(LEASE, dict(records[1], items=items)) is None and "other results" in books.refused[-1]
    # a receipt of this provider for another lease is not accepted for this one
    other = collector()
    other.books.clear()
    other.add_lease(LEASE + 1, PROVIDER.address)
    assert other.accept(LEASE + 1, records[1]) is None and "not 8" in other.refused[-1]
    # the genuine one still goes in after all that
    assert books.accept(LEASE, records[1]) is not None
    assert [s.receipt.seq for s in books.books[LEASE].receipts] == [1, 2]
    # a receipt plugin refuses to be pickled (the key stays in the provider's process)
    with pytest.raises(TypeError, match="provider's key"):
        import pickle

        pickle.dumps(client.run(lambda dask_worker: dask_worker.plugins[RECEIPT_PLUGIN], workers=workers[:1]))


def on_a_worker(x):
    from distributed import get_worker

    get_worker()  # raises outside a worker: this task cannot be re-run by the tenant
    return x


def test_tasks_that_cannot_run_here_are_reported_unchecked_not_disputed(cluster_with):
    client, _, workers = cluster_with()
    checker = SpotChecker(rate=1.0, seed=0)
    parts = [dask.delayed(on_a_worker, pure=True)(i) for i in range(4)]
    result, report = checker.compute(client, dask.delayed(sum, pure=True)(parts), collector(), {LEASE: workers})
    assert result == 6 and report.passed
    assert len(report.unchecked) == 4 and all("ValueError" in u for u in report.unchecked)
    assert report.checked == 1  # the sum


def test_bad_rates_are_refused():
    for rate in (0, -0.1, 1.5, float("nan"), True, "0.05"):
        with pytest.raises(InvalidRequest, match="spot-check rate"):
            SpotChecker(rate)


def test_simulated_behaviour_travels_as_configuration_only(cluster_with):
    import pickle

    behaviour = SimulatedBehaviour(throughput=0.5, wrong_tasks=0.3)
    client, _, _ = cluster_with(behaviour=behaviour)  # set up on two in-process workers
    assert len(behaviour._workers) == 2
    copy = pickle.loads(pickle.dumps(behaviour))  # as a runtime sends it to worker processes
    assert (copy.throughput, copy.wrong_tasks, copy._workers) == (0.5, 0.3, [])
    with pytest.raises(InvalidRequest, match="wrong_tasks must be in"):
        SimulatedBehaviour(wrong_tasks=1.5)
