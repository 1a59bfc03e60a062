"""Per-tenant certificate authorities, gateway certificates and their verification.

tagway's PKI has one level: each tenant has a self-signed root CA (created by the cloud on the
tenant's first use), and it signs gateway certificates directly. A gateway certificate names the
gateway twice, as subject CN and as the URI SAN ``urn:tagway:gateway:<id>``; it is for TLS/token
client authentication only (key usage digitalSignature, extended key usage clientAuth, not a CA).
The CA certificate carries ``urn:tagway:tenant:<id>``, which binds its sealed key to the tenant.

Time checks accept a clock-skew leeway (default 60 s) on both ends: a gateway's clock may be off
by a little, and one whose clock is off by a lot should fail loudly rather than half-work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.certificates import (
    GATEWAY_URN_PREFIX,
    TENANT_URN_PREFIX,
    check_id,
    extension,
    gateway_id_of,
    p256_key,
    urn_id,
)
from provisioning.csr import verify_csr
from provisioning.errors import (
    CertificateError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateUntrusted,
    SealedKeyError,
)
from provisioning.keys import PrivateKey, generate_private_key, same_public_key
from provisioning.sealing import MasterKey, open_sealed_key, seal_private_key

DEFAULT_LEEWAY: Final = timedelta(seconds=60)
CA_VALIDITY: Final = timedelta(days=3650)
GATEWAY_VALIDITY: Final = timedelta(days=365)
# Backdate notBefore so a gateway whose clock runs a little behind can use its fresh certificate.
_BACKDATE: Final = timedelta(minutes=5)
_UNDERSTOOD: Final = (
    x509.BasicConstraints,
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
    x509.SubjectAlternativeName,
)


@dataclass(frozen=True, slots=True)
class TenantCA:
    """A tenant's root CA: its certificate and private key (in memory, never stored in clear)."""

    certificate: x509.Certificate
    private_key: PrivateKey

    @property
    def tenant_id(self) -> str:
        """The tenant this CA belongs to (from its ``urn:tagway:tenant:`` SAN)."""
        return urn_id(self.certificate, TENANT_URN_PREFIX)

    def seal(self, master_key: MasterKey) -> bytes:
        """The private key encrypted under `master_key`, bound to this tenant (store this)."""
        return seal_private_key(self.private_key, master_key, context=_context(self.tenant_id))

    @classmethod
    def open(
        cls, certificate: x509.Certificate, sealed_key: bytes, master_key: MasterKey
    ) -> TenantCA:
        """Rebuild a CA from its stored certificate and sealed key.

        Raises:
            SealedKeyError: the key does not open for this tenant, or is not the certificate's.
        """
        tenant_id = urn_id(certificate, TENANT_URN_PREFIX)
        key = open_sealed_key(sealed_key, master_key, context=_context(tenant_id))
        if not same_public_key(key.public_key(), p256_key(certificate)):
            raise SealedKeyError(f"the sealed key is not the key of tenant {tenant_id}'s CA")
        return cls(certificate=certificate, private_key=key)


def create_tenant_ca(
    tenant_id: str, *, validity: timedelta = CA_VALIDITY, now: datetime | None = None
) -> TenantCA:
    """A new self-signed root CA for `tenant_id` with a fresh P-256 key."""
    check_id(tenant_id, "tenant id")
    key = generate_private_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tagway"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"tagway tenant {tenant_id} CA"),
        ]
    )
    start = (now or datetime.now(UTC)) - _BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(TENANT_URN_PREFIX + tenant_id)]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    return TenantCA(certificate=certificate, private_key=key)


def issue_gateway_certificate(
    ca: TenantCA,
    csr: x509.CertificateSigningRequest,
    *,
    gateway_id: str,
    validity: timedelta = GATEWAY_VALIDITY,
    now: datetime | None = None,
) -> x509.Certificate:
    """Verify `csr` and sign its key into a client certificate for `gateway_id`.

    Raises:
        CsrError: the CSR does not verify or its key is not P-256.
        CertificateError: `gateway_id` is not a usable id.
    """
    public_key = verify_csr(csr).public_key
    check_id(gateway_id, "gateway id")
    start = (now or datetime.now(UTC)) - _BACKDATE
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key())
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(GATEWAY_URN_PREFIX + gateway_id)]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + validity, ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(san, critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )


def verify_gateway_certificate(
    certificate: x509.Certificate,
    ca_certificate: x509.Certificate,
    *,
    now: datetime | None = None,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> str:
    """Check that `certificate` is a valid gateway certificate of this CA; return the gateway id.

    Checks: the CA is a self-signed CA in its validity window; the certificate's issuer and
    signature are the CA's; its validity window (with `leeway`); it is not a CA, allows
    clientAuth, has a P-256 key, and its CN and URI SAN name the same gateway.

    Raises:
        CertificateUntrusted: not issued by this CA, or the CA is not a usable CA.
        CertificateExpired, CertificateNotYetValid: outside a validity window.
        CertificateError: a required field or extension is missing or inconsistent.
    """
    at = now or datetime.now(UTC)
    _check_ca(ca_certificate, at, leeway)
    check_issued_by(certificate, ca_certificate)
    _check_window(certificate, at, leeway)
    constraints = extension(certificate, x509.BasicConstraints)
    if constraints is None or constraints.ca:
        raise CertificateUntrusted("a gateway certificate must carry BasicConstraints ca=False")
    _check_gateway_usage(certificate)
    p256_key(certificate)
    return gateway_id_of(certificate)


def verify_chain(
    chain: Sequence[x509.Certificate],
    anchor: x509.Certificate,
    *,
    now: datetime | None = None,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> str:
    """Verify ``[gateway certificate, (tenant CA)]`` against the trusted tenant CA `anchor`.

    tagway has no intermediates: after the leaf, the chain may only repeat the anchor itself.

    Raises:
        CertificateUntrusted: an unexpected certificate follows the leaf, or see
            `verify_gateway_certificate` for the rest.
    """
    if not chain:
        raise CertificateError("empty certificate chain")
    for extra in chain[1:]:
        if extra != anchor:
            raise CertificateUntrusted(f"unexpected certificate in the chain: {extra.subject}")
    return verify_gateway_certificate(chain[0], anchor, now=now, leeway=leeway)


def check_issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check issuer name and signature only (no time checks).

    Raises:
        CertificateUntrusted: the issuer name differs or the signature does not verify.
    """
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateUntrusted(
            f"{certificate.subject.rfc4514_string()} was not issued by "
            f"{issuer.subject.rfc4514_string()}: {type(exc).__name__} {exc}".rstrip()
        ) from exc


def _check_ca(ca: x509.Certificate, at: datetime, leeway: timedelta) -> None:
    constraints = extension(ca, x509.BasicConstraints)
    usage = extension(ca, x509.KeyUsage)
    if constraints is None or not constraints.ca or usage is None or not usage.key_cert_sign:
        raise CertificateUntrusted(f"{ca.subject.rfc4514_string()} is not a CA certificate")
    check_issued_by(ca, ca)
    _check_window(ca, at, leeway)


def _check_gateway_usage(certificate: x509.Certificate) -> None:
    usage = extension(certificate, x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        raise CertificateError("the gateway certificate does not allow digitalSignature")
    purposes = extension(certificate, x509.ExtendedKeyUsage)
    if purposes is None or ExtendedKeyUsageOID.CLIENT_AUTH not in purposes:
        raise CertificateError("the gateway certificate does not allow clientAuth")
    # RFC 5280 §4.2: a critical extension the verifier does not understand must be refused.
    unknown = [
        ext.oid.dotted_string
        for ext in certificate.extensions
        if ext.critical and not isinstance(ext.value, _UNDERSTOOD)
    ]
    if unknown:
        raise CertificateError(f"unsupported critical extensions: {unknown}")


def _check_window(certificate: x509.Certificate, at: datetime, leeway: timedelta) -> None:
    subject = certificate.subject.rfc4514_string()
    if at + leeway < certificate.not_valid_before_utc:
        raise CertificateNotYetValid(
            f"{subject} is valid from {certificate.not_valid_before_utc.isoformat()}; "
            f"it is {at.isoformat()} (is this clock right?)"
        )
    if at - leeway > certificate.not_valid_after_utc:
        raise CertificateExpired(
            f"{subject} expired at {certificate.not_valid_after_utc.isoformat()}; "
            f"it is {at.isoformat()}"
        )


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _context(tenant_id: str) -> str:
    return f"tenant:{tenant_id}"
