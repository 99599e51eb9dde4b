"""The compiled contracts shipped inside the package (ABI + bytecode).

``make contracts`` rebuilds them from ``contracts/*.sol`` with the pinned solc
from npm; users never need a compiler.

>>> sorted(load_artifact("GpuMarket"))[:3]
['abi', 'bytecode', 'compiler']
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

ARTIFACTS_DIR = Path(__file__).parent / "artifacts"
SOURCES_DIR = Path(__file__).parent / "contracts"


@cache
def load_artifact(name: str) -> dict:
    """The artifact of contract ``name`` (``GpuMarket`` or ``TestDollar``)."""
    return json.loads((ARTIFACTS_DIR / f"{name}.json").read_text())


def abi(name: str) -> list[dict]:
    return load_artifact(name)["abi"]


def bytecode(name: str) -> str:
    return load_artifact(name)["bytecode"]
