"""The wheel carries the prebuilt lab extension and the server switch, and a fresh install enables both.

(That the lab served from the fresh install shows a working sidebar is the browser
test's job: its JupyterLab runs from the same fresh install.)
"""

from __future__ import annotations

import json
import subprocess
import zipfile

from .harness import EXTENSION, strip_ansi

LABEXT = f"share/jupyter/labextensions/{EXTENSION}"
SERVER_CONFIG = "etc/jupyter/jupyter_server_config.d/jupyter_gpumarket.json"


def output_of(command: list, **run) -> str:
    """What a command printed (both streams), colours and runs of spaces removed."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, **run)
    return " ".join(strip_ansi(done.stdout + done.stderr).split())


def test_wheel_carries_the_prebuilt_extension_and_the_server_switch(fresh_install):
    with zipfile.ZipFile(fresh_install.wheel) as zf:
        names = zf.namelist()
        data = next(n.split("/data/")[0] for n in names if ".data/data/" in n) + "/data/"
        meta = json.loads(zf.read(data + LABEXT + "/package.json"))
        assert meta["name"] == EXTENSION
        entry = meta["jupyterlab"]["_build"]["load"]
        assert entry.startswith("static/remoteEntry.") and f"{data}{LABEXT}/{entry}" in names
        assert json.loads(zf.read(f"{data}{LABEXT}/install.json"))["packageName"] == "jupyter_gpumarket"
        assert json.loads(zf.read(data + SERVER_CONFIG)) == {
            "ServerApp": {"jpserver_extensions": {"jupyter_gpumarket.server": True}}}
        assert "jupyter_gpumarket/server/handlers.py" in names
        assert not any(n.startswith("jupyter_gpumarket/labextension/") for n in names)  # only as shared data


def test_fresh_install_lists_both_extensions_enabled(fresh_install, tmp_path):
    run = dict(env=fresh_install.env(tmp_path), cwd=tmp_path)  # not the checkout as cwd: it would shadow the wheel
    where = output_of([fresh_install.python, "-c", "import jupyter_gpumarket; print(jupyter_gpumarket.__file__)"],
                      **run)
    assert where.startswith(str(fresh_install.venv))

    listed = output_of([fresh_install.python, "-m", "jupyterlab.labextensions", "list"], **run)
    assert str(fresh_install.venv / "share" / "jupyter" / "labextensions") in listed
    assert f"{EXTENSION} v0.1.0 enabled OK (python, jupyter_gpumarket)" in listed
    servers = output_of([fresh_install.python, "-m", "jupyter_server.extension.serverextension", "list"], **run)
    assert "jupyter_gpumarket.server enabled" in servers and "jupyter_gpumarket.server OK" in servers
