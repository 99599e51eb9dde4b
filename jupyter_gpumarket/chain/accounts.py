"""Chain accounts: an eth-account key from a keystore file or an env variable.

The private key lives only inside :class:`Signer`; its ``repr`` and ``str``
show the address, and nothing here logs or prints the key.

>>> signer = Signer.from_key("0x" + "11" * 32)
>>> signer
Signer(0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A)
>>> "11" * 32 in repr(signer) + str(signer)
False
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ..errors import InvalidRequest, NotAuthorized

#: Environment variables read by :meth:`Signer.from_env`.
KEY_ENV = "GPUMARKET_PRIVATE_KEY"
KEYSTORE_ENV = "GPUMARKET_KEYSTORE"
PASSWORD_ENV = "GPUMARKET_KEYSTORE_PASSWORD"


class Signer:
    """One account that signs transactions locally. Never exposes its key."""

    __slots__ = ("_account",)

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    @classmethod
    def from_key(cls, private_key: str | bytes) -> "Signer":
        try:
            return cls(Account.from_key(private_key))
        except (ValueError, TypeError):
            # Do not echo the value: it may be a real key with a typo.
            raise InvalidRequest("the private key is malformed; expected 32 bytes as 64 hex digits") from None

    @classmethod
    def from_keystore(cls, path: str | os.PathLike, password: str) -> "Signer":
        path = Path(path).expanduser()
        try:
            keyfile = json.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidRequest(f"no keystore at {path}; pass the path of an eth-account keystore JSON") from None
        except json.JSONDecodeError:
            raise InvalidRequest(f"{path} is not a keystore JSON file") from None
        try:
            key = Account.decrypt(keyfile, password)
        except ValueError:
            raise NotAuthorized(f"wrong password for keystore {path}") from None
        return cls(Account.from_key(key))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Signer":
        """From ``GPUMARKET_PRIVATE_KEY``, else ``GPUMARKET_KEYSTORE`` + ``GPUMARKET_KEYSTORE_PASSWORD``."""
        env = os.environ if environ is None else environ
        if env.get(KEY_ENV):
            return cls.from_key(env[KEY_ENV])
        if env.get(KEYSTORE_ENV):
            return cls.from_keystore(env[KEYSTORE_ENV], env.get(PASSWORD_ENV, ""))
        raise InvalidRequest(f"no account configured; set {KEY_ENV} or {KEYSTORE_ENV} (+ {PASSWORD_ENV})")

    @staticmethod
    def write_keystore(private_key: str | bytes, path: str | os.PathLike, password: str) -> Path:
        """Encrypt a key into a keystore file readable only by its owner."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        encrypted = Account.encrypt(private_key, password)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(encrypted, f)
        return path

    @property
    def address(self) -> str:
        return self._account.address

    def sign_transaction(self, tx: dict):
        return self._account.sign_transaction(tx)

    def sign_typed_data(self, domain: dict, types: dict, message: dict):
        return self._account.sign_typed_data(domain, types, message)

    def sign_message(self, message):
        return self._account.sign_message(message)

    def __repr__(self) -> str:
        return f"Signer({self.address})"

    __str__ = __repr__

    def __reduce__(self):
        # Pickling would copy the key into whatever stores the pickle (a Dask task, a notebook).
        raise TypeError("Signer holds a private key and cannot be pickled")
