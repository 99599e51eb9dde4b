"""A local chain for laptops and CI: anvil + TestDollar + GpuMarket.

``Devnet.up()`` starts anvil on a free port, deploys the contracts, funds a
tenant and several provider accounts and writes a devnet file (addresses,
RPC URL, chain id, anvil's pid) under the state directory, outside git.
``Devnet.load()`` reads it back in another process; ``down()`` stops anvil.

Devnet accounts come from anvil's public test mnemonic: they hold test money
only, and their keys are derived when needed, never written or printed.

Example::

    with Devnet.up(state_dir=tmp_path) as net:
        net.client("tenant").balance()      # 10_000 TUSD = 10_000_000_000 base units
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eth_account import Account
from web3 import HTTPProvider, Web3

from ..errors import ChainUnavailable, InvalidRequest
from ..processes import process_alive
from . import contracts
from .accounts import Signer
from .client import MarketClient

# Anvil's well-known development mnemonic: public, for test chains only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEVNET_FILE = "devnet.json"
TOKEN_UNIT = 10**6  # TestDollar has 6 decimals

#: Simulated provider boxes for devnet agents: model, memory GiB, TFLOPS, floor price, strategy.
AGENT_PROFILES = [
    ("NVIDIA H100 80GB HBM3", 80, 989.0, "2.90", "floor"),
    ("NVIDIA A100-SXM4-80GB", 80, 312.0, "1.80", "utilisation"),
    ("NVIDIA GeForce RTX 4090", 24, 165.0, "0.70", "undercut"),
]


def default_state_dir() -> Path:
    """``$GPUMARKET_HOME`` or ``~/.gpumarket``: devnet files and keystores, never in git."""
    return Path(os.environ.get("GPUMARKET_HOME", Path.home() / ".gpumarket")).expanduser()


@dataclass
class DevnetParams:
    """Market parameters deployed on the devnet (short delays so demos run in seconds)."""

    min_stake: int = 100 * TOKEN_UNIT
    unstake_delay: int = 600
    attestation_grace: int = 30
    dispute_window: int = 86_400
    tenant_funds: int = 10_000 * TOKEN_UNIT
    provider_funds: int = 1_000 * TOKEN_UNIT
    providers: int = 3


@dataclass
class DevnetInfo:
    """What the devnet file holds: enough for any process to connect."""

    rpc_url: str
    chain_id: int
    market: str
    token: str
    accounts: dict[str, int]  # role -> index on the dev mnemonic
    addresses: dict[str, str]
    pid: int | None = None
    started_at: float = field(default_factory=time.time)
    deploy_block: int = 0
    agents: dict[str, int] = field(default_factory=dict)  # provider role -> agent pid


def find_anvil() -> str:
    """anvil from the project's node_modules, else PATH."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "node_modules" / ".bin" / "anvil"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("anvil")
    if not found:
        raise ChainUnavailable("anvil not found; run `npm ci` in the project (it ships @foundry-rs/anvil) or add it to PATH")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_signer(index: int) -> Signer:
    Account.enable_unaudited_hdwallet_features()
    return Signer(Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}"))


class Devnet:
    """A running (or recorded) local chain with the market deployed."""

    def __init__(self, info: DevnetInfo, state_dir: Path, process: subprocess.Popen | None = None) -> None:
        self.info = info
        self.state_dir = state_dir
        self._process = process
        self._signers: dict[str, Signer] = {}

    # -- lifecycle --------------------------------------------------------------

    @classmethod
    def up(
        cls,
        state_dir: str | os.PathLike | None = None,
        params: DevnetParams | None = None,
        port: int | None = None,
        detach: bool = False,
    ) -> "Devnet":
        """Start anvil, deploy and fund. ``detach=True`` leaves anvil running after this process."""
        params = params or DevnetParams()
        state = Path(state_dir) if state_dir else default_state_dir()
        existing = cls._read(state)
        if existing and process_alive(existing.pid) and _answers(existing.rpc_url):
            raise InvalidRequest(f"a devnet already runs at {existing.rpc_url}; use it, or `gpumarket devnet down` first")
        state.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        n_accounts = max(10, params.providers + 3)
        process = subprocess.Popen(
            [find_anvil(), "--host", "127.0.0.1", "--port", str(port), "--accounts", str(n_accounts), "--silent"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=detach,  # detached anvil survives the CLI that started it
        )
        rpc_url = f"http://127.0.0.1:{port}"
        try:
            _wait_for(rpc_url, process)
            info = cls._deploy(rpc_url, params)
            info.pid = process.pid
            net = cls(info, state, None if detach else process)
            net._write()
            return net
        except BaseException:
            process.kill()
            process.wait()
            raise

    @classmethod
    def load(cls, state_dir: str | os.PathLike | None = None) -> "Devnet":
        """The devnet recorded in the state directory; refuses a stopped one."""
        state = Path(state_dir) if state_dir else default_state_dir()
        info = cls._read(state)
        if info is None:
            raise ChainUnavailable(f"no devnet recorded in {state}; start one with `gpumarket devnet up`")
        if not _answers(info.rpc_url):
            raise ChainUnavailable(f"the devnet at {info.rpc_url} is not running; start it with `gpumarket devnet up`")
        return cls(info, state)

    def start_agents(self, gpus: int = 1, detach: bool = False, count: int | None = None,
                     find_links: str | os.PathLike | None = None) -> dict[str, subprocess.Popen]:
        """Start provider agent processes (one per provider account, or the first ``count``),
        with varied profiles and prices. Accounts left without an agent can serve from a notebook.
        ``find_links``: a wheel directory the agents build tenants' package sets from (no other index).

        Logs go to ``<state>/<role>.log``. The pids are recorded so ``down()`` stops them.
        """
        procs = {}
        env = dict(os.environ)
        if find_links is not None:  # read by EnvironmentBuilder.from_config in the agent
            env |= {"DASK_GPUMARKET__PROVIDER_FIND_LINKS": str(find_links), "DASK_GPUMARKET__PROVIDER_NO_INDEX": "True"}
        roles = [r for r in self.roles if r.startswith("provider")][:count]
        for i, role in enumerate(roles):
            model, memory, tflops, price, strategy = AGENT_PROFILES[i % len(AGENT_PROFILES)]
            log = open(self.state_dir / f"{role}.log", "ab")
            procs[role] = subprocess.Popen(
                [sys.executable, "-m", "jupyter_gpumarket.cli", "provider", "run", "--devnet",
                 "--state-dir", str(self.state_dir), "--account", role, "--gpu-model", model,
                 "--memory-gib", str(memory), "--tflops", str(tflops), "--price", price,
                 "--strategy", strategy, "--gpus", str(gpus)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=detach, env=env,
            )
            log.close()
            self.info.agents[role] = procs[role].pid
        self._write()
        return procs

    def wait_for_providers(self, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` providers are registered (agents register at start)."""
        client = MarketClient.connect(self.info.rpc_url, self.info.market)
        deadline = time.monotonic() + timeout
        while client.market.functions.providerCount().call() < count:
            if time.monotonic() > deadline:
                raise ChainUnavailable(f"only {client.market.functions.providerCount().call()} of {count} "
                                       f"providers registered within {timeout:.0f} s; see the logs in {self.state_dir}")
            time.sleep(0.1)

    def stop_agents(self) -> None:
        for pid in self.info.agents.values():
            if process_alive(pid) and _is_ours(pid, "jupyter_gpumarket"):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid in self.info.agents.values():
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.info.agents.clear()

    def down(self) -> None:
        """Stop agents and anvil (no orphan process) and remove the devnet file."""
        self.stop_agents()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        elif process_alive(self.info.pid) and _is_ours(self.info.pid, "anvil"):
            os.kill(self.info.pid, signal.SIGTERM)
            for _ in range(100):
                if not process_alive(self.info.pid):
                    break
                time.sleep(0.05)
            else:
                os.kill(self.info.pid, signal.SIGKILL)
        (self.state_dir / DEVNET_FILE).unlink(missing_ok=True)

    def __enter__(self) -> "Devnet":
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def status(self) -> dict:
        running = _answers(self.info.rpc_url)
        out = {"running": running, **asdict(self.info)}
        if running:
            out["block"] = Web3(HTTPProvider(self.info.rpc_url)).eth.block_number
        return out

    # -- accounts and clients ------------------------------------------------------

    @property
    def roles(self) -> list[str]:
        return list(self.info.accounts)

    def signer(self, role: str) -> Signer:
        if role not in self.info.accounts:
            raise InvalidRequest(f"no devnet account {role!r}; choose one of {', '.join(self.roles)}")
        if role not in self._signers:
            self._signers[role] = dev_signer(self.info.accounts[role])
        return self._signers[role]

    def client(self, role: str = "tenant") -> MarketClient:
        return MarketClient.connect(
            self.info.rpc_url, self.info.market, self.signer(role), expected_chain_id=self.info.chain_id
        )

    @property
    def w3(self) -> Web3:
        return Web3(HTTPProvider(self.info.rpc_url))

    # -- time control (anvil only) -------------------------------------------------

    def set_next_timestamp(self, timestamp: int) -> None:
        """The next mined block (the next transaction) gets exactly this timestamp."""
        self.w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])

    def snapshot(self) -> str:
        """An anvil snapshot id of the current state (clock brought level first), for :meth:`revert`."""
        self.level_clock()
        return self.w3.provider.make_request("evm_snapshot", [])["result"]

    def revert(self, snapshot: str) -> None:
        """Roll the chain back to ``snapshot`` and bring its clock level with the wall clock."""
        self.w3.provider.make_request("evm_revert", [snapshot])
        self.level_clock()

    def level_clock(self) -> None:
        """Mine a block at the wall clock's time if the chain's clock is behind it.

        anvil's revert also rewinds the clock to the snapshot's time, so the chain would run
        behind the wall clock by however long the snapshot lived, and agents, which judge
        bidding windows by the wall clock, would find every new order's window already shut.
        """
        now = int(time.time())
        if self.w3.eth.get_block("latest")["timestamp"] < now:
            self.mine(now)

    def mine(self, timestamp: int | None = None) -> None:
        if timestamp is not None:
            self.set_next_timestamp(timestamp)
        self.w3.provider.make_request("evm_mine", [])

    def advance(self, seconds: int) -> int:
        """Mine a block ``seconds`` after the latest one; returns its timestamp."""
        target = self.w3.eth.get_block("latest")["timestamp"] + seconds
        self.mine(target)
        return target

    # -- internals -------------------------------------------------------------------

    @staticmethod
    def _deploy(rpc_url: str, params: DevnetParams) -> DevnetInfo:
        w3 = Web3(HTTPProvider(rpc_url))
        deployer = dev_signer(0)
        token = _deploy_contract(w3, deployer, "TestDollar", deployer.address)
        market = _deploy_contract(
            w3,
            deployer,
            "GpuMarket",
            token,
            deployer.address,
            params.min_stake,
            params.unstake_delay,
            params.attestation_grace,
            params.dispute_window,
        )
        accounts = {"deployer": 0, "tenant": 1, "stranger": 2}
        accounts.update({f"provider{i}": 3 + i for i in range(params.providers)})
        admin = MarketClient(w3, market, deployer)
        addresses = {}
        for role, index in accounts.items():
            address = dev_signer(index).address
            addresses[role] = address
            amount = params.tenant_funds if role == "tenant" else params.provider_funds if role.startswith("provider") else 0
            if amount:
                admin.mint(address, amount)
        return DevnetInfo(
            rpc_url=rpc_url,
            chain_id=w3.eth.chain_id,
            market=market,
            token=token,
            accounts=accounts,
            addresses=addresses,
            deploy_block=w3.eth.block_number,
        )

    def _write(self) -> None:
        path = self.state_dir / DEVNET_FILE
        path.write_text(json.dumps(asdict(self.info), indent=1))

    @staticmethod
    def _read(state: Path) -> DevnetInfo | None:
        try:
            return DevnetInfo(**json.loads((state / DEVNET_FILE).read_text()))
        except FileNotFoundError:
            return None

    def __repr__(self) -> str:
        return f"Devnet({self.info.rpc_url}, market={self.info.market})"


def deploy_market(
    rpc_url: str,
    signer: Signer,
    token: str | None = None,
    min_stake: int = 100 * TOKEN_UNIT,
    unstake_delay: int = 7 * 86_400,
    attestation_grace: int = 300,
    dispute_window: int = 7 * 86_400,
) -> dict[str, str]:
    """Deploy GpuMarket (and a TestDollar when no token is given) to any EVM chain."""
    w3 = Web3(HTTPProvider(rpc_url))
    if not _answers(rpc_url):
        raise ChainUnavailable(f"no chain answers at {rpc_url}; check the RPC URL")
    token = token or _deploy_contract(w3, signer, "TestDollar", signer.address)
    market = _deploy_contract(
        w3, signer, "GpuMarket", token, signer.address, min_stake, unstake_delay, attestation_grace, dispute_window
    )
    return {"market": market, "token": token, "chain_id": str(w3.eth.chain_id)}


def _deploy_contract(w3: Web3, signer: Signer, name: str, *args) -> str:
    factory = w3.eth.contract(abi=contracts.abi(name), bytecode=contracts.bytecode(name))
    tx = factory.constructor(*args).build_transaction(
        {"from": signer.address, "nonce": w3.eth.get_transaction_count(signer.address, "pending"), "chainId": w3.eth.chain_id}
    )
    tx_hash = w3.eth.send_raw_transaction(signer.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.01)
    if receipt["status"] != 1:
        raise ChainUnavailable(f"deploying {name} failed in transaction 0x{bytes(tx_hash).hex()}")
    return receipt["contractAddress"]


def _answers(rpc_url: str) -> bool:
    try:
        Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 2})).eth.chain_id
        return True
    except Exception:
        return False


def _is_ours(pid: int, marker: str) -> bool:
    """The recorded pid still runs what we started (pids get reused)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True  # no /proc: trust the recorded pid


def _wait_for(rpc_url: str, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ChainUnavailable(f"anvil exited with code {process.returncode} before answering")
        if _answers(rpc_url):
            return
        time.sleep(0.05)
    raise ChainUnavailable(f"anvil did not answer at {rpc_url} within {timeout:.0f} s")
