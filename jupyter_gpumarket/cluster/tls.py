"""TLS pinning for one order: a per-order tenant CA and the provider's key pair.

The scheme (see DESIGN.md, "Compute"):

1. The tenant creates a :class:`TenantCA` per order; ``TenantCA.fingerprint``
   (SHA-256 of the CA certificate DER) goes on chain with the order.
2. A provider generates a :class:`ProviderKey`; ``ProviderKey.fingerprint``
   (SHA-256 of its SubjectPublicKeyInfo DER) goes on chain with its bid.
3. When the tenant accepts the bid, the provider sends a CSR
   (:meth:`ProviderKey.csr`). :meth:`TenantCA.sign_provider` refuses any CSR
   whose key is not the one pinned in the bid, and otherwise issues a
   short-lived certificate usable both as TLS server and client (scheduler,
   workers and nannies connect to each other).
4. Every scheduler, worker and client then trusts *only* that CA
   (:meth:`ProviderKey.security`, :meth:`TenantCA.client_security`), with
   ``require_encryption=True``. Dask's TLS contexts always set
   ``verify_mode = CERT_REQUIRED``, on listeners too, so the TLS is mutual:
   a peer without a certificate from the tenant CA cannot connect.

Keys are ECDSA P-256: fast to generate and cheap in handshakes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import os
import stat
import tempfile
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed import Security

from jupyter_gpumarket.errors import InvalidRequest, NotAuthorized

__all__ = [
    "ProviderKey",
    "TenantCA",
    "cert_fingerprint",
    "key_fingerprint",
]

PathLike = Union[str, os.PathLike]

#: Default lifetime of a provider certificate; a lease that outlives it asks for a new one.
PROVIDER_CERT_VALIDITY = _dt.timedelta(days=2)
#: Lifetime of the tenant CA (one order).
CA_VALIDITY = _dt.timedelta(days=30)
#: Backdating of ``not_valid_before`` to tolerate clock skew between machines.
CLOCK_SKEW = _dt.timedelta(minutes=5)

_CURVE = ec.SECP256R1


# ---------------------------------------------------------------------------
# fingerprints and parsing helpers


def _as_bytes(pem: bytes | str) -> bytes:
    if isinstance(pem, str):
        return pem.encode("ascii", errors="strict")
    if isinstance(pem, (bytes, bytearray, memoryview)):
        return bytes(pem)
    raise InvalidRequest(f"expected PEM bytes or str, got {type(pem).__name__}")


def _load_cert(cert_pem: bytes | str, what: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_as_bytes(cert_pem))
    except (ValueError, TypeError, UnicodeError) as e:
        raise InvalidRequest(f"malformed PEM {what}: {e}") from None


def cert_fingerprint(cert_pem: bytes | str | x509.Certificate) -> bytes:
    """SHA-256 (32 bytes) of a certificate's DER encoding."""
    cert = cert_pem if isinstance(cert_pem, x509.Certificate) else _load_cert(cert_pem)
    return cert.fingerprint(hashes.SHA256())


def key_fingerprint(public_key) -> bytes:
    """SHA-256 (32 bytes) of a public key's SubjectPublicKeyInfo DER.

    Accepts a ``cryptography`` public key, a private key (its public half is
    used) or a PEM-encoded public key.
    """
    if isinstance(public_key, (bytes, str)):
        try:
            public_key = serialization.load_pem_public_key(_as_bytes(public_key))
        except (ValueError, TypeError, UnicodeError) as e:
            raise InvalidRequest(f"malformed PEM public key: {e}") from None
    if hasattr(public_key, "private_bytes") and hasattr(public_key, "public_key"):
        public_key = public_key.public_key()
    try:
        der = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except AttributeError:
        raise InvalidRequest(f"not a public key: {type(public_key).__name__}") from None
    return hashlib.sha256(der).digest()


def _check_fingerprint(value: bytes, what: str) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise InvalidRequest(f"{what} is not hex: {value!r}") from None
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise InvalidRequest(f"{what} must be 32 bytes (SHA-256), got {value!r}")
    return bytes(value)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    if isinstance(hosts, str):
        hosts = [hosts]
    names: list[x509.GeneralName] = []
    for h in hosts:
        if not isinstance(h, str) or not h.strip():
            raise InvalidRequest(f"host names must be non-empty strings, got {h!r}")
        h = h.strip().strip("[]")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            try:
                names.append(x509.DNSName(h))
            except ValueError as e:
                raise InvalidRequest(f"invalid host name {h!r}: {e}") from None
    if not names:
        raise InvalidRequest("at least one host (IP or DNS name) is needed for the certificate")
    return x509.SubjectAlternativeName(names)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _key_pem(key, password: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode("ascii")


def _write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise
    return path


class _suppress_oserror:
    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        return et is not None and issubclass(et, OSError)


def _read_private(path: PathLike) -> bytes:
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidRequest(f"no key file at {path}") from None
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NotAuthorized(
            f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            "run `chmod 600` on it"
        )
    return path.read_bytes()


def _split_key_and_cert(blob: bytes, what: str, password: bytes | None = None):
    try:
        key = serialization.load_pem_private_key(blob, password=password)
    except TypeError:
        raise NotAuthorized(f"the {what} file is encrypted and needs its password") from None
    except ValueError as e:
        if password is not None and b"ENCRYPTED" in blob:
            raise NotAuthorized(f"wrong password for the {what} file") from None
        raise InvalidRequest(f"malformed {what} file: no usable private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidRequest(f"{what} file holds a {type(key).__name__}, expected an EC key")
    return key


def _security(ca_pem: str, roles: dict[str, tuple[str, str]], workdir: PathLike | None) -> Security:
    """A Security trusting only ``ca_pem``, with (cert, key) per role.

    ``distributed.Security`` accepts PEM contents directly (it tells them from
    paths by the newline in them). With ``workdir`` the PEMs are written there
    as 0600 files instead and the Security holds paths.
    """
    kwargs: dict[str, str] = {}
    if workdir is not None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca_path = workdir / "ca.pem"
        _write_private(ca_path, ca_pem.encode())
        ca_pem = str(ca_path)
        written: dict[tuple[str, str], tuple[str, str]] = {}
        for role, pair in roles.items():
            if pair not in written:
                n = len(written)
                cert_path = _write_private(workdir / f"cert{n}.pem", pair[0].encode())
                key_path = _write_private(workdir / f"key{n}.pem", pair[1].encode())
                written[pair] = (str(cert_path), str(key_path))
            roles[role] = written[pair]
    for role, (cert, key) in roles.items():
        kwargs[f"tls_{role}_cert"] = cert
        kwargs[f"tls_{role}_key"] = key
    return Security(require_encryption=True, tls_ca_file=ca_pem, **kwargs)


# ---------------------------------------------------------------------------
# tenant side


class TenantCA:
    """A per-order certificate authority held by the tenant.

    The private key stays inside the object: it is not exposed as an
    attribute, not pickled, not shown by ``repr``; :meth:`save` writes it to
    a 0600 file so that a restarted kernel can re-attach with :meth:`load`.
    """

    __slots__ = ("__key", "_cert", "_cert_pem", "_client")

    def __init__(self, _key: ec.EllipticCurvePrivateKey, _cert: x509.Certificate):
        if key_fingerprint(_cert.public_key()) != key_fingerprint(_key):
            raise InvalidRequest("CA certificate does not belong to the CA key")
        self.__key = _key
        self._cert = _cert
        self._cert_pem = _cert.public_bytes(serialization.Encoding.PEM)
        self._client: tuple[str, str] | None = None

    @classmethod
    def create(cls, name: str = "gpumarket tenant CA", validity: _dt.timedelta = CA_VALIDITY) -> TenantCA:
        key = ec.generate_private_key(_CURVE())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jupyter_gpumarket"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    # -- public data ---------------------------------------------------------

    @property
    def cert_pem(self) -> bytes:
        return self._cert_pem

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the CA certificate DER (32 bytes); stored on chain with the order."""
        return self._cert.fingerprint(hashes.SHA256())

    def __repr__(self) -> str:
        return f"TenantCA(fingerprint={self.fingerprint.hex()})"

    def __reduce__(self):
        raise TypeError("TenantCA holds a private key and cannot be pickled; use save()/load()")

    # -- issuing -------------------------------------------------------------

    def _issue(
        self,
        public_key,
        subject: x509.Name,
        *,
        server: bool,
        hosts: list[str] | None,
        validity: _dt.timedelta,
    ) -> x509.Certificate:
        now = _now()
        not_after = min(now + validity, self._cert.not_valid_after_utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.__key.public_key()),
                critical=False,
            )
        )
        if hosts is not None:
            builder = builder.add_extension(_san(hosts), critical=False)
        return builder.sign(self.__key, hashes.SHA256())

    def sign_provider(
        self,
        csr_pem: bytes,
        expected_key_fingerprint: bytes,
        hosts: list[str],
        validity: _dt.timedelta = PROVIDER_CERT_VALIDITY,
    ) -> bytes:
        """Issue the certificate of an accepted provider; returns it as PEM.

        Refuses (:class:`NotAuthorized`) a CSR whose signature does not verify
        or whose public key is not the one pinned in the provider's bid
        (``expected_key_fingerprint``). The certificate is valid as TLS server
        and client, names ``hosts`` (IP addresses and DNS names) and lives
        ``validity`` (2 days by default, never past the CA's own expiry).
        """
        expected = _check_fingerprint(expected_key_fingerprint, "expected_key_fingerprint")
        try:
            csr = x509.load_pem_x509_csr(_as_bytes(csr_pem))
        except (ValueError, TypeError, UnicodeError) as e:
            raise InvalidRequest(f"malformed PEM certificate signing request: {e}") from None
        if not csr.is_signature_valid:
            raise NotAuthorized("CSR signature does not verify: the requester does not hold the key")
        public_key = csr.public_key()
        if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise InvalidRequest(f"unsupported key type in CSR: {type(public_key).__name__}")
        got = key_fingerprint(public_key)
        if got != expected:
            raise NotAuthorized(
                "CSR key does not match the key pinned in the provider's bid: "
                f"bid has {expected.hex()}, CSR has {got.hex()}"
            )
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jupyter_gpumarket provider"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"provider-{got.hex()[:16]}"),
            ]
        )
        cert = self._issue(public_key, subject, server=True, hosts=hosts, validity=validity)
        return cert.public_bytes(serialization.Encoding.PEM)

    def client_security(self, workdir: PathLike | None = None) -> Security:
        """``distributed.Security`` for the tenant's own ``Client``.

        Uses a client certificate this CA issues for itself (created once per
        object) and trusts only this CA; ``require_encryption=True``. With
        ``workdir`` the PEMs go into 0600 files there, else they are passed
        in memory.
        """
        if self._client is None:
            key = ec.generate_private_key(_CURVE())
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jupyter_gpumarket tenant"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"tenant-client-{self.fingerprint.hex()[:16]}"),
                ]
            )
            cert = self._issue(
                key.public_key(), subject, server=False, hosts=None, validity=self._cert.not_valid_after_utc - _now()
            )
            self._client = (cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))
        return _security(self._cert_pem.decode(), {"client": self._client}, workdir)

    # -- persistence ---------------------------------------------------------

    def save(self, path: PathLike, password: bytes | None = None) -> Path:
        """Write the CA key (encrypted when a ``password`` is given) and certificate to ``path`` (mode 0600)."""
        blob = _key_pem(self.__key, password).encode() + self._cert_pem
        return _write_private(Path(path), blob)

    @classmethod
    def load(cls, path: PathLike, password: bytes | None = None) -> TenantCA:
        """Re-attach to a CA written by :meth:`save` (refuses group/world-readable files)."""
        blob = _read_private(path)
        key = _split_key_and_cert(blob, "tenant CA", password)
        cert = _load_cert(blob, "tenant CA certificate")
        return cls(key, cert)


# ---------------------------------------------------------------------------
# provider side


class ProviderKey:
    """The provider's TLS key pair; its fingerprint goes into the on-chain bid."""

    __slots__ = ("__key",)

    def __init__(self, _key: ec.EllipticCurvePrivateKey):
        self.__key = _key

    @classmethod
    def generate(cls) -> ProviderKey:
        return cls(ec.generate_private_key(_CURVE()))

    @property
    def public_key(self):
        return self.__key.public_key()

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the SubjectPublicKeyInfo DER (32 bytes)."""
        return key_fingerprint(self.__key.public_key())

    def __repr__(self) -> str:
        return f"ProviderKey(fingerprint={self.fingerprint.hex()})"

    def __reduce__(self):
        raise TypeError("ProviderKey holds a private key and cannot be pickled; use save()/load()")

    def csr(self, hosts: list[str]) -> bytes:
        """A PEM certificate signing request for ``hosts`` (IPs / DNS names)."""
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"provider-{self.fingerprint.hex()[:16]}")])
            )
            .add_extension(_san(hosts), critical=False)
            .sign(self.__key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM)

    def security(
        self,
        ca_pem: bytes,
        cert_pem: bytes,
        workdir: PathLike | None = None,
        *,
        expected_ca_fingerprint: bytes | None = None,
    ) -> Security:
        """``distributed.Security`` for this provider's scheduler and workers.

        Trusts only ``ca_pem`` (the tenant CA of the order) and presents
        ``cert_pem`` (issued by it for this key) in every role: scheduler,
        worker and client (workers dial the scheduler and each other).
        ``require_encryption=True``; Dask requires a peer certificate on
        every TLS connection, so clients need one from the same CA.

        ``expected_ca_fingerprint`` (the order's on-chain value) is checked
        when given. Raises :class:`NotAuthorized` when the certificate is not
        for this key or not issued by the CA.
        """
        ca = _load_cert(ca_pem, "CA certificate")
        cert = _load_cert(cert_pem, "provider certificate")
        if expected_ca_fingerprint is not None:
            expected = _check_fingerprint(expected_ca_fingerprint, "expected_ca_fingerprint")
            if cert_fingerprint(ca) != expected:
                raise NotAuthorized(
                    f"CA certificate fingerprint {cert_fingerprint(ca).hex()} is not the "
                    f"order's pinned {expected.hex()}"
                )
        if key_fingerprint(cert.public_key()) != self.fingerprint:
            raise NotAuthorized("the certificate was issued for another key than this provider's")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise NotAuthorized(f"the certificate is not issued by the given CA: {e}") from None
        now = _now()
        if not (cert.not_valid_before_utc <= now + CLOCK_SKEW and now < cert.not_valid_after_utc):
            raise NotAuthorized(
                f"the certificate is not valid now (valid {cert.not_valid_before_utc} .. {cert.not_valid_after_utc})"
            )
        pair = (cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(self.__key))
        ca_text = ca.public_bytes(serialization.Encoding.PEM).decode()
        return _security(ca_text, {"scheduler": pair, "worker": pair, "client": pair}, workdir)

    def save(self, path: PathLike) -> Path:
        """Write the private key to ``path`` (mode 0600)."""
        return _write_private(Path(path), _key_pem(self.__key).encode())

    @classmethod
    def load(cls, path: PathLike) -> ProviderKey:
        return cls(_split_key_and_cert(_read_private(path), "provider key"))
