"""What the JupyterLab sidebar waits for: the server extension's REST API, end to end.

    .venv/bin/python bench/server_api.py [--polls 20] [--window 2]

Starts a devnet with three provider agents and a real ``jupyter server``
process with the extension (configured as a kernel would be, through
``DASK_GPUMARKET__*``), then times over HTTP with the server's token: the first
request (connect), each GET the sidebar polls (median of ``--polls``) with no
lease and with one live lease, renting one GPU (POST, bidding window included)
and releasing it. Prints a table, then one line of JSON (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from jupyter_gpumarket.chain import Devnet, DevnetParams
from jupyter_gpumarket.chain.devnet import free_port

POLLED = ["wallet", "offers", "leases", "history", "budget", "classroom"]


class Api:
    """Authenticated JSON requests to one Jupyter server's /gpumarket/ routes."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def __call__(self, path: str, method: str = "GET", body: dict | None = None) -> tuple[float, dict]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/gpumarket/{path}", data=data, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
        return (time.perf_counter() - started) * 1000, answer


def start_server(home: str, port: int, token: str) -> subprocess.Popen:
    config = Path(home) / "jupyter-config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_gpumarket.server": True}}}))
    env = {**os.environ, "GPUMARKET_HOME": home, "DASK_GPUMARKET__DEVNET": "true", "DASK_GPUMARKET__WATCHDOG": "false",
           "JUPYTER_CONFIG_DIR": str(config)}
    return subprocess.Popen(
        [sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(Path(home) / "server.log", "wb"),
    )


def wait_for(api: Api, process: subprocess.Popen, log: Path, timeout: float = 120) -> float:
    """Seconds until the server answers its status API."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError("jupyter server exited:\n" + "\n".join(log.read_text().splitlines()[-15:]))
        try:
            urllib.request.urlopen(f"{api.url}/api/status?token={api.token}", timeout=5).read()
            return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise TimeoutError("jupyter server did not answer")


def medians(api: Api, polls: int) -> dict[str, float]:
    return {path: statistics.median(api(path)[0] for _ in range(polls)) for path in POLLED}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--window", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home, Devnet.up(state_dir=home, params=DevnetParams(providers=3)) as net:
        net.start_agents()
        net.wait_for_providers(3)
        port, token = free_port(), secrets.token_hex(16)
        api = Api(f"http://127.0.0.1:{port}", token)
        server = start_server(home, port, token)
        try:
            startup_s = wait_for(api, server, Path(home) / "server.log")
            first_ms, wallet = api("wallet")
            assert wallet["connected"], wallet
            idle = medians(api, args.polls)
            rent_ms, rented = api("leases", "POST", {"gpus": 1, "gpu": "H100|A100|4090", "max_price": "3.00",
                                                     "hours": 1, "window": args.window})
            busy = medians(api, args.polls)
            (lease_id,) = rented["lease_ids"]
            release_ms, _ = api(f"leases/{lease_id}/release", "POST", {})
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{'GET':<12}{'no lease ms':>14}{'1 lease ms':>14}")
    for path in POLLED:
        print(f"{path:<12}{idle[path]:>14.1f}{busy[path]:>14.1f}")
    print(f"server start {startup_s:.2f} s, first request (connect) {first_ms:.0f} ms, "
          f"rent {rent_ms:.0f} ms (window {args.window} s), release {release_ms:.0f} ms")
    print(json.dumps({
        "server_start_s": round(startup_s, 2), "first_request_ms": round(first_ms, 1),
        **{f"get_{p}_ms": round(idle[p], 1) for p in POLLED},
        **{f"get_{p}_1_lease_ms": round(busy[p], 1) for p in POLLED},
        "rent_ms": round(rent_ms), "window_s": args.window, "release_ms": round(release_ms),
        "polls": args.polls,
    }))


if __name__ == "__main__":
    main()
