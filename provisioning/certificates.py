"""Reading certificates: PEM in and out, the ``x5t#S256`` thumbprint, and the tagway names in them.

A gateway certificate names its gateway in the URI SAN ``urn:tagway:gateway:<id>`` (and its CN);
a tenant CA names its tenant in ``urn:tagway:tenant:<id>``. Ids are 1..64 characters of
``A-Z a-z 0-9 . _ -``, so they fit a CN (RFC 5280 ub-common-name) and a URN without escaping.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from typing import Final, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioning.errors import CertificateError
from provisioning.keys import PublicKey, is_p256

GATEWAY_URN_PREFIX: Final = "urn:tagway:gateway:"
TENANT_URN_PREFIX: Final = "urn:tagway:tenant:"
_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_E = TypeVar("_E", bound=x509.ExtensionType)


def check_id(value: str, what: str) -> str:
    """Return `value` if it is a usable tenant/gateway id: 1..64 of ``A-Z a-z 0-9 . _ -``.

    Raises:
        CertificateError: the id would not fit a CN or a URN.
    """
    if not _ID_PATTERN.fullmatch(value):
        raise CertificateError(f"{what} {value!r} must be 1..64 characters of A-Z a-z 0-9 . _ -")
    return value


def gateway_id_of(certificate: x509.Certificate) -> str:
    """The gateway id of a gateway certificate; its CN and URI SAN must agree.

    Raises:
        CertificateError: the id is missing or the CN and SAN disagree.
    """
    gateway_id = urn_id(certificate, GATEWAY_URN_PREFIX)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [attribute.value for attribute in names] != [gateway_id]:
        raise CertificateError(f"subject CN does not match the SAN gateway id {gateway_id!r}")
    return gateway_id


def tenant_id_of(certificate: x509.Certificate) -> str:
    """The tenant id of a tenant CA certificate (its ``urn:tagway:tenant:`` SAN).

    Raises:
        CertificateError: the SAN is missing or the id is unusable.
    """
    return urn_id(certificate, TENANT_URN_PREFIX)


def thumbprint(certificate: x509.Certificate) -> str:
    """``x5t#S256`` (RFC 7515 §4.1.8): base64url, unpadded, of SHA-256 over the DER bytes."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def certificates_to_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    """Concatenated PEM of `certificates`, in order (leaf first for a chain)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def load_certificates_pem(data: bytes) -> list[x509.Certificate]:
    """Parse one or more PEM certificates, in order.

    Raises:
        CertificateError: no certificate, or a block that does not parse.
    """
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"not PEM certificates: {exc}") from exc


def extension(certificate: x509.Certificate, kind: type[_E]) -> _E | None:
    """The value of `certificate`'s extension of type `kind`, or None if it has none."""
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def urn_id(certificate: x509.Certificate, prefix: str) -> str:
    """The id in the one URI SAN starting with `prefix`.

    Raises:
        CertificateError: none or several such SANs, or an unusable id.
    """
    san = extension(certificate, x509.SubjectAlternativeName)
    uris = [] if san is None else san.get_values_for_type(x509.UniformResourceIdentifier)
    ids = [uri.removeprefix(prefix) for uri in uris if uri.startswith(prefix)]
    if len(ids) != 1:
        raise CertificateError(f"expected exactly one {prefix}<id> URI SAN, found {len(ids)}")
    return check_id(ids[0], prefix.rstrip(":"))


def p256_key(certificate: x509.Certificate) -> PublicKey:
    """The certificate's public key, which must be P-256.

    Raises:
        CertificateError: the key is of another type or curve.
    """
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not is_p256(key):
        raise CertificateError(f"the certificate's key must be P-256, found {type(key)}")
    return key
