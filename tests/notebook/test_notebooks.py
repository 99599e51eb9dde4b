"""The example notebooks under nbval against the test devnet, and a scan for leaked keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from jupyter_gpumarket.chain.devnet import dev_signer
from jupyter_gpumarket.notebook.runner import execute_notebook, receipts_in

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "example-notebooks"


def test_example_notebooks_pass_nbval(market_net):
    env = {**os.environ, "GPUMARKET_HOME": str(market_net.state_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-sanitize-with", str(NOTEBOOKS / "sanitize.cfg"),
         "-p", "no:cacheprovider", "-q", "-o", "addopts=", str(NOTEBOOKS)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "passed" in summary and "failed" not in summary, summary
    for name in ("quickstart", "finetune", "classroom", "provider"):
        assert (NOTEBOOKS / f"{name}.ipynb").exists()


def test_saved_notebooks_have_outputs_and_receipts():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.get("outputs") or c.get("execution_count") for c in code), f"{path.name} has no outputs"
    receipts = receipts_in(nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4))
    assert receipts and receipts[0]["chain_id"] == 31337 and len(receipts[0]["leases"]) == 2


def secrets() -> list[str]:
    """Every devnet account's private key, as it could appear in text."""
    out = []
    for index in range(10):
        key = dev_signer(index)._account.key.hex().removeprefix("0x")  # test-only access to the key
        out += [key, key.upper()]
    return out


@pytest.fixture(scope="module")
def executed_quickstart(market_net, tmp_path_factory):
    out = tmp_path_factory.mktemp("executed") / "quickstart.ipynb"
    return execute_notebook(NOTEBOOKS / "quickstart.ipynb", market_net.state_dir, out), out


def test_no_private_key_in_any_output_notebook_or_log(market_net, executed_quickstart):
    nb, out = executed_quickstart
    assert receipts_in(nb), "the executed quickstart shows a receipt"
    texts = {str(out): out.read_text()}
    texts.update({str(p): p.read_text() for p in NOTEBOOKS.glob("*.ipynb")})
    texts.update({str(p): p.read_text(errors="replace") for p in Path(market_net.state_dir).iterdir() if p.is_file()})
    keys = secrets()
    leaks = [(name, key[:6]) for name, text in texts.items() for key in keys if key in text]
    assert not leaks, f"private key material found in {leaks}"
