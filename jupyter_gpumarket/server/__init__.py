"""Jupyter server extension: the market's REST API for the JupyterLab sidebar and status bar.

Enabled by the ``jupyter-config`` file the package installs (or
``jupyter server extension enable jupyter_gpumarket.server``); it serves, under
``<base_url>/gpumarket/``, the wallet, offers, live leases (rent and release),
history, budget and classroom views and the watchdog's notices described in ``API.md`` next to this file.
The account and chain come from the same ``gpumarket.*`` dask config as kernels
(``DASK_GPUMARKET__DEVNET=true`` for the devnet in ``$GPUMARKET_HOME``).

Leases the server rents are held by it (and marked as held in the lease
history) until released. If the server stops, they stay live on chain and in
the history: the next server lists them and can release them, and the
account's watchdog releases them once no process has held them for
``gpumarket.idle-timeout`` seconds.
"""

from __future__ import annotations

import importlib
import threading

from jupyter_server.utils import url_path_join

from .handlers import ROUTES
from .manager import MarketManager

#: Where the handlers find the manager, e.g. ``serverapp.web_app.settings[SETTINGS_KEY]``.
SETTINGS_KEY = "gpumarket_manager"


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "jupyter_gpumarket.server"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Create the manager (it connects on first use) and register the handlers."""
    manager = MarketManager()
    web_app = serverapp.web_app
    web_app.settings[SETTINGS_KEY] = manager
    base = url_path_join(web_app.settings["base_url"], "gpumarket")
    web_app.add_handlers(".*$", [(url_path_join(base, path), handler, {"manager": manager}) for path, handler in ROUTES])
    serverapp.log.info("jupyter_gpumarket: market API at %s/", base)


async def _start_jupyter_server_extension(serverapp) -> None:
    """Once every extension is loaded: import the chain and Dask stack (seconds) in the
    background, so neither the server's start nor the sidebar's first request waits for it."""
    threading.Thread(target=_import_market_stack, name="gpumarket-import", daemon=True).start()


def _import_market_stack() -> None:
    for name in ("ledger", "rentform"):  # the ledger brings session, market and cluster
        importlib.import_module(f"{__name__}.{name}")
