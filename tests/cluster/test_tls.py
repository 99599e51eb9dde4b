"""Certificates of the TLS pinning scheme (no network)."""

from __future__ import annotations

import os
import pickle
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from distributed import Security

from jupyter_gpumarket.cluster.tls import ProviderKey, TenantCA, cert_fingerprint, key_fingerprint
from jupyter_gpumarket.errors import InvalidRequest, NotAuthorized

HOSTS = ["127.0.0.1", "localhost"]


@pytest.fixture(scope="module")
def key() -> ProviderKey:
    return ProviderKey.generate()


def test_fingerprints_are_32_bytes_and_stable(ca, key):
    assert len(ca.fingerprint) == 32 and ca.fingerprint == ca.fingerprint
    assert ca.fingerprint == cert_fingerprint(ca.cert_pem) == cert_fingerprint(ca.cert_pem.decode())
    assert len(key.fingerprint) == 32 and key.fingerprint == key_fingerprint(key.public_key)
    assert ca.fingerprint != TenantCA.create().fingerprint
    assert key.fingerprint != ProviderKey.generate().fingerprint


def test_signed_provider_cert_is_server_and_client_with_sans(ca, key):
    cert_pem = ca.sign_provider(key.csr(HOSTS), key.fingerprint, ["127.0.0.1", "localhost", "gpu1.example.org", "::1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert key_fingerprint(cert.public_key()) == key.fingerprint
    cert.verify_directly_issued_by(ca.certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "gpu1.example.org"}
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days <= 3


def test_csr_with_another_key_than_the_bid_is_refused(ca, key):
    intruder = ProviderKey.generate()
    with pytest.raises(NotAuthorized, match="does not match the key pinned in the provider's bid"):
        ca.sign_provider(intruder.csr(HOSTS), key.fingerprint, HOSTS)


def test_malformed_inputs_are_invalid_requests(ca, key):
    with pytest.raises(InvalidRequest, match="malformed PEM"):
        ca.sign_provider(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n", key.fingerprint, HOSTS)
    with pytest.raises(InvalidRequest, match="32 bytes"):
        ca.sign_provider(key.csr(HOSTS), b"short", HOSTS)
    with pytest.raises(InvalidRequest):
        ca.sign_provider(key.csr(HOSTS), key.fingerprint, [])
    with pytest.raises(InvalidRequest, match="malformed PEM"):
        cert_fingerprint(b"garbage")
    with pytest.raises(InvalidRequest, match="malformed PEM"):
        key.security(b"garbage", b"garbage")


def test_provider_security_refuses_foreign_certificates(ca, other_ca, key):
    cert = ca.sign_provider(key.csr(HOSTS), key.fingerprint, HOSTS)
    with pytest.raises(NotAuthorized, match="not issued by the given CA"):
        key.security(other_ca.cert_pem, cert)
    with pytest.raises(NotAuthorized, match="pinned"):
        key.security(ca.cert_pem, cert, expected_ca_fingerprint=other_ca.fingerprint)
    with pytest.raises(NotAuthorized, match="another key"):
        ProviderKey.generate().security(ca.cert_pem, cert)


def test_provider_security_trusts_only_the_tenant_ca_mutually(ca, key):
    cert = ca.sign_provider(key.csr(HOSTS), key.fingerprint, HOSTS)
    sec = key.security(ca.cert_pem, cert)
    assert isinstance(sec, Security) and sec.require_encryption
    assert sec.tls_ca_file == ca.cert_pem.decode()  # PEM contents, no files needed
    for role in ("scheduler", "worker"):
        listen = sec.get_listen_args(role)["ssl_context"]
        assert listen.verify_mode == ssl.CERT_REQUIRED  # clients must present a certificate
        ca_certs = listen.get_ca_certs(binary_form=True)
        assert len(ca_certs) == 1 and cert_fingerprint(x509.load_der_x509_certificate(ca_certs[0])) == ca.fingerprint
        assert sec.get_connection_args(role)["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_client_security_and_workdir_files_are_private(ca, tmp_path):
    mem = ca.client_security()
    assert mem.require_encryption and mem.tls_client_cert and mem.tls_client_key
    assert mem.tls_ca_file == ca.cert_pem.decode()
    ctx = mem.get_connection_args("client")["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    on_disk = ca.client_security(tmp_path / "tls")
    for p in (on_disk.tls_ca_file, on_disk.tls_client_cert, on_disk.tls_client_key):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    client_cert = x509.load_pem_x509_certificate(open(on_disk.tls_client_cert, "rb").read())
    client_cert.verify_directly_issued_by(ca.certificate)


def test_ca_key_stays_inside_save_and_load(tmp_path, key):
    ca = TenantCA.create()
    assert repr(ca) == f"TenantCA(fingerprint={ca.fingerprint.hex()})"
    assert not any(isinstance(getattr(ca, a, None), ec.EllipticCurvePrivateKey) for a in dir(ca) if not a.startswith("_TenantCA"))
    with pytest.raises(TypeError):
        pickle.dumps(ca)
    path = ca.save(tmp_path / "order-7.ca")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = TenantCA.load(path)
    assert again.fingerprint == ca.fingerprint
    # the reloaded CA signs certificates the original CA's trust accepts
    cert = again.sign_provider(key.csr(HOSTS), key.fingerprint, HOSTS)
    key.security(ca.cert_pem, cert, expected_ca_fingerprint=ca.fingerprint)
    os.chmod(path, 0o644)
    with pytest.raises(NotAuthorized, match="chmod 600"):
        TenantCA.load(path)


def test_provider_key_save_and_load(tmp_path):
    key = ProviderKey.generate()
    assert "PRIVATE" not in repr(key)
    again = ProviderKey.load(key.save(tmp_path / "provider.key"))
    assert again.fingerprint == key.fingerprint
