"""Short-lived self-signed certificates made at start, never written into the repository: one helper for every
TLS and QUIC endpoint rtlab runs (HAProxy's HTTPS front, the HTTP/3 endpoint).

ECDSA P-256 and at most 14 days: Chromium accepts a certificate pinned by `serverCertificateHashes` (a page's HTTP/3 session)
only if it is ECDSA and valid for at most two weeks, and one kind of certificate for every endpoint keeps the
handshakes of the arms being compared the same.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

MAX_DAYS = 14  # Chromium's limit for a certificate pinned by its hash
DEFAULT_DAYS = 10
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Certificate:
    """A certificate and its private key (PEM), with the SHA-256 of its DER form."""

    cert_pem: bytes
    key_pem: bytes
    sha256: bytes  # of the DER certificate: what a page's serverCertificateHashes pins
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hex()

    @property
    def sha256_b64(self) -> str:
        return base64.b64encode(self.sha256).decode()

    def write_combined(self, path: str | Path) -> Path:
        """Write the certificate then the key into one PEM file (HAProxy's `crt`), readable by its owner only."""
        return _write_private(Path(path), self.cert_pem + self.key_pem)

    def write_pair(self, directory: str | Path, stem: str = "rtlab") -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` into `directory` (the key readable by its owner only); return both."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert = directory / f"{stem}.crt"
        cert.write_bytes(self.cert_pem)
        return cert, _write_private(directory / f"{stem}.key", self.key_pem)


def _write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def generate(hosts: tuple[str, ...] = DEFAULT_HOSTS, days: float = DEFAULT_DAYS) -> Certificate:
    """Make a self-signed ECDSA P-256 certificate for `hosts` (names or IP addresses), valid from a minute ago
    for `days` (at most MAX_DAYS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not 0 < days <= MAX_DAYS:
        raise ValueError(f"days must be more than 0 and at most {MAX_DAYS} (Chromium pins no longer-lived "
                         f"certificate by its hash), got {days}")
    if not hosts:
        raise ValueError("a certificate needs at least one host")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    # A minute back: a peer whose clock is a little behind still sees it as valid; the whole span stays in `days`.
    not_before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=1)
    not_after = not_before + dt.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return Certificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        sha256=digest.finalize(),
        not_before=not_before,
        not_after=not_after,
    )
