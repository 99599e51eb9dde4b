"""The command line: devnet up/status/down with no orphan process, the demo, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jupyter_gpumarket.chain.devnet import Devnet

ROOT = Path(__file__).resolve().parents[1]


def gpumarket(*args, env=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_gpumarket.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"gpumarket {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_devnet_up_status_down_leaves_no_process(tmp_path):
    state = str(tmp_path)
    up = gpumarket("devnet", "up", "--providers", "2", "--state-dir", state)
    assert up.stdout.count("agent pid") == 2
    assert "devnet up: chain 31337" in up.stdout
    info = json.loads((tmp_path / "devnet.json").read_text())
    assert set(info["addresses"]) == {"deployer", "tenant", "stranger", "provider0", "provider1"}
    assert "key" not in json.dumps(info).lower()  # addresses only, no private keys
    pid, agents = info["pid"], info["agents"]
    try:
        # Another process connects through the devnet file alone.
        tenant = Devnet.load(state).client("tenant")
        assert tenant.balance() == 10_000 * 10**6
        # Each provider account got its own agent, registered with its profile.
        assert set(agents) == {"provider0", "provider1"} and all(alive(p) for p in agents.values())
        models = {p.claim.gpu_model for p in tenant.providers()}
        assert models == {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"}
        status = json.loads(gpumarket("devnet", "status", "--state-dir", state).stdout)
        assert status["running"] is True and status["market"] == info["market"]
        again = gpumarket("devnet", "up", "--state-dir", state, check=False)
        assert again.returncode == 2 and "already runs" in again.stderr
    finally:
        down = gpumarket("devnet", "down", "--state-dir", state)
    assert "stopped" in down.stdout
    for _ in range(50):
        if not alive(pid):
            break
        time.sleep(0.1)
    assert not alive(pid), "anvil still running after devnet down"
    assert not any(alive(p) for p in agents.values()), "a provider agent outlived devnet down"
    assert not (tmp_path / "devnet.json").exists()
    after = gpumarket("devnet", "status", "--state-dir", state, check=False)
    assert after.returncode == 2 and "gpumarket devnet up" in after.stderr


def test_demo_prints_steps_and_balances_add_up():
    proc = gpumarket("demo", "--lease-only")
    out = proc.stdout
    for step in ("providers register", "tenant orders", "providers bid", "accepts the cheaper bid: provider1",
                 "provider1 withdraws 0.800000 TUSD", "tenant closes"):
        assert step in out
    assert "lease 2: deposit 4,800,000 = paid 880,000 + fee 0 + refunded 3,920,000" in out
    assert "Balances add up to the base unit." in out


def test_deploy_to_a_chain_with_a_keystore(net, tmp_path):
    from jupyter_gpumarket.chain import MarketClient, Signer
    from jupyter_gpumarket.chain.devnet import dev_signer

    deployer_key = dev_signer(5)._account.key  # a funded anvil account; test-only access
    keystore = Signer.write_keystore(deployer_key, tmp_path / "deployer.json", "s3cret")
    proc = gpumarket("deploy", "--rpc", net.info.rpc_url, "--keystore", str(keystore),
                     env={"GPUMARKET_KEYSTORE_PASSWORD": "s3cret"})
    assert deployer_key.hex() not in proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    client = MarketClient.connect(net.info.rpc_url, out["market"])
    assert client.token.address == out["token"] and client.params()["min_stake"] == 100_000_000
    wrong = gpumarket("deploy", "--rpc", net.info.rpc_url, "--keystore", str(keystore),
                      env={"GPUMARKET_KEYSTORE_PASSWORD": "wrong"}, check=False)
    assert wrong.returncode == 2 and "wrong password" in wrong.stderr
    assert deployer_key.hex() not in wrong.stdout + wrong.stderr


def test_deploy_to_dead_rpc_says_so(tmp_path):
    from jupyter_gpumarket.chain import Signer

    keystore = Signer.write_keystore("0x" + "22" * 32, tmp_path / "k.json", "pw")
    proc = gpumarket("deploy", "--rpc", "http://127.0.0.1:9", "--keystore", str(keystore),
                     env={"GPUMARKET_KEYSTORE_PASSWORD": "pw"}, check=False)
    assert proc.returncode == 2
    assert "no chain answers at http://127.0.0.1:9" in proc.stderr


def test_simulated_cheating_is_refused_off_the_devnet_before_anything_connects():
    # The RPC URL points at nothing: the refusal must come first, naming the flag's limit.
    for flag in ("--simulate-throughput=0.5", "--simulate-wrong-rows=0.1", "--simulate-wrong-tasks=0.3"):
        proc = gpumarket("provider", "run", "--rpc", "http://127.0.0.1:9", "--market", "0x" + "11" * 20,
                         "--gpu-model", "NVIDIA H100 80GB HBM3", flag, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == "error: --simulate-* models a weak or dishonest provider and exists for devnets only"
