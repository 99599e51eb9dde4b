"""Dispatch overhead and result throughput: mutual-TLS LeaseRuntime vs plain TCP.

Both clusters have the same shape: one scheduler and 2 single-threaded
workers, all in this process (the TCP side is ``LocalCluster(processes=False)``,
the TLS side a :class:`LeaseRuntime`, which also runs its workers as threads
of this process), with the client in this process too. Measured:

* tiny tasks: ``client.map(inc, range(N))`` then ``gather`` -> tasks/second;
* 1 MiB results: ``M`` tasks each returning 1 MiB of incompressible bytes are
  computed and held on the workers, then ``client.gather`` is timed (best of
  ``--repeat`` rounds) -> MB/s of results moved worker -> client.

The two clusters live side by side and the rounds alternate between them,
so that load from elsewhere on the machine hits both alike. Prints a table, then one JSON line.

    python bench/dispatch.py [--tiny 20000] [--big 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import statistics
import time

from distributed import Client, LocalCluster, wait

from jupyter_gpumarket.cluster.runtime import GpuProfile, LeaseRuntime
from jupyter_gpumarket.cluster.tls import ProviderKey, TenantCA

MiB = 1 << 20


def inc(x: int) -> int:
    return x + 1


def payload(i: int) -> bytes:
    """1 MiB of seeded pseudo-random (incompressible) bytes."""
    return random.Random(i).randbytes(MiB)


def _warm(client: Client) -> None:
    client.wait_for_workers(2, timeout=30)
    client.gather(client.map(inc, range(200), key=[f"warm-{i}" for i in range(200)]))
    client.gather(client.map(payload, range(4), key=[f"warm-big-{i}" for i in range(4)]))


def tiny_round(client: Client, n: int, offset: int) -> float:
    """Seconds to submit and gather ``n`` tiny tasks (fresh keys each round)."""
    t0 = time.perf_counter()
    futures = client.map(inc, range(offset, offset + n))
    total = sum(client.gather(futures))
    elapsed = time.perf_counter() - t0
    assert total == sum(range(offset + 1, offset + n + 1))
    return elapsed


def gather_round(client: Client, futures) -> float:
    """Seconds to gather results already held on the workers."""
    t0 = time.perf_counter()
    results = client.gather(futures)
    elapsed = time.perf_counter() - t0
    assert len(results) == len(futures) and all(len(r) == MiB for r in results)
    return elapsed


def tls_client(stack: contextlib.ExitStack) -> Client:
    ca = TenantCA.create()
    key = ProviderKey.generate()
    hosts = ["127.0.0.1"]
    security = key.security(ca.cert_pem, ca.sign_provider(key.csr(hosts), key.fingerprint, hosts))
    profile = GpuProfile("simulated", 16, 10.0, simulated=True)
    runtime = stack.enter_context(LeaseRuntime(1, security, profile, gpus=2))
    return stack.enter_context(Client(runtime.scheduler_address, security=ca.client_security()))


def tcp_client(stack: contextlib.ExitStack) -> Client:
    cluster = stack.enter_context(
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None)
    )
    return stack.enter_context(Client(cluster))


def _cipher(client: Client) -> str:
    """The negotiated TLS version/cipher of the client -> scheduler connection."""
    comm = client.scheduler_comm.comm
    extra = getattr(comm, "_extra", {})
    cipher = extra.get("cipher")
    return f"{cipher[1]} {cipher[0]}" if cipher else "?"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", type=int, default=20_000, help="tiny tasks per side")
    p.add_argument("--big", type=int, default=200, help="1 MiB results per gather")
    p.add_argument("--repeat", type=int, default=4, help="interleaved rounds")
    args = p.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    with contextlib.ExitStack() as stack:
        clients = {"tcp": tcp_client(stack), "tls": tls_client(stack)}
        for c in clients.values():
            _warm(c)
        cipher = _cipher(clients["tls"])
        # Rounds alternate between the two clusters so that a busy machine
        # slows both alike; tiny tasks: total time over all rounds.
        tiny_s = {k: 0.0 for k in clients}
        per_round = max(1, args.tiny // args.repeat)
        for r in range(args.repeat):
            for k, c in (clients.items() if r % 2 == 0 else reversed(clients.items())):
                tiny_s[k] += tiny_round(c, per_round, offset=r * per_round)
        held = {k: c.map(payload, range(args.big)) for k, c in clients.items()}
        for f in held.values():
            wait(f)
        gather_s = {k: [] for k in clients}
        for r in range(args.repeat):
            for k, c in (clients.items() if r % 2 == 0 else reversed(clients.items())):
                gather_s[k].append(gather_round(c, held[k]))
        del held

    n_tiny = per_round * args.repeat
    tps = {k: n_tiny / v for k, v in tiny_s.items()}
    mbps = {k: args.big * MiB / 1e6 / min(v) for k, v in gather_s.items()}
    mbps_med = {k: args.big * MiB / 1e6 / statistics.median(v) for k, v in gather_s.items()}
    print(f"{'':34}{'TCP':>10}{'mutual TLS':>12}{'TLS/TCP':>9}")
    print(f"{'tiny tasks/s (%d per side)' % n_tiny:34}{tps['tcp']:10.0f}{tps['tls']:12.0f}{tps['tls'] / tps['tcp']:9.2f}")
    print(f"{'1 MiB results MB/s, best (%d)' % args.big:34}{mbps['tcp']:10.0f}{mbps['tls']:12.0f}"
          f"{mbps['tls'] / mbps['tcp']:9.2f}")
    print(f"{'1 MiB results MB/s, median':34}{mbps_med['tcp']:10.0f}{mbps_med['tls']:12.0f}"
          f"{mbps_med['tls'] / mbps_med['tcp']:9.2f}")
    print(f"TLS: {cipher}. Each side: scheduler + 2 workers x 1 thread, in this process (LocalCluster "
          f"processes=False / LeaseRuntime), client in this process; {args.repeat} interleaved rounds.")
    result = {
        "tiny_tasks_per_s_tls": round(tps["tls"], 1),
        "tiny_tasks_per_s_tcp": round(tps["tcp"], 1),
        "tiny_task_ratio": round(tps["tls"] / tps["tcp"], 3),
        "mb_per_s_tls": round(mbps["tls"], 1),
        "mb_per_s_tcp": round(mbps["tcp"], 1),
        "transfer_ratio": round(mbps["tls"] / mbps["tcp"], 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
