"""servers/certs.py: the generated certificate is what Chromium pins and what TLS servers load."""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from servers import certs


def test_an_ecdsa_p256_certificate_for_loopback_valid_at_most_14_days():
    made = certs.generate(days=10)
    cert = x509.load_pem_x509_certificate(made.cert_pem)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert span == dt.timedelta(days=10)
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.timezone.utc) < cert.not_valid_after_utc
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    # The hash a page pins is the SHA-256 of the DER certificate, as the server presents it.
    assert made.sha256 == hashlib.sha256(ssl.PEM_cert_to_DER_cert(made.cert_pem.decode())).digest()
    assert len(made.sha256_hex) == 64


@pytest.mark.parametrize("days", [0, -1, 14.5, 30])
def test_a_lifetime_chromium_would_refuse_is_refused(days):
    with pytest.raises(ValueError, match="at most 14"):
        certs.generate(days=days)


def test_files_are_private_and_load_into_a_tls_context(tmp_path):
    made = certs.generate()
    combined = made.write_combined(tmp_path / "both.pem")
    cert_path, key_path = made.write_pair(tmp_path / "pair")
    for private in (combined, key_path):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(combined)
    context.load_cert_chain(cert_path, key_path)
    assert certs.generate().sha256 != made.sha256  # a new key and serial every time
