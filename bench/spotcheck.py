"""Spot-check overhead at a 5 % sampling rate, on a mixed task graph with runtime-signed receipts.

    .venv/bin/python bench/spotcheck.py [--rate 0.05] [--runs 3] [--tasks 96]

A real ``distributed.LocalCluster`` (two single-thread workers, in-process like a
provider agent's) whose workers sign execution receipts (``ReceiptPlugin``) runs a
graph of three task kinds: float linear algebra (a seeded 200x200 SVD), pandas
group-bys over 40k rows and integer reductions, then one sum. Each run computes
the same graph twice: plainly (``client.get``) and through ``SpotChecker`` with the
tenant collecting and checking receipts. Figures:

- ``extra_compute``: the tenant's seconds re-running sampled tasks over the
  cluster's task compute seconds (Dask's task stream), both wall time under the
  same load: the cost the goal bounds (<= 5 % at a 5 % rate).
- ``wall_overhead``: (checked - plain) / plain wall time, which also counts fetching
  the sampled tasks' inputs and outputs and the receipts (noisy on a shared box).

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import dask
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster

from jupyter_gpumarket.chain.accounts import Signer
from jupyter_gpumarket.verify.heartbeat import HeartbeatDomain
from jupyter_gpumarket.verify.runtime_receipts import ReceiptCollector, ReceiptPlugin
from jupyter_gpumarket.verify.spotcheck import SpotChecker

DOMAIN = HeartbeatDomain(chain_id=31337, market="0x" + "11" * 20)
LEASE = 1


def svd_norm(seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((200, 200))
    return np.linalg.svd(a, compute_uv=False)


def groupby_means(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"zone": rng.integers(0, 50, 40_000), "fare": rng.gamma(2.0, 10.0, 40_000)})
    return df.groupby("zone").fare.agg(["mean", "sum", "count"])


def int_sum(seed: int) -> int:
    return sum(i * i % 7919 for i in range(seed * 1000, seed * 1000 + 60_000))


def combine(*parts) -> float:
    total = 0.0
    for p in parts:
        total += float(np.asarray(p.to_numpy() if hasattr(p, "to_numpy") else p, dtype=float).sum())
    return total


def graph(tasks: int):
    kinds = (svd_norm, groupby_means, int_sum)
    parts = [dask.delayed(kinds[i % 3], pure=True)(i) for i in range(tasks)]
    return dask.delayed(combine, pure=True)(*parts)


def compute_seconds(client, since: float) -> float:
    stream = client.get_task_stream(start=since)
    return sum(s["stop"] - s["start"] for t in stream for s in t["startstops"] if s["action"] == "compute")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=96)
    args = parser.parse_args()
    signer = Signer.from_key("0x" + "22" * 32)
    plugin = ReceiptPlugin(LEASE, signer, DOMAIN)
    rows = []
    with LocalCluster(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None,
                      plugins={plugin}) as cluster, Client(cluster) as client:
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        collector = ReceiptCollector(DOMAIN)
        collector.add_lease(LEASE, signer.address)
        checker = SpotChecker(args.rate, seed=7)
        client.get(dict(graph(args.tasks).__dask_graph__()), graph(args.tasks).key)  # warm-up
        for run in range(args.runs):
            job = graph(args.tasks + run)  # a fresh graph each run: nothing cached on the workers
            dsk = dict(job.__dask_graph__())
            t0 = time.time()
            w0 = time.perf_counter()
            plain = client.get(dsk, job.key)
            plain_wall = time.perf_counter() - w0
            plain_compute = compute_seconds(client, t0)
            client.cancel(list(dsk), force=True)
            t1 = time.time()
            w1 = time.perf_counter()
            checked = checker.get(client, dsk, job.key, collector, {LEASE: workers})
            checked_wall = time.perf_counter() - w1
            checked_compute = compute_seconds(client, t1)
            report = checker.reports[-1]
            assert report.passed and abs(checked - plain) <= 1e-9 * abs(plain)
            rows.append({
                "run": run + 1,
                "tasks": report.tasks,
                "sampled": report.sampled,
                "compute_s": checked_compute,
                "extra_s": report.extra_seconds,
                "extra_compute": report.extra_seconds / checked_compute,
                "wall_plain_s": plain_wall,
                "wall_checked_s": checked_wall,
                "wall_overhead": (checked_wall - plain_wall) / plain_wall,
                "plain_compute_s": plain_compute,
            })
        receipts = len(collector.books[LEASE])
    print(f"{'run':>4}{'tasks':>7}{'sampled':>9}{'compute s':>11}{'extra s':>9}{'extra':>8}{'wall':>8}{'wall+':>8}")
    for r in rows:
        print(f"{r['run']:>4}{r['tasks']:>7}{r['sampled']:>9}{r['compute_s']:>11.2f}{r['extra_s']:>9.3f}"
              f"{r['extra_compute']:>8.1%}{r['wall_plain_s']:>8.2f}{r['wall_overhead']:>8.1%}")
    print(json.dumps({
        "rate": args.rate,
        "tasks": rows[0]["tasks"],
        "sampled_mean": statistics.mean(r["sampled"] for r in rows),
        "extra_compute": round(statistics.median(r["extra_compute"] for r in rows), 4),
        "wall_overhead": round(statistics.median(r["wall_overhead"] for r in rows), 4),
        "receipts_checked": receipts,
        "goal_extra_compute": 0.05,
    }))


if __name__ == "__main__":
    main()
