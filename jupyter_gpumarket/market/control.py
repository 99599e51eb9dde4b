"""The provider's control endpoint: how a tenant hands over TLS and gets heartbeats.

Everything that crosses it is public or signed, so it runs over plain HTTP:
the provider's CSR (its public key, matching the fingerprint in its bid), the
tenant's CA and the certificate it signed for the provider (authorised by the
tenant's chain key over their hashes), the package set the workers need (its
digest is signed with the rest), and the provider's signed heartbeats. Dask
traffic itself only ever runs over mutual TLS.

A provider that cannot run the package set answers 422 with a structured
refusal (package, wanted, reason), which :class:`ControlClient` raises as
:class:`~jupyter_gpumarket.cluster.environment.EnvironmentRefused` with the
text sanitised and bounded; ``POST /environment`` asks the same question before
any lease exists.

``ControlServer`` is a thin HTTP front over a handler object (the agent);
``ControlClient`` is what the tenant calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from eth_account import Account
from eth_account.messages import encode_defunct
from web3 import Web3

from ..cluster.environment import EnvironmentRefused, PackageSet, sanitise
from ..errors import GpuMarketError, InvalidRequest, NotAuthorized, NotFound, ProviderUnreachable, WrongState

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024


def start_digest(chain_id: int, market: str, lease_id: int, ca_pem: bytes, cert_pem: bytes, scheduler: str,
                 packages: PackageSet = PackageSet()) -> bytes:
    """What the tenant signs to start a lease's workers: binds lease, CA, cert, scheduler and package set."""
    return Web3.solidity_keccak(
        ["string", "uint256", "address", "uint256", "bytes32", "bytes32", "string", "bytes32"],
        [
            "gpumarket-start",
            chain_id,
            Web3.to_checksum_address(market),
            lease_id,
            hashlib.sha256(ca_pem).digest(),
            hashlib.sha256(cert_pem).digest(),
            scheduler,
            bytes.fromhex(packages.digest),
        ],
    )


def sign_start(signer, chain_id: int, market: str, lease_id: int, ca_pem: bytes, cert_pem: bytes, scheduler: str,
               packages: PackageSet = PackageSet()) -> str:
    digest = start_digest(chain_id, market, lease_id, ca_pem, cert_pem, scheduler, packages)
    return "0x" + bytes(signer.sign_message(encode_defunct(primitive=digest)).signature).hex()


def recover_start_signer(chain_id, market, lease_id, ca_pem, cert_pem, scheduler, signature: str,
                         packages: PackageSet = PackageSet()) -> str:
    digest = start_digest(chain_id, market, lease_id, ca_pem, cert_pem, scheduler, packages)
    try:
        return Account.recover_message(encode_defunct(primitive=digest), signature=signature)
    except Exception:
        raise NotAuthorized("the start request's signature is malformed") from None


class ControlHandler(Protocol):
    """What the agent provides to the control endpoint."""

    def info(self) -> dict: ...

    def lease_csr(self, lease_id: int) -> bytes: ...

    def start_lease(self, lease_id: int, ca_pem: bytes, cert_pem: bytes, scheduler: str, signature: str,
                    packages: PackageSet) -> dict: ...

    def check_environment(self, packages: PackageSet) -> dict: ...

    def heartbeat(self, lease_id: int) -> dict: ...


_STATUS = {NotAuthorized: 403, NotFound: 404, WrongState: 409, EnvironmentRefused: 422}


class ControlServer:
    """Serve a :class:`ControlHandler` over HTTP on ``host:port`` (0 = any free port)."""

    def __init__(self, handler: ControlHandler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self._httpd = ThreadingHTTPServer((host, port), _make_request_handler(handler))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gpumarket-control", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "ControlServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _make_request_handler(handler: ControlHandler):
    class RequestHandler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: the agent logs what matters
            logger.debug("control: " + format, *args)

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            if parts == ["info"]:
                self._call(handler.info)
            elif len(parts) == 3 and parts[0] == "leases" and parts[2] == "csr":
                self._call(lambda: {"csr_pem": handler.lease_csr(_lease_id(parts[1])).decode()})
            elif len(parts) == 3 and parts[0] == "leases" and parts[2] == "heartbeat":
                self._call(lambda: handler.heartbeat(_lease_id(parts[1])))
            else:
                self._reply(404, {"error": f"no such resource {self.path}"})

        def do_POST(self) -> None:
            parts = self.path.strip("/").split("/")
            is_start = len(parts) == 3 and parts[0] == "leases" and parts[2] == "start"
            if not is_start and parts != ["environment"]:
                self._reply(404, {"error": f"no such resource {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                if length > MAX_BODY_BYTES:
                    raise ValueError("request too large")
                body = json.loads(self.rfile.read(length) or b"{}")
                packages = PackageSet.from_dict(body.get("packages") or {})
                if is_start:
                    args = (body["ca_pem"].encode(), body["cert_pem"].encode(), body.get("scheduler") or "",
                            body["signature"], packages)
            except InvalidRequest as exc:
                self._reply(400, {"error": str(exc)})
                return
            except (ValueError, KeyError, AttributeError):
                self._reply(400, {"error": "expected JSON with ca_pem, cert_pem, scheduler, signature and packages"})
                return
            if is_start:
                self._call(lambda: handler.start_lease(_lease_id(parts[1]), *args))
            else:
                self._call(lambda: handler.check_environment(packages))

        def _call(self, fn) -> None:
            try:
                self._reply(200, fn())
            except GpuMarketError as exc:
                status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
                payload = {"error": str(exc)}
                if isinstance(exc, EnvironmentRefused):
                    payload["refusal"] = exc.to_dict()
                self._reply(status, payload)
            except Exception:
                # Internal details stay in the provider's log, never in the reply.
                logger.exception("control endpoint failed on %s", self.path)
                self._reply(500, {"error": "internal error in the provider agent"})

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return RequestHandler


def _lease_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise NotFound(f"{text!r} is not a lease id") from None


class ControlClient:
    """The tenant's calls to one provider's control endpoint."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def info(self) -> dict:
        return self._request("GET", "/info")

    def csr(self, lease_id: int) -> bytes:
        return self._request("GET", f"/leases/{lease_id}/csr")["csr_pem"].encode()

    def start(self, lease_id: int, ca_pem: bytes, cert_pem: bytes, scheduler: str, signature: str, timeout=None,
              packages: PackageSet = PackageSet()) -> dict:
        """Start the lease's workers; a package set to build may take the provider minutes (10 at most)."""
        body = {"ca_pem": ca_pem.decode(), "cert_pem": cert_pem.decode(), "scheduler": scheduler, "signature": signature,
                "packages": packages.to_dict()}
        wait = timeout or max(self.timeout, 600 if packages else 60)
        return self._request("POST", f"/leases/{lease_id}/start", body, timeout=wait)

    def check_environment(self, packages: PackageSet, timeout: float = 120.0) -> dict:
        """Whether the provider can run ``packages`` (``{"install": [...]}``), or EnvironmentRefused."""
        return self._request("POST", "/environment", {"packages": packages.to_dict()}, timeout=timeout)

    def heartbeat(self, lease_id: int, timeout: float | None = None) -> dict:
        return self._request("GET", f"/leases/{lease_id}/heartbeat", timeout=timeout)

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read())
                message = payload.get("error", exc.reason)
            except (ValueError, AttributeError):
                payload, message = {}, str(exc.reason)
            refusal = payload.get("refusal") if isinstance(payload, dict) else None
            if exc.code == 422 and isinstance(refusal, dict):
                raise EnvironmentRefused(*(sanitise(refusal.get(k, ""), 200) for k in ("package", "wanted", "reason"))) \
                    from None
            message = sanitise(message)
            cls = {403: NotAuthorized, 404: NotFound, 409: WrongState}.get(exc.code, GpuMarketError)
            raise cls(f"provider at {self.url}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ProviderUnreachable(f"provider at {self.url} does not answer ({exc.__class__.__name__})") from None
