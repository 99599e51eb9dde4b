"""Thin REST handlers under ``<base_url>/gpumarket/`` over a :class:`MarketManager`.

Every handler requires the Jupyter login (token or cookie, with XSRF for
browsers), runs the manager call in a worker thread so chain round trips never
block the server's event loop, and answers JSON. A :class:`GpuMarketError`
becomes ``{"error": <its message>, "type": <category>}`` with a matching
status; anything else becomes a generic 500 whose traceback goes to the
server log only. The routes are listed in :data:`ROUTES` and ``API.md``.
"""

from __future__ import annotations

import asyncio
import json

import tornado.web
from jupyter_server.base.handlers import APIHandler

from .. import errors
from ..errors import GpuMarketError, InvalidRequest

#: Status code per error category, most specific first (InsufficientFunds is an InvalidRequest).
STATUS = [
    (errors.InvalidRequest, 400),
    (errors.NotAuthorized, 403),
    (errors.NotFound, 404),
    (errors.WrongState, 409),
    (errors.ProviderUnreachable, 502),
    (errors.ChainUnavailable, 503),
]
INTERNAL = "internal error; see the server log"


def status_of(exc: GpuMarketError) -> int:
    """HTTP status for a package error.

    >>> status_of(errors.InsufficientFunds("x")), status_of(errors.ChainUnavailable("y"))
    (400, 503)
    """
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 500)


def category_of(exc: GpuMarketError) -> str:
    """The public category name (``NotFound``), not an internal class such as ``LeaseNotFound``.

    >>> category_of(errors.InsufficientFunds("x"))
    'InsufficientFunds'
    """
    public = vars(errors).values()
    return next(kind.__name__ for kind in type(exc).__mro__ if kind in public)


class MarketHandler(APIHandler):
    """Base: the manager, its calls in a thread, and JSON errors without internal details."""

    def initialize(self, manager) -> None:
        self.manager = manager

    async def answer(self, method, *args, status: int = 200) -> None:
        try:
            result = await asyncio.to_thread(method, *args)
        except GpuMarketError as exc:
            self.refuse(exc)
            return
        except Exception:
            self.log.exception("gpumarket: %s %s failed", self.request.method, self.request.path)
            self.set_status(500)
            self.finish(json.dumps({"error": INTERNAL, "type": "InternalError"}))
            return
        self.set_status(status)
        self.finish(json.dumps(result))

    def refuse(self, exc: GpuMarketError) -> None:
        """Answer with the error's own message (written for users) and its category's status."""
        self.set_status(status_of(exc))
        self.finish(json.dumps({"error": str(exc), "type": category_of(exc)}))

    def json_body(self) -> dict:
        """The request body as a JSON object, or InvalidRequest saying what to send."""
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise InvalidRequest('the body must be JSON, e.g. {"gpus": 1, "max_price": "3.00", "hours": 1}') from None
        if not isinstance(body, dict):
            raise InvalidRequest('the body must be a JSON object, e.g. {"gpus": 1, "max_price": "3.00", "hours": 1}')
        return body

    def write_error(self, status_code: int, **kwargs) -> None:
        """Tornado's own errors (e.g. 405) in the same shape, without exception text."""
        self.set_header("Content-Type", "application/json")
        reason = self._reason if status_code < 500 else INTERNAL
        self.finish(json.dumps({"error": reason, "type": "HTTPError"}))


class WalletHandler(MarketHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.wallet)


class OffersHandler(MarketHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.offers)


class LeasesHandler(MarketHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.leases)

    @tornado.web.authenticated
    async def post(self) -> None:
        try:
            body = self.json_body()
        except InvalidRequest as exc:
            self.refuse(exc)
            return
        await self.answer(self.manager.rent, body, status=201)


class ReleaseHandler(MarketHandler):
    @tornado.web.authenticated
    async def post(self, lease_id: str) -> None:
        await self.answer(self.manager.release, lease_id)


class ReleaseAllHandler(MarketHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        await self.answer(self.manager.release_all)


class HistoryHandler(MarketHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.history)


class BudgetHandler(MarketHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.budget)


class ClassroomHandler(MarketHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.classroom)


class NoticesHandler(MarketHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.notices, self.get_query_argument("since", "0"))


#: Path under ``<base_url>/gpumarket/`` -> handler.
ROUTES = [
    ("wallet", WalletHandler),
    ("offers", OffersHandler),
    ("leases", LeasesHandler),
    (r"leases/([^/]+)/release", ReleaseHandler),
    ("release-all", ReleaseAllHandler),
    ("history", HistoryHandler),
    ("budget", BudgetHandler),
    ("classroom", ClassroomHandler),
    ("notices", NoticesHandler),
]
