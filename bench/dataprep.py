"""Benchmark: dataprep rows/s on a 2-worker LocalCluster vs single-process pandas.

    python bench/dataprep.py                 # 1e6 and 1e7 rows
    python bench/dataprep.py --rows 200000   # quick run

Both sides run the full pipeline from Parquet files on disk to partitioned
Parquet output. Cluster start-up and a warm-up run are not timed; each figure
is the best of ``--repeat`` runs, because a shared 2-core host is noisy.

Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which
returns freed memory to the OS eagerly and makes pandas-heavy tasks about 1.5x
slower; the benchmark gives workers a 128 MiB threshold (``--malloc-trim 0``
keeps Dask's default). Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from workflows._data import write_trips  # noqa: E402
from workflows.dataprep import reference_pipeline, run_dataprep  # noqa: E402


def label(rows: int) -> str:
    """1000000 -> '1e6'; other sizes verbatim."""
    exp = len(str(rows)) - 1
    return f"1e{exp}" if rows == 10**exp else str(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows-per-file", type=int, default=250_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--malloc-trim", type=int, default=128 * 2**20,
                        help="MALLOC_TRIM_THRESHOLD_ for the workers; 0 keeps Dask's default")
    args = parser.parse_args()
    if args.malloc_trim:
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
                         str(args.malloc_trim)})

    def best(run) -> float:
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return min(times)

    figures: dict[str, float] = {}
    lines = [f"{'rows':>10} {'files':>6} {'pandas s':>9} {'dask s':>8} "
             f"{'pandas rows/s':>14} {'dask rows/s':>12} {'ratio':>6}"]
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                         dashboard_address=":0", silence_logs=40) as cluster, \
            Client(cluster) as client:
        root = Path(tmp)
        warm = write_trips(root / "warm", 20_000, n_files=2)
        report = run_dataprep(client, warm, root / "warm-out")  # imports and connections, untimed
        figures["backend"] = report.backend
        for rows in (int(r) for r in args.rows):
            files = max(2 * args.workers, -(-rows // args.rows_per_file))
            src = write_trips(root / f"trips-{rows}", rows, n_files=files)
            pandas_s = best(lambda: reference_pipeline(src, output=root / f"ref-{rows}-{time.time()}"))
            dask_s = best(lambda: run_dataprep(client, src, root / f"out-{rows}-{time.time()}"))
            name = label(rows)
            figures[f"rows_{name}_pandas_rows_per_s"] = round(rows / pandas_s)
            figures[f"rows_{name}_dask_rows_per_s"] = round(rows / dask_s)
            figures[f"ratio_{name}"] = round(pandas_s / dask_s, 3)
            lines.append(f"{rows:>10} {files:>6} {pandas_s:>9.2f} {dask_s:>8.2f} "
                         f"{rows / pandas_s:>14,.0f} {rows / dask_s:>12,.0f} "
                         f"{pandas_s / dask_s:>6.2f}")
            print(lines[-1] if len(lines) > 2 else "\n".join(lines), flush=True)
    figures.update(workers=args.workers, threads_per_worker=1, cpus=os.cpu_count(),
                   repeat=args.repeat, malloc_trim_threshold=args.malloc_trim or 65536,
                   load_average_1min=round(os.getloadavg()[0], 2))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
