"""Helpers for the JupyterLab tests: a `jupyter lab` subprocess and what the sidebar shows."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EXTENSION = "jupyter-gpumarket"
#: Generous: the machine is shared; these bound failures, they do not measure speed.
START_TIMEOUT = 180.0
UI_TIMEOUT_MS = 90_000


@dataclass
class FreshInstall:
    """The wheel built from this checkout, pip-installed (``--no-deps``) into a new venv.

    The venv sees the project venv's packages after its own, through a ``.pth``
    line, so its dependencies are there while the package itself, the lab
    extension and the server-extension switch can only come from the wheel.
    """

    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @classmethod
    def make(cls, where: Path) -> "FreshInstall":
        # No build isolation: hatchling and the jupyter-builder hook come from the project venv,
        # and the hook reuses the extension the editable install built (no npm run).
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                        "--disable-pip-version-check", "--wheel-dir", str(where / "dist"), str(ROOT)],
                       check=True, timeout=300)
        (wheel,) = (where / "dist").glob("jupyter_gpumarket-*.whl")
        fresh = cls(wheel, where / "fresh-venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh.venv)], check=True, timeout=120)
        site = subprocess.run([fresh.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              check=True, capture_output=True, text=True).stdout.strip()
        project_site = sysconfig.get_path("purelib")
        Path(site, "project_venv.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")
        subprocess.run([fresh.python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "--quiet",
                        "--disable-pip-version-check", str(wheel)], check=True, timeout=300, cwd=where)
        return fresh

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """An isolated Jupyter environment for this install; JupyterLab's own assets from the project venv."""
        return isolated_jupyter_env(home, JUPYTERLAB_DIR=str(Path(sys.prefix) / "share" / "jupyter" / "lab"), **extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_jupyter_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with Jupyter's per-user dirs moved under ``home``."""
    env = dict(os.environ)
    for name, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                      ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        env[name] = str(home / sub)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    env.update(extra)
    return env


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


class LabServer:
    """One `jupyter lab --no-browser` process on a free port with a known token.

    Example::

        with LabServer(sys.executable, tmp_path, env) as lab:
            lab.get("gpumarket/wallet").json()
    """

    def __init__(self, python: str, workdir: Path, env: dict[str, str]) -> None:
        self.python, self.workdir, self.env = python, workdir, env
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}/"
        self.log_path = workdir / "jupyter-lab.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "LabServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
                 "--LabApp.extension_manager=readonly",
                 f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                 f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.workdir}"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll /api/status until the server answers; fail with its log if it dies or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter lab exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("api/status", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise AssertionError(f"jupyter lab did not answer within {timeout:.0f} s:\n{self.log()}")

    def url(self, path: str) -> str:
        return self.base + path

    def lab_url(self) -> str:
        return self.url(f"lab?token={self.token}")

    def get(self, path: str, timeout: float = 60) -> requests.Response:
        return requests.get(self.url(path), headers=self._auth, timeout=timeout)

    def post(self, path: str, body: dict | None = None, timeout: float = 180) -> requests.Response:
        return requests.post(self.url(path), json=body or {}, headers=self._auth, timeout=timeout)

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def log(self, limit: int | None = 6000) -> str:
        """The server's output so far (its last ``limit`` characters; None for all)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if limit is None else text[-limit:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "LabServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def save_screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_market_sidebar(page, lab: LabServer):
    """Load the lab page (the token in the URL logs the browser in) and open the GPU market tab."""
    page.goto(lab.lab_url())
    page.locator('.lm-TabBar-tab[data-id="gpumarket-panel"]').click()
    panel = page.get_by_test_id("gpumarket-panel")
    panel.wait_for(state="visible")
    return panel


def token_text(amount: int, decimals: int, symbol: str) -> str:
    """How the sidebar writes an amount: exact, trailing zeros trimmed to two places ("2.90 TUSD")."""
    whole, fraction = divmod(amount, 10**decimals)
    digits = f"{fraction:0{decimals}d}".rstrip("0").ljust(min(2, decimals), "0") if decimals else ""
    return f"{whole}{'.' + digits if digits else ''} {symbol}"
