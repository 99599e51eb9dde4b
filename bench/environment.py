"""What environment sync costs a lease at start: checking, building and reusing a package set's venv,
and starting workers in it rather than in the provider's own process.

    .venv/bin/python bench/environment.py [--runs 3] [--gpus 2]

A tiny local wheel is built into a find-links directory (no network). Per run, in
a fresh cache: ``check`` (pip dry run against the index), ``prepare`` cold (venv
plus pip install) and warm (cache hit). Then a 2-GPU ``LeaseRuntime`` over mutual
TLS starts with thread workers in this process and with worker processes of the
built venv; each time to the first task result. Prints a table, then one line
of JSON (seconds, medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distributed import Client

from jupyter_gpumarket.cluster.environment import EnvironmentBuilder, PackageSet
from jupyter_gpumarket.cluster.runtime import GpuProfile, LeaseRuntime
from jupyter_gpumarket.cluster.tls import ProviderKey, TenantCA

H100 = GpuProfile("NVIDIA H100 80GB HBM3", 80, 989.0, simulated=True)
HOSTS = ["127.0.0.1", "localhost"]


def wheel_dir(root: Path) -> Path:
    src = root / "src" / "gmbenchpkg"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text('__version__ = "0.1"\n')
    (src.parent / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "gmbenchpkg"\nversion = "0.1"\n')
    out = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "--no-deps",
                    "--no-index", "-w", str(out), str(src.parent)], check=True)
    return out


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def first_result(ca: TenantCA, gpus: int, python: str | None, workdir: str) -> float:
    key = ProviderKey.generate()
    security = key.security(ca.cert_pem, ca.sign_provider(key.csr(HOSTS), key.fingerprint, HOSTS),
                            expected_ca_fingerprint=ca.fingerprint)
    t0 = time.perf_counter()
    with LeaseRuntime(1, security, H100, gpus=gpus, python=python) as runtime:
        with Client(runtime.scheduler_address, security=ca.client_security(workdir)) as client:
            client.submit(lambda: 1 + 1).result()
            elapsed = time.perf_counter() - t0
            client.get_versions(check=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gpus", type=int, default=2)
    args = parser.parse_args()
    packages = PackageSet.parse(["gmbenchpkg==0.1"])
    rows = {"check_s": [], "build_cold_s": [], "build_warm_s": [], "start_threads_s": [], "start_venv_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        links = wheel_dir(Path(tmp))
        ca = TenantCA.create()
        for run in range(args.runs):
            builder = EnvironmentBuilder(Path(tmp) / f"cache-{run}", find_links=(str(links),), no_index=True)
            rows["check_s"].append(timed(lambda: builder.check(packages))[0])
            seconds, env = timed(lambda: builder.prepare(packages))
            rows["build_cold_s"].append(seconds)
            rows["build_warm_s"].append(timed(lambda: builder.prepare(packages))[0])
            rows["start_threads_s"].append(first_result(ca, args.gpus, None, tmp))
            rows["start_venv_s"].append(first_result(ca, args.gpus, env.python, tmp))
    summary = {name: round(statistics.median(values), 3) for name, values in rows.items()}
    for name, values in rows.items():
        print(f"{name:<16} " + "  ".join(f"{v:6.2f}" for v in values) + f"   median {summary[name]:.2f}")
    print(json.dumps({"bench": "environment", "runs": args.runs, "gpus": args.gpus, **summary}))


if __name__ == "__main__":
    main()
