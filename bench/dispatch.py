"""Dispatch overhead and result throughput: mutual-TLS LeaseRuntime vs plain TCP.

Both clusters have the same shape: one scheduler and 2 single-threaded
workers as threads of one process (the TCP side is
``LocalCluster(processes=False, protocol="tcp")``, the TLS side a
:class:`LeaseRuntime`, whose workers are threads too). With ``--layout
process`` (default) each cluster runs in its own child process and the client
here, as tenant and provider are apart; ``--layout thread`` puts everything
in this process. Measured:

* tiny tasks: ``client.map(inc, range(N))`` then ``gather`` -> tasks/second;
* 1 MiB results: ``M`` tasks each returning 1 MiB of incompressible bytes are
  computed and held on the workers, then ``client.gather`` is timed (best of
  ``--repeat`` rounds) -> MB/s of results moved worker -> client.

The two clusters live side by side and the rounds alternate between them,
so that load from elsewhere on the machine hits both alike. Besides wall
time, the CPU seconds of this process and its children are counted per
round: on a shared machine "per CPU-second" figures are the steadier ones.
Prints a table, then one JSON line.

    python bench/dispatch.py [--tiny 20000] [--big 200] [--repeat 4] [--layout process|thread]

Findings (2-core shared CI VM, Python 3.11, OpenSSL 3.0, TLS 1.3 AES-256-GCM):
tiny tasks reach ~1.0x of TCP (0.94x per CPU-second): the batched control
messages are small and TLS adds little per message. 1 MiB results reach only
~0.33x, as upstream measured (dask/distributed#5450, ~30% at 1e6 bytes).
The cost is CPU on the receiving path: OpenSSL hands back one 16 KiB record
per ``SSL_read``, so tornado's ``SSLIOStream`` makes ~64 ``recv_into`` calls
(each through ``_ssl``, GIL release/re-acquire, record decrypt and copy) per
MiB where plain TCP needs one or two. The cipher is not the bottleneck
(``openssl speed``: AES-256-GCM 3.5 GB/s here; AES-128-GCM under TLS 1.2
gained <=10%, ChaCha20 lost ~10%); OpenSSL read-ahead (+3%) and bigger read
buffers (worse) did not help, kernel TLS is not available, and distributed
has no TLS buffer/chunk setting that changes the record path
(``distributed.comm.shard`` only splits frames above 64 MiB). So no
Security/runtime setting was applied: the gap needs a transport that
decrypts many records per call (a MemoryBIO/uvloop-style TLS transport, as
tried in dask/distributed#5450), which Dask does not ship today.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import random
import statistics
import tempfile
import time

import psutil
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


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and all its children so far."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def tiny_round(client: Client, n: int, offset: int) -> tuple[float, float]:
    """(wall, CPU) seconds to submit and gather ``n`` tiny tasks (fresh keys each round)."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    futures = client.map(inc, range(offset, offset + n))
    total = sum(client.gather(futures))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    assert total == sum(range(offset + 1, offset + n + 1))
    return elapsed, cpu


def gather_round(client: Client, futures) -> tuple[float, float]:
    """(wall, CPU) seconds to gather results already held on the workers."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    results = client.gather(futures)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    assert len(results) == len(futures) and all(len(r) == MiB for r in results)
    del results
    return elapsed, cpu


def _tls_material(workdir: str) -> tuple[TenantCA, str, bytes, bytes]:
    """The order's CA plus a provider key (saved 0600) and its signed certificate."""
    ca = TenantCA.create()
    key = ProviderKey.generate()
    hosts = ["127.0.0.1"]
    cert = ca.sign_provider(key.csr(hosts), key.fingerprint, hosts)
    key_path = str(key.save(os.path.join(workdir, "provider.key")))
    return ca, key_path, ca.cert_pem, cert


@contextlib.contextmanager
def _cluster_here(kind: str, tls: tuple | None):
    """Yield the scheduler address of a cluster running in this process."""
    if kind == "tls":
        key_path, ca_pem, cert_pem = tls
        security = ProviderKey.load(key_path).security(ca_pem, cert_pem)
        profile = GpuProfile("simulated", 16, 10.0, simulated=True)
        with LeaseRuntime(1, security, profile, gpus=2) as runtime:
            yield runtime.scheduler_address
    else:
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None
        ) as cluster:
            yield cluster.scheduler_address


def _serve(kind: str, tls: tuple | None, conn) -> None:
    """Child process body: run the cluster until the parent says stop."""
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with _cluster_here(kind, tls) as address:
        conn.send(address)
        conn.recv()


@contextlib.contextmanager
def cluster(kind: str, tls: tuple | None, layout: str):
    if layout == "thread":
        with _cluster_here(kind, tls) as address:
            yield address
        return
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(kind, tls, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError(f"{kind} cluster did not start")
        yield parent.recv()
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(30)
        if proc.is_alive():
            proc.kill()


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
    p.add_argument(
        "--layout",
        choices=["process", "thread"],
        default="process",
        help="process: each cluster (scheduler + 2 worker threads) in its own child process, the client "
        "here, as tenant and provider are apart; thread: clusters and client all in this process",
    )
    args = p.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory())
        ca, *tls = _tls_material(workdir)
        clients = {
            "tcp": stack.enter_context(Client(stack.enter_context(cluster("tcp", None, args.layout)))),
            "tls": stack.enter_context(
                Client(stack.enter_context(cluster("tls", tuple(tls), args.layout)), security=ca.client_security())
            ),
        }
        for c in clients.values():
            _warm(c)
        cipher = _cipher(clients["tls"])
        # Rounds alternate between the two clusters so that a busy machine
        # slows both alike; tiny tasks: total time over all rounds.
        tiny_s = {k: 0.0 for k in clients}
        tiny_cpu = {k: 0.0 for k in clients}
        per_round = max(1, args.tiny // args.repeat)
        for r in range(args.repeat):
            for k, c in (clients.items() if r % 2 == 0 else reversed(clients.items())):
                wall, cpu = tiny_round(c, per_round, offset=r * per_round)
                tiny_s[k] += wall
                tiny_cpu[k] += cpu
        held = {k: c.map(payload, range(args.big)) for k, c in clients.items()}
        for f in held.values():
            wait(f)
        gather_s = {k: [] for k in clients}
        gather_cpu = {k: [] for k in clients}
        for r in range(args.repeat):
            for k, c in (clients.items() if r % 2 == 0 else reversed(clients.items())):
                wall, cpu = gather_round(c, held[k])
                gather_s[k].append(wall)
                gather_cpu[k].append(cpu)
        del held

    n_tiny = per_round * args.repeat
    tps = {k: n_tiny / v for k, v in tiny_s.items()}
    mbps = {k: args.big * MiB / 1e6 / min(v) for k, v in gather_s.items()}
    mbps_med = {k: args.big * MiB / 1e6 / statistics.median(v) for k, v in gather_s.items()}
    tpcpu = {k: n_tiny / v for k, v in tiny_cpu.items()}
    mbcpu = {k: args.big * MiB / 1e6 / statistics.median(v) for k, v in gather_cpu.items()}
    print(f"{'':34}{'TCP':>10}{'mutual TLS':>12}{'TLS/TCP':>9}")
    print(f"{'tiny tasks/s (%d per side)' % n_tiny:34}{tps['tcp']:10.0f}{tps['tls']:12.0f}{tps['tls'] / tps['tcp']:9.2f}")
    print(f"{'1 MiB results MB/s, best (%d)' % args.big:34}{mbps['tcp']:10.0f}{mbps['tls']:12.0f}"
          f"{mbps['tls'] / mbps['tcp']:9.2f}")
    print(f"{'1 MiB results MB/s, median':34}{mbps_med['tcp']:10.0f}{mbps_med['tls']:12.0f}"
          f"{mbps_med['tls'] / mbps_med['tcp']:9.2f}")
    print(f"{'tiny tasks per CPU-second':34}{tpcpu['tcp']:10.0f}{tpcpu['tls']:12.0f}{tpcpu['tls'] / tpcpu['tcp']:9.2f}")
    print(f"{'1 MiB results MB per CPU-second':34}{mbcpu['tcp']:10.0f}{mbcpu['tls']:12.0f}"
          f"{mbcpu['tls'] / mbcpu['tcp']:9.2f}")
    where = "in one child process per cluster" if args.layout == "process" else "in this process"
    print(f"TLS: {cipher}. Each side: scheduler + 2 workers x 1 thread {where} (LocalCluster "
          f"processes=False / LeaseRuntime), client in this process; {args.repeat} interleaved rounds.")
    result = {
        "tiny_tasks_per_s_tls": round(tps["tls"], 1),
        "tiny_tasks_per_s_tcp": round(tps["tcp"], 1),
        "tiny_task_ratio": round(tps["tls"] / tps["tcp"], 3),
        "mb_per_s_tls": round(mbps["tls"], 1),
        "mb_per_s_tcp": round(mbps["tcp"], 1),
        "transfer_ratio": round(mbps["tls"] / mbps["tcp"], 3),
        "tiny_task_ratio_per_cpu_s": round(tpcpu["tls"] / tpcpu["tcp"], 3),
        "transfer_ratio_per_cpu_s": round(mbcpu["tls"] / mbcpu["tcp"], 3),
        "layout": args.layout,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
