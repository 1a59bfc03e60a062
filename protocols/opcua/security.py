"""The gateway's application certificate and the trust list for server certificates.

OPC UA (Part 4, 6.1) authenticates applications with X.509 certificates whose SubjectAltName
carries the ApplicationUri. The gateway creates its own self-signed certificate on first use
(RSA 2048, SHA-256, key file mode 0600) and never overwrites an existing one: a server that trusts
it must not be surprised by a new key.

A server certificate is trusted when the trust directory holds that exact certificate, or the CA
certificate that issued it. Anything else is refused with a `SecurityError` before any user
credential is sent; the refused certificate is saved under ``<trust_dir>/rejected/`` so an
operator can review it and move it into the trust directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from protocols.errors import SecurityError

_log = logging.getLogger(__name__)

_CERT_SUFFIXES: Final = frozenset({".der", ".pem", ".crt", ".cer"})
_CERT_DAYS: Final = 3650  # an appliance certificate; rotation is an operator decision


def ensure_application_certificate(
    certificate: Path, private_key: Path, application_uri: str
) -> None:
    """Create the gateway's key and self-signed certificate if either file is missing.

    An existing certificate is kept, but it must carry `application_uri` as a SAN URI: servers
    reject a certificate that does not, and the error is clearer here than on the wire.
    Blocking (key generation takes ~0.1 s): call it in a worker thread.
    """
    if certificate.is_file() and private_key.is_file():
        _check_san_uri(certificate, application_uri)
        return
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName(socket.gethostname()),
    ]
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        application_uri,
        {},
        names,
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        days=_CERT_DAYS,
    )
    _write_private(private_key, cert_gen.dump_private_key_as_pem(key))
    certificate.parent.mkdir(parents=True, exist_ok=True)
    certificate.write_bytes(cert.public_bytes(Encoding.DER))
    _log.info("created OPC UA application certificate %s for %s", certificate, application_uri)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 from the start: a private key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _check_san_uri(certificate: Path, application_uri: str) -> None:
    cert = load_certificate(certificate)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if application_uri not in uris:
        raise SecurityError(
            f"application certificate {certificate} has SAN URIs {uris}, not the configured "
            f"application_uri {application_uri!r}; fix application_uri or remove the certificate "
            "and its key to have a new pair created"
        )


def load_certificate(path: Path) -> x509.Certificate:
    """Load a DER or PEM certificate; raises `SecurityError` naming the file."""
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SecurityError(f"{path} is not a DER or PEM certificate: {exc}") from exc


def load_trust_list(trust_dir: Path) -> list[x509.Certificate]:
    """The certificates directly in `trust_dir` (subdirectories such as ``rejected/`` are not)."""
    if not trust_dir.is_dir():
        raise SecurityError(f"trust_dir {trust_dir} does not exist or is not a directory")
    return [
        load_certificate(path)
        for path in sorted(trust_dir.iterdir())
        if path.is_file() and path.suffix.lower() in _CERT_SUFFIXES
    ]


def der(cert: x509.Certificate) -> bytes:
    """The certificate's DER encoding."""
    return cert.public_bytes(Encoding.DER)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, colon-separated hex, as certificate tools print it."""
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def check_server_certificate(der: bytes, trust_dir: Path, *, endpoint: str) -> x509.Certificate:
    """Return the server certificate if it is trusted and valid now; else raise `SecurityError`.

    Blocking (reads the trust directory): call it in a worker thread.
    """
    if not der:
        raise SecurityError(f"server {endpoint} sent no certificate for a secure endpoint")
    cert = x509.load_der_x509_certificate(_first_certificate(der))
    subject = cert.subject.rfc4514_string()
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SecurityError(
            f"server {endpoint} certificate {subject!r} is not valid now "
            f"(valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    trusted = load_trust_list(trust_dir)
    if any(_is_same_or_issuer(cert, anchor) for anchor in trusted):
        return cert
    rejected = _save_rejected(cert, trust_dir)
    raise SecurityError(
        f"server {endpoint} certificate {subject!r} (SHA-256 {fingerprint(cert)}) is not trusted: "
        f"neither it nor its issuer is in {trust_dir}; saved to {rejected} for review"
    )


def _first_certificate(der: bytes) -> bytes:
    # Servers may send their certificate followed by its chain; the first SEQUENCE is theirs.
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        return der[: int.from_bytes(der[2:4], "big") + 4]
    return der


def _is_same_or_issuer(cert: x509.Certificate, anchor: x509.Certificate) -> bool:
    if cert == anchor:
        return True
    if anchor.subject != cert.issuer or not _is_ca(anchor):
        return False
    try:
        cert.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _save_rejected(cert: x509.Certificate, trust_dir: Path) -> Path:
    folder = trust_dir / "rejected"
    folder.mkdir(exist_ok=True)
    path = folder / (fingerprint(cert).replace(":", "")[:16].lower() + ".der")
    path.write_bytes(cert.public_bytes(Encoding.DER))
    return path
