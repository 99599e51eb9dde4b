"""``gpumarket``: the command line.

    gpumarket devnet up [--providers N] [--port P]   start anvil, deploy, fund (runs on in the background)
    gpumarket devnet status                          what runs where
    gpumarket devnet down                            stop it
    gpumarket deploy --rpc URL --keystore FILE       deploy GpuMarket to any EVM chain
    gpumarket demo                                   one lease end to end on a private devnet

Errors of this package print as one line (``error: ...``) with exit code 2;
the private key never reaches the terminal.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from .errors import GpuMarketError


def _devnet(args: argparse.Namespace) -> int:
    from .chain.devnet import Devnet, DevnetParams

    if args.action == "up":
        net = Devnet.up(state_dir=args.state_dir, params=DevnetParams(providers=args.providers), port=args.port, detach=True)
        print(f"devnet up: chain {net.info.chain_id} at {net.info.rpc_url}")
        print(f"  market {net.info.market}\n  token  {net.info.token}")
        for role, address in net.info.addresses.items():
            print(f"  {role:<10} {address}")
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

    return demo.main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpumarket", description="Rent GPUs from a decentralised market.")
    sub = parser.add_subparsers(dest="command", required=True)

    devnet = sub.add_parser("devnet", help="a local chain with the market deployed")
    devnet.add_argument("action", choices=["up", "down", "status"])
    devnet.add_argument("--providers", type=int, default=3, help="provider accounts to fund (default 3)")
    devnet.add_argument("--port", type=int, default=None, help="RPC port (default: a free one)")
    devnet.add_argument("--state-dir", default=None, help="where the devnet file lives (default ~/.gpumarket)")
    devnet.set_defaults(func=_devnet)

    deploy = sub.add_parser("deploy", help="deploy GpuMarket to an EVM chain")
    deploy.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
    deploy.add_argument("--keystore", required=True, help="eth-account keystore of the deployer")
    deploy.add_argument("--token", default=None, help="ERC-20 to pay in (default: deploy a TestDollar)")
    deploy.add_argument("--min-stake", type=int, default=100_000_000, help="provider stake, token base units")
    deploy.add_argument("--attestation-grace", type=int, default=300, help="seconds a tenant may reject a lease")
    deploy.set_defaults(func=_deploy)

    demo = sub.add_parser("demo", help="one lease end to end on a private devnet")
    demo.set_defaults(func=_demo)
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
