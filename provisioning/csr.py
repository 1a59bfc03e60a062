"""Certificate signing requests: the gateway asks for a certificate for the key only it holds.

The CSR carries the public key and the gateway's requested name (subject CN) and is signed with
the private key, which proves possession: the cloud verifies that signature before it signs
anything, so nobody can obtain a certificate for a key they do not hold.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioning.errors import CsrError
from provisioning.keys import PrivateKey, PublicKey, is_p256

# RFC 5280 upper bound for commonName (ub-common-name).
MAX_NAME_LENGTH: Final = 64
# The gateway-token claim that binds a rotation request's token to its CSR (`csr_thumbprint`).
CSR_CLAIM: Final = "csr"


@dataclass(frozen=True, slots=True)
class VerifiedCsr:
    """A CSR whose signature verified and whose key is P-256.

    Attributes:
        requested_name: the subject CN the gateway asked for (a label, not an identity: the CA
            assigns the gateway id).
        public_key: the key the certificate will certify.
    """

    requested_name: str
    public_key: PublicKey


def check_name(name: str) -> str:
    """Return `name` if it can be a subject CN: 1..64 printable characters, no edge whitespace.

    Raises:
        CsrError: the name is empty, too long, has control characters or edge whitespace.
    """
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise CsrError(f"gateway name must be 1..{MAX_NAME_LENGTH} characters, got {len(name)}")
    if not name.isprintable() or name != name.strip():
        raise CsrError(f"gateway name {name!r} has control characters or edge whitespace")
    return name


def create_csr(private_key: PrivateKey, name: str) -> x509.CertificateSigningRequest:
    """A CSR for `private_key`'s public key with subject CN = `name`, signed with ECDSA-SHA256.

    Raises:
        CsrError: `name` is not acceptable (see `check_name`) or the key is not P-256.
    """
    if not is_p256(private_key):
        raise CsrError("a gateway key must be P-256 (secp256r1)")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, check_name(name))])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(private_key, hashes.SHA256())
    )


def csr_to_pem(csr: x509.CertificateSigningRequest) -> bytes:
    """PEM encoding of `csr`."""
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr_pem(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR (no verification; see `verify_csr`).

    Raises:
        CsrError: the bytes are not a PEM CSR.
    """
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CsrError(f"not a PEM certificate signing request: {exc}") from exc


def verify_csr(csr: x509.CertificateSigningRequest) -> VerifiedCsr:
    """Check the proof of possession and the key type; return the name and the key.

    Raises:
        CsrError: the signature does not verify with the CSR's own key, the key is not P-256,
            the signature algorithm is not ECDSA-SHA256, or the subject lacks one usable CN.
    """
    try:
        public_key = csr.public_key()
    except ValueError as exc:
        raise CsrError(f"the CSR's public key cannot be read: {exc}") from exc
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not is_p256(public_key):
        raise CsrError(f"the CSR's key must be P-256 (secp256r1), found {type(public_key)}")
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise CsrError(f"the CSR's signature algorithm is not supported: {exc}") from exc
    if not isinstance(algorithm, hashes.SHA256):
        raise CsrError("the CSR must be signed with ECDSA-SHA256")
    if not csr.is_signature_valid:
        raise CsrError("the CSR's signature does not verify with its public key")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise CsrError("the CSR's subject must hold exactly one common name (CN)")
    return VerifiedCsr(requested_name=check_name(names[0].value), public_key=public_key)


def csr_thumbprint(csr: x509.CertificateSigningRequest) -> str:
    """Base64url (unpadded) SHA-256 of the CSR's DER bytes.

    A rotation request binds its gateway token to the CSR it carries by this value (the token's
    ``csr`` claim), so a token captured from another request cannot be used to rotate.
    """
    digest = hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
