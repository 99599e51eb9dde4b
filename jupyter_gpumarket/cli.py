"""``gpumarket``: the command line.

    gpumarket devnet up [--providers N] [--port P]   start anvil, deploy, fund (runs on in the background)
    gpumarket devnet status                          what runs where
    gpumarket devnet down                            stop it
    gpumarket deploy --rpc URL --keystore FILE       deploy GpuMarket to any EVM chain
    gpumarket demo [--lease-only]                    the quickstart notebook (or one bare lease) on a private devnet
    gpumarket provider run --devnet --account provider0 --gpu-model "H100" --price 2.50 ...
                                                     serve GPUs (real ones via NVML, or a declared profile)
    gpumarket watchdog run|status|stop [--devnet | --rpc URL --market 0x... --keystore FILE]
                                                     release leases of dead or idle notebooks (started
                                                     by a session's first lease; exits with the last lease)

Errors of this package print as one line (``error: ...``) with exit code 2;
the private key never reaches the terminal.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from .errors import GpuMarketError, InvalidRequest


def _devnet(args: argparse.Namespace) -> int:
    from .chain.devnet import Devnet, DevnetParams

    if args.action == "up":
        net = Devnet.up(state_dir=args.state_dir, params=DevnetParams(providers=args.providers), port=args.port, detach=True)
        if args.agents:
            net.start_agents(detach=True, find_links=args.find_links)
            net.wait_for_providers(args.providers)
        print(f"devnet up: chain {net.info.chain_id} at {net.info.rpc_url}")
        print(f"  market {net.info.market}\n  token  {net.info.token}")
        for role, address in net.info.addresses.items():
            agent = f"  agent pid {net.info.agents[role]}" if role in net.info.agents else ""
            print(f"  {role:<10} {address}{agent}")
        print(f"  devnet file: {net.state_dir / 'devnet.json'}")
        return 0
    net = Devnet.load(args.state_dir) if args.action == "status" else _load_any(args.state_dir)
    if args.action == "status":
        print(json.dumps(net.status(), indent=1))
    elif net is None:
        print("no devnet is recorded; nothing to stop")
    else:
        net.down()
        print(f"devnet at {net.info.rpc_url} stopped")
    return 0


def _load_any(state_dir):
    """The recorded devnet even if anvil already died (so `down` can clean up its file)."""
    from pathlib import Path

    from .chain.devnet import Devnet, default_state_dir

    state = Path(state_dir) if state_dir else default_state_dir()
    info = Devnet._read(state)
    return Devnet(info, state) if info else None


def _deploy(args: argparse.Namespace) -> int:
    from .chain.accounts import PASSWORD_ENV, Signer
    from .chain.devnet import deploy_market

    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = getpass.getpass(f"password for {args.keystore}: ")
    signer = Signer.from_keystore(args.keystore, password)
    out = deploy_market(
        args.rpc,
        signer,
        token=args.token,
        min_stake=args.min_stake,
        attestation_grace=args.attestation_grace,
    )
    print(json.dumps(out, indent=1))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.lease_only:
        return demo.main()
    return demo.notebook_demo(args.notebook, args.out)


def _provider_run(args: argparse.Namespace) -> int:
    import logging

    from .chain.accounts import Signer
    from .chain.client import MarketClient
    from .chain.devnet import Devnet
    from .cluster.runtime import GpuProfile
    from .market.pricing import strategy_from_name
    from .market.provider import ProviderAgent
    from .spec import Money

    simulating = args.simulate_throughput < 1.0 or args.simulate_wrong_rows > 0.0 or args.simulate_wrong_tasks > 0.0
    if simulating and not args.devnet:  # refused before anything connects or stakes
        raise InvalidRequest("--simulate-* models a weak or dishonest provider and exists for devnets only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.devnet:
        net = Devnet.load(args.state_dir)
        client = net.client(args.account)
    else:
        if not (args.rpc and args.market):
            raise InvalidRequest("without --devnet, pass --rpc and --market (and an account in the environment)")
        client = MarketClient.connect(args.rpc, args.market, Signer.from_env())
    decimals = client.token_decimals()
    profile = GpuProfile.detect(tflops=args.tflops or 0.0)
    gpus = args.gpus
    if profile is None:  # no NVIDIA GPU here: serve CPU workers under a declared profile
        if not args.gpu_model:
            raise InvalidRequest("no NVIDIA GPU found; declare the simulated profile with --gpu-model, --memory-gib, --tflops")
        profile = GpuProfile(args.gpu_model, args.memory_gib, args.tflops, simulated=True)
    else:
        gpus = gpus or GpuProfile.gpu_count()
    floor = Money.parse(args.price, decimals).amount
    ceiling = Money.parse(args.ceiling, decimals).amount if args.ceiling else None
    behaviour = None
    if simulating:
        from .verify.challenge import SimulatedBehaviour

        behaviour = SimulatedBehaviour(args.simulate_throughput, args.simulate_wrong_rows, args.simulate_wrong_tasks)
    if args.index_url or args.find_links or args.no_index:  # where tenants' package sets are built from
        import dask.config

        dask.config.set({"gpumarket.provider-index-url": args.index_url,
                         "gpumarket.provider-find-links": args.find_links or [],
                         "gpumarket.provider-no-index": args.no_index})
    agent = ProviderAgent(client, profile, strategy_from_name(args.strategy, floor, ceiling), gpus=gpus or 1,
                          region=args.region, host=args.host, port=args.port, behaviour=behaviour)
    agent.run_forever()
    return 0


def _watchdog(args: argparse.Namespace) -> int:
    import logging

    from .session import Session
    from .watchdog import WatchdogLock, WatchdogPolicy, run_watchdog, stop_watchdog

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    session = Session.connect(devnet=args.devnet or None, rpc_url=args.rpc, market=args.market,
                              keystore=args.keystore, state_dir=args.state_dir, account=args.account)
    client = session.client
    if args.action == "run":
        base = WatchdogPolicy.from_config()
        policy = WatchdogPolicy(
            args.idle_timeout if args.idle_timeout is not None else base.idle_timeout,
            args.warn_before if args.warn_before is not None else base.warn_before,
            args.interval if args.interval is not None else base.interval,
        )
        return run_watchdog(session, policy)
    if args.action == "stop":
        pid = stop_watchdog(client.chain_id, client.market.address, client.address)
        print(f"asked the watchdog (pid {pid}) to stop" if pid else f"no watchdog runs for {client.address}")
        return 0
    pid = WatchdogLock(client.chain_id, client.market.address, client.address).running_pid()
    live = session.store.live_leases(client.chain_id, client.market.address) if session.store else []
    print(f"watchdog for {client.address} on chain {client.chain_id}: "
          f"{f'running (pid {pid})' if pid else 'not running'}; {len(live)} live lease(s) in the history")
    for notice in (session.store.notices()[-5:] if session.store else []):
        print(f"  [{notice['kind']}, {notice['state']}] {notice['message']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpumarket", description="Rent GPUs from a decentralised market.")
    sub = parser.add_subparsers(dest="command", required=True)

    devnet = sub.add_parser("devnet", help="a local chain with the market deployed")
    devnet.add_argument("action", choices=["up", "down", "status"])
    devnet.add_argument("--providers", type=int, default=3, help="provider accounts to fund (default 3)")
    devnet.add_argument("--no-agents", dest="agents", action="store_false",
                        help="fund provider accounts but start no provider agents")
    devnet.add_argument("--port", type=int, default=None, help="RPC port (default: a free one)")
    devnet.add_argument("--find-links", default=None,
                        help="a wheel directory the agents build tenants' package sets from (and no other index)")
    devnet.add_argument("--state-dir", default=None, help="where the devnet file lives (default ~/.gpumarket)")
    devnet.set_defaults(func=_devnet)

    deploy = sub.add_parser("deploy", help="deploy GpuMarket to an EVM chain")
    deploy.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
    deploy.add_argument("--keystore", required=True, help="eth-account keystore of the deployer")
    deploy.add_argument("--token", default=None, help="ERC-20 to pay in (default: deploy a TestDollar)")
    deploy.add_argument("--min-stake", type=int, default=100_000_000, help="provider stake, token base units")
    deploy.add_argument("--attestation-grace", type=int, default=300, help="seconds a tenant may reject a lease")
    deploy.set_defaults(func=_deploy)

    demo = sub.add_parser("demo", help="the quickstart notebook (or one bare lease) on a private devnet")
    demo.add_argument("--lease-only", action="store_true", help="the command-line lease demo, no notebook")
    demo.add_argument("--notebook", default="example-notebooks/quickstart.ipynb", help="notebook to execute")
    demo.add_argument("--out", default="build/quickstart.executed.ipynb", help="where the executed copy goes")
    demo.set_defaults(func=_demo)

    provider = sub.add_parser("provider", help="serve GPUs on the market")
    provider.add_argument("action", choices=["run"])
    provider.add_argument("--devnet", action="store_true", help="use the recorded devnet and one of its accounts")
    provider.add_argument("--account", default="provider0", help="devnet account role (with --devnet)")
    provider.add_argument("--state-dir", default=None, help="devnet state directory")
    provider.add_argument("--rpc", default=None, help="JSON-RPC URL (without --devnet)")
    provider.add_argument("--market", default=None, help="GpuMarket address (without --devnet)")
    provider.add_argument("--gpu-model", default="", help="declared GPU model when no NVIDIA GPU is present")
    provider.add_argument("--gpus", type=int, default=0, help="GPUs to offer (default: all detected, or 1)")
    provider.add_argument("--memory-gib", type=int, default=24, help="declared memory per GPU")
    provider.add_argument("--tflops", type=float, default=0.0, help="claimed dense TFLOPS per GPU")
    provider.add_argument("--price", default="2.00", help="floor price per GPU-hour, in tokens (e.g. 2.50)")
    provider.add_argument("--ceiling", default=None, help="ceiling price for --strategy utilisation")
    provider.add_argument("--strategy", default="floor", choices=["floor", "utilisation", "undercut"])
    provider.add_argument("--region", default="")
    provider.add_argument("--host", default="127.0.0.1", help="address tenants reach this machine at")
    provider.add_argument("--port", type=int, default=0, help="control endpoint port (default: a free one)")
    provider.add_argument("--index-url", default=None,
                          help="package index tenants' package sets are built from (default: pip's)")
    provider.add_argument("--find-links", action="append", default=None,
                          help="a wheel directory or page to build package sets from (repeatable)")
    provider.add_argument("--no-index", action="store_true", help="build only from --find-links")
    provider.add_argument("--simulate-throughput", type=float, default=1.0,
                          help="devnet only: deliver this fraction of the claimed throughput (a cheating provider)")
    provider.add_argument("--simulate-wrong-rows", type=float, default=0.0,
                          help="devnet only: invent this fraction of benchmark results")
    provider.add_argument("--simulate-wrong-tasks", type=float, default=0.0,
                          help="devnet only: return (and sign) wrong results for this fraction of tasks")
    provider.set_defaults(func=_provider_run)

    watchdog = sub.add_parser("watchdog", help="release leases of dead or idle notebooks")
    watchdog.add_argument("action", choices=["run", "status", "stop"])
    watchdog.add_argument("--devnet", action="store_true", help="use the recorded devnet and one of its accounts")
    watchdog.add_argument("--state-dir", default=None, help="devnet state directory")
    watchdog.add_argument("--account", default=None, help="devnet account role (default gpumarket.devnet-account)")
    watchdog.add_argument("--rpc", default=None, help="JSON-RPC URL (without --devnet)")
    watchdog.add_argument("--market", default=None, help="GpuMarket address (without --devnet)")
    watchdog.add_argument("--keystore", default=None,
                          help="keystore file (password from GPUMARKET_KEYSTORE_PASSWORD); else GPUMARKET_PRIVATE_KEY")
    watchdog.add_argument("--idle-timeout", type=float, default=None, help="seconds (default gpumarket.idle-timeout)")
    watchdog.add_argument("--warn-before", type=float, default=None, help="seconds (default gpumarket.warn-before)")
    watchdog.add_argument("--interval", type=float, default=None, help="seconds between checks")
    watchdog.set_defaults(func=_watchdog)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GpuMarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
