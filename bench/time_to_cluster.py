"""Seconds from ``LeasedCluster(...)`` to the first task result, on a devnet with three agents.

    .venv/bin/python bench/time_to_cluster.py [--window 2] [--runs 3]

Split into the bidding window, chain transactions (order, accept, close-order
refund) and worker start-up (TLS handover, scheduler and workers). Goal: at most
2 s beyond the bidding window. Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from distributed import Client

from jupyter_gpumarket.chain import Devnet, DevnetParams
from jupyter_gpumarket.cluster.leased import LeasedCluster


def one_run(net: Devnet, window: int) -> dict[str, float]:
    tenant = net.client("tenant")
    t0 = time.monotonic()
    cluster = LeasedCluster(gpus=2, gpu="H100|A100|4090", max_price="3.00", hours=1, budget="10",
                            market=tenant, window=window)
    up = time.monotonic()
    with Client(cluster) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
        first = time.monotonic()
    cluster.close()
    timing = cluster.leaser.timings[0]
    total = first - t0
    return {
        "total_s": total,
        "bidding_window_s": timing["bidding_window_s"],
        "chain_s": timing["chain_s"],
        "worker_startup_s": timing["worker_startup_s"],
        "client_and_first_task_s": first - up,
        "beyond_window_s": total - window,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state, Devnet.up(state_dir=state, params=DevnetParams(providers=3)) as net:
        net.start_agents()
        net.wait_for_providers(3)
        runs = [one_run(net, args.window) for _ in range(args.runs)]
    keys = list(runs[0])
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    print(f"{'phase':<26}" + "".join(f"{'run ' + str(i + 1):>11}" for i in range(len(runs))) + f"{'median':>10}")
    for k in keys:
        print(f"{k:<26}" + "".join(f"{r[k]:>11.2f}" for r in runs) + f"{median[k]:>10.2f}")
    print(json.dumps({"window_s": args.window, **{f"median_{k}": round(v, 3) for k, v in median.items()}}))


if __name__ == "__main__":
    main()
