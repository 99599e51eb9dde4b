"""Cell receipts: what a ``%%gpurent`` cell cost, as a MIME bundle saved with the notebook.

The JSON part (``application/vnd.gpumarket.receipt+json``) is for tools; text
and HTML fallbacks are for people. Only public facts go in: addresses of
contracts, lease and provider ids, prices, seconds, amounts, transaction
hashes. Never a key.

>>> r = CellReceipt(chain_id=31337, market="0xM", symbol="TUSD", decimals=6, wall_seconds=1.5,
...                 leases=[LeaseLine(2, 1, "NVIDIA H100", 1, 2_900_000, 10, 8_055, "active", ())])
>>> r.cost
8055
>>> print(r.text())
gpumarket receipt: 0.008055 TUSD for this cell (1.5 s, chain 31337)
  lease 2  provider 1  1x NVIDIA H100  2.900000 TUSD/GPU-h  10 GPU-s  0.008055 TUSD  active
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field

from ..spec import Money

MIME_TYPE = "application/vnd.gpumarket.receipt+json"


@dataclass(frozen=True)
class LeaseLine:
    lease: int
    provider: int
    gpu: str
    gpus: int
    price_per_gpu_hour: int
    gpu_seconds: int  # during this cell
    cost: int  # base units accrued during this cell
    status: str  # "active" (kept for later cells) or "closed"
    tx_hashes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CellReceipt:
    chain_id: int
    market: str
    symbol: str
    decimals: int
    wall_seconds: float
    leases: list[LeaseLine] = field(default_factory=list)
    refunded: int = 0  # returned to the tenant by leases released in this cell

    @property
    def cost(self) -> int:
        return sum(line.cost for line in self.leases)

    def money(self, amount: int) -> str:
        return str(Money(amount, self.decimals, self.symbol))

    def to_json(self) -> dict:
        data = asdict(self)
        data["cost"] = self.cost
        data["version"] = 1
        return data

    def text(self) -> str:
        lines = [f"gpumarket receipt: {self.money(self.cost)} for this cell "
                 f"({self.wall_seconds:.1f} s, chain {self.chain_id})"]
        for ln in self.leases:
            lines.append(
                f"  lease {ln.lease}  provider {ln.provider}  {ln.gpus}x {ln.gpu}  "
                f"{self.money(ln.price_per_gpu_hour)}/GPU-h  {ln.gpu_seconds} GPU-s  {self.money(ln.cost)}  {ln.status}"
            )
        if self.refunded:
            lines.append(f"  refunded on release: {self.money(self.refunded)}")
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><td>{ln.lease}</td><td>{ln.provider}</td><td>{ln.gpus}× {e(ln.gpu)}</td>"
            f"<td>{e(self.money(ln.price_per_gpu_hour))}</td><td>{ln.gpu_seconds}</td>"
            f"<td>{e(self.money(ln.cost))}</td><td>{e(ln.status)}</td>"
            f"<td>{'<br>'.join(f'<code>{e(h[:10])}…</code>' for h in ln.tx_hashes)}</td></tr>"
            for ln in self.leases
        )
        refund = f"<p>Refunded on release: {e(self.money(self.refunded))}</p>" if self.refunded else ""
        return (
            f'<div class="gpumarket-receipt"><b>gpumarket receipt</b>: {e(self.money(self.cost))} for this cell '
            f"({self.wall_seconds:.1f} s, chain {self.chain_id})"
            "<table><tr><th>lease</th><th>provider</th><th>GPUs</th><th>price/GPU-h</th><th>GPU-s</th>"
            f"<th>cost</th><th>status</th><th>transactions</th></tr>{rows}</table>{refund}</div>"
        )

    def bundle(self) -> dict:
        """The MIME bundle for ``IPython.display.display(bundle, raw=True)``."""
        return {MIME_TYPE: self.to_json(), "text/plain": self.text(), "text/html": self.html()}
