"""Benchmark: communication and time vs final loss when averaging every H steps.

    python bench/finetune.py                  # H in 1 8 64, 512 local steps per worker
    python bench/finetune.py --steps 128      # quick run

Every run sees the same samples (same steps per worker, same batch); only how
often the replicas are averaged changes. An "epoch" is one pass over the
task's training set. Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from distributed import Client, LocalCluster  # noqa: E402

from workflows.finetune import SyntheticTask, finetune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=512, help="local steps per worker")
    parser.add_argument("--sync-every", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--outer", default="average", choices=["average", "nesterov"])
    args = parser.parse_args()

    task = SyntheticTask()
    results = {}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as cluster, Client(cluster) as client:
        finetune(client, task, steps=2, sync_every=1)  # imports and data on workers, untimed
        print(f"{'H':>4} {'rounds':>6} {'epochs':>6} {'MB sent':>9} {'MB/epoch':>9} "
              f"{'s/epoch':>8} {'final loss':>10} {'accuracy':>8}")
        for h in args.sync_every:
            r = finetune(client, task, steps=args.steps, sync_every=h, outer=args.outer)
            epochs = r.samples_seen / task.n_train
            results[h] = r
            print(f"{h:>4} {len(r.history):>6} {epochs:>6.2f} {r.bytes_communicated / 1e6:>9.2f} "
                  f"{r.bytes_communicated / 1e6 / epochs:>9.2f} {r.wall_seconds / epochs:>8.2f} "
                  f"{r.final_loss:>10.4f} {r.accuracy:>8.4f}", flush=True)
    figures: dict[str, float] = {}
    for h, r in results.items():
        epochs = r.samples_seen / task.n_train
        figures[f"h{h}_bytes_per_epoch"] = round(r.bytes_communicated / epochs)
        figures[f"h{h}_seconds_per_epoch"] = round(r.wall_seconds / epochs, 3)
        figures[f"h{h}_final_loss"] = round(r.final_loss, 5)
    lo, hi = min(results), max(results)
    figures[f"comm_ratio_h{hi}_vs_h{lo}"] = round(
        results[lo].bytes_communicated / results[hi].bytes_communicated, 2)
    figures[f"loss_h{hi}_vs_h{lo}"] = round(results[hi].final_loss / results[lo].final_loss, 4)
    figures.update(steps_per_worker=args.steps, workers=args.workers, outer=args.outer)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
