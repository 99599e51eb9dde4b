"""Live widgets for the notebook, with plain-text fallbacks for terminal IPython.

- :class:`BidBoard` fills as bids arrive during the bidding window.
- :class:`LeaseCard` shows each lease's elapsed time and spend ticking, the
  cluster's task progress, and a release button.
- :class:`BudgetMeter` is the live spending meter: spent, committed and
  remaining under the session cap (and the account cap, across kernels).
- :class:`NoticeWatcher` shows the watchdog's notices (idle warnings,
  releases) in the notebook as they are posted.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from typing import Callable

from ..market.auction import cost_score
from ..spec import Bid, Money, Provider


def widgets_available() -> bool:
    """True inside a Jupyter kernel with ipywidgets (not in terminal IPython)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class BidBoard:
    """A table of bids as they arrive: provider, GPU, price, expected cost to complete, reputation."""

    def __init__(self, money: Callable[[int], Money], use_widgets: bool | None = None) -> None:
        self.money = money
        self.rows: list[tuple[Bid, Provider | None]] = []
        self.use_widgets = widgets_available() if use_widgets is None else use_widgets
        self.widget = None
        if self.use_widgets:
            import ipywidgets

            self.widget = ipywidgets.HTML(self._html())

    def display(self) -> None:
        if self.widget is not None:
            from IPython.display import display

            display(self.widget)
        else:
            print("bids:")

    def add(self, bid: Bid, provider: Provider | None) -> None:
        self.rows.append((bid, provider))
        if self.widget is not None:
            self.widget.value = self._html()
        else:
            print("  " + self._line(bid, provider))

    def _line(self, bid: Bid, provider: Provider | None) -> str:
        gpu = provider.claim.gpu_model if provider else "?"
        score = f"{cost_score(bid, provider):,.0f}" if provider else "?"
        rep = f"{provider.reliability:.2f}" if provider else "?"
        return (f"bid {bid.id}: provider {bid.provider_id} {bid.gpus}x {gpu} at "
                f"{self.money(bid.price_per_gpu_hour).short()}/GPU-h, cost/TFLOP {score}, reliability {rep}")

    def _html(self) -> str:
        e = html.escape
        body = "".join(
            f"<tr><td>{b.id}</td><td>{b.provider_id}</td><td>{b.gpus}× {e(p.claim.gpu_model if p else '?')}</td>"
            f"<td>{e(self.money(b.price_per_gpu_hour).short())}</td>"
            f"<td>{cost_score(b, p):,.0f}</td><td>{p.reliability:.2f}</td></tr>"
            if p else f"<tr><td>{b.id}</td><td>{b.provider_id}</td><td colspan=4>unknown provider</td></tr>"
            for b, p in self.rows
        )
        waiting = "" if self.rows else "<tr><td colspan=6><i>waiting for bids…</i></td></tr>"
        return ("<b>Bids</b><table><tr><th>bid</th><th>provider</th><th>GPUs</th><th>price/GPU-h</th>"
                f"<th>cost per TFLOP-h</th><th>reliability</th></tr>{body}{waiting}</table>")


class LeaseCard:
    """Leases of one cluster with elapsed time, spend ticking, task progress and a release button."""

    def __init__(self, cluster, money: Callable[[int], Money], on_release: Callable[[], None],
                 interval: float = 1.0, use_widgets: bool | None = None) -> None:
        self.cluster = cluster
        self.money = money
        self.on_release = on_release
        self.interval = interval
        self.use_widgets = widgets_available() if use_widgets is None else use_widgets
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.widget = self.html = self.button = None
        if self.use_widgets:
            import ipywidgets

            self.html = ipywidgets.HTML(self.render())
            self.button = ipywidgets.Button(description="Release", button_style="warning", icon="stop")
            self.button.on_click(lambda _: self.release())
            self.widget = ipywidgets.VBox([self.html, self.button])

    def display(self) -> None:
        if self.widget is not None:
            from IPython.display import display

            display(self.widget)
            self._thread = threading.Thread(target=self._tick, name="gpumarket-lease-card", daemon=True)
            self._thread.start()
        else:
            print(self.text())

    def release(self) -> None:
        self._stop.set()
        if self.button is not None:
            self.button.disabled = True
            self.button.description = "Released"
        self.on_release()
        if self.html is not None:
            self.html.value = self.render()

    def stop(self) -> None:
        self._stop.set()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.html.value = self.render()
            except Exception:  # the chain or cluster went away: stop ticking quietly
                return

    def _state(self) -> dict:
        leaser = self.cluster.leaser
        now = int(time.time())
        leases = [
            (h, max(0, now - h.lease.started_at), h.lease.accrued_at(now)) for h in list(leaser.leases.values())
        ]
        return {"leases": leases, "spent": leaser.spent(), "budget": leaser.budget, "tasks": self._tasks()}

    def _tasks(self) -> dict[str, int]:
        info = getattr(self.cluster, "scheduler_info", None) or {}
        workers = info.get("workers", {})
        return {
            "workers": len(workers),
            "executing": sum(w.get("metrics", {}).get("task_counts", {}).get("executing", 0) for w in workers.values()),
        }

    def text(self) -> str:
        state = self._state()
        lines = [f"cluster {self.cluster.name}: spent {self.money(state['spent']).short()} "
                 f"of {self.money(state['budget']).short()}"]
        for handle, elapsed, spent in state["leases"]:
            lines.append(f"  lease {handle.id}: provider {handle.provider.id} {handle.lease.gpus}x "
                         f"{handle.provider.claim.gpu_model}, {elapsed} s, {self.money(spent).short()}")
        return "\n".join(lines)

    def render(self) -> str:
        e = html.escape
        state = self._state()
        rows = "".join(
            f"<tr><td>{h.id}</td><td>{h.provider.id}</td><td>{h.lease.gpus}× {e(h.provider.claim.gpu_model)}</td>"
            f"<td>{e(self.money(h.lease.price_per_gpu_hour).short())}</td><td>{elapsed} s</td>"
            f"<td>{e(self.money(spent).short())}</td></tr>"
            for h, elapsed, spent in state["leases"]
        ) or "<tr><td colspan=6><i>no live lease</i></td></tr>"
        tasks = state["tasks"]
        return (
            f"<b>Cluster {e(self.cluster.name)}</b> · spent {e(self.money(state['spent']).short())} of "
            f"{e(self.money(state['budget']).short())} · {tasks['workers']} workers, {tasks['executing']} tasks running"
            "<table><tr><th>lease</th><th>provider</th><th>GPUs</th><th>price/GPU-h</th><th>elapsed</th>"
            f"<th>spent</th></tr>{rows}</table>"
        )


class BudgetMeter:
    """Spent, committed and remaining of the session cap (and the account cap), ticking.

    >>> BudgetMeter(session, use_widgets=False).text()                # doctest: +SKIP
    'budget 5.00 TUSD; spent 0.01 TUSD; committed 2.90 TUSD; remaining 2.10 TUSD'
    """

    def __init__(self, session, interval: float = 1.0, use_widgets: bool | None = None) -> None:
        self.session = session
        self.interval = interval
        self.use_widgets = widgets_available() if use_widgets is None else use_widgets
        self._stop = threading.Event()
        self.widget = self.bar = self.html = None
        if self.use_widgets:
            import ipywidgets

            self.html = ipywidgets.HTML(self.render())
            self.bar = ipywidgets.IntProgress(min=0, max=max(1, session.budget or 1), description="committed")
            self.widget = ipywidgets.VBox([self.bar, self.html])
            self._update()

    def display(self) -> None:
        if self.widget is None:
            print(self.text())
            return
        from IPython.display import display

        display(self.widget)
        threading.Thread(target=self._tick, name="gpumarket-budget-meter", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._update()
            except Exception:  # the chain or store went away: stop ticking quietly
                return

    def _update(self) -> None:
        meter = self.session.meter()
        self.html.value = self.render(meter)
        if meter["cap"] is not None:
            self.bar.max = max(1, meter["cap"])
            self.bar.value = min(meter["committed"], meter["cap"])
            self.bar.bar_style = "danger" if meter["remaining"] == 0 else ""
        else:
            self.bar.layout.display = "none"

    def _figures(self, meter: dict) -> dict[str, str]:
        money = lambda amount: self.session.money(amount).short() if amount is not None else "no cap"  # noqa: E731
        account = meter["account"]
        return {"cap": money(meter["cap"]), "spent": money(meter["spent"]), "committed": money(meter["committed"]),
                "remaining": money(meter["remaining"]), "account_cap": money(account["cap"]),
                "account_committed": money(account["committed"] or 0), "account_remaining": money(account["remaining"])}

    def text(self, meter: dict | None = None) -> str:
        meter = meter or self.session.meter()
        f = self._figures(meter)
        line = f"budget {f['cap']}; spent {f['spent']}; committed {f['committed']}; remaining {f['remaining']}"
        if meter["account"]["cap"] is not None:
            line += (f"\naccount cap {f['account_cap']} (all kernels): committed {f['account_committed']}; "
                     f"remaining {f['account_remaining']}")
        return line

    def render(self, meter: dict | None = None) -> str:
        meter = meter or self.session.meter()
        f = {k: html.escape(v) for k, v in self._figures(meter).items()}
        account = (f"<tr><td>account (all kernels)</td><td></td><td>{f['account_committed']}</td>"
                   f"<td>{f['account_remaining']}</td><td>{f['account_cap']}</td></tr>"
                   if meter["account"]["cap"] is not None else "")
        return ("<table><tr><th></th><th>spent</th><th>committed</th><th>remaining</th><th>cap</th></tr>"
                f"<tr><td>session</td><td>{f['spent']}</td><td>{f['committed']}</td><td>{f['remaining']}</td>"
                f"<td>{f['cap']}</td></tr>{account}</table>")


class NoticeWatcher:
    """Shows the watchdog's notices for this session's clusters as they arrive.

    A daemon thread polls the lease store every ``interval`` seconds; each new notice
    is shown once (``show``: printed into the output of the cell that started the
    watcher, by default) and marked shown in the store; after a release,
    ``on_released(cluster name)`` lets the notebook tidy up its client and cluster.
    """

    def __init__(self, session, show: Callable[[dict], None] | None = None, interval: float = 1.0,
                 on_released: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.show = show or self.print_notice
        self.on_released = on_released  # called with the cluster's name once its leases were released
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "NoticeWatcher":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="gpumarket-notices", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> list[dict]:
        """Show the notices not shown yet; returns them."""
        store = self.session.store
        names = [c.name for c in list(self.session.clusters)]
        if store is None or not names:
            return []
        fresh = store.notices(names, unshown=True)
        for notice in fresh:
            if notice["kind"] == "idle-warning" and notice["state"] != "open":
                store.update_notice(notice["id"], shown=True)  # withdrawn before anyone saw it
                continue
            self.show(notice)
            store.update_notice(notice["id"], shown=True)
            if notice["kind"] == "released" and self.on_released is not None:
                self.on_released(notice["cluster"])
        return fresh

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # a busy store: try again next time
                logging.getLogger(__name__).debug("notice check failed: %s", exc)

    @staticmethod
    def print_notice(notice: dict) -> None:
        print(f"⚠ gpumarket watchdog: {notice['message']}", flush=True)
