"""The committed ABI + bytecode artifacts are exactly what the sources compile to."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from jupyter_gpumarket.chain import contracts

ROOT = Path(__file__).resolve().parents[2]


def test_artifacts_match_sources():
    node = shutil.which("node")
    assert node, "node is required to rebuild the contracts (make test installs node_modules)"
    out = subprocess.run(
        [node, str(ROOT / "scripts" / "compile_contracts.js"), "--stdout"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    rebuilt = json.loads(out)
    for name in ("GpuMarket", "TestDollar"):
        committed = contracts.load_artifact(name)
        assert rebuilt[name]["abi"] == committed["abi"], f"{name} ABI differs from its source: run `make contracts`"
        assert rebuilt[name]["bytecode"] == committed["bytecode"], f"{name} bytecode differs: run `make contracts`"
        assert rebuilt[name]["compiler"] == committed["compiler"]


@pytest.mark.parametrize("name", ["GpuMarket", "TestDollar"])
def test_artifacts_ship_inside_the_package(name):
    artifact = contracts.load_artifact(name)
    assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 1000
    assert any(entry["type"] == "constructor" for entry in artifact["abi"])
