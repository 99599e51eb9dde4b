"""Execute notebooks headless against a devnet (for ``make demo`` and the example notebooks).

The kernel finds the devnet through ``GPUMARKET_HOME``; nothing else changes
between a laptop, CI and a real chain but configuration.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .receipts import MIME_TYPE


@contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute_notebook(path: str | os.PathLike, state_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                     timeout: int = 600):
    """Run every cell of ``path`` in a fresh kernel that uses the devnet in ``state_dir``.

    Writes the executed notebook to ``out`` (default: in place) and returns it.
    Cells tagged ``raises-exception`` may fail; any other failure raises.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    with _env(GPUMARKET_HOME=str(state_dir), PYTHONUNBUFFERED="1"):
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                       record_timing=False).execute()
    nbformat.write(nb, Path(out) if out else path)
    return nb


def receipts_in(nb) -> list[dict]:
    """Every ``%%gpurent`` receipt saved in a notebook's outputs."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if MIME_TYPE in data:
                found.append(data[MIME_TYPE])
    return found
