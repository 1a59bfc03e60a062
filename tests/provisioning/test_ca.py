"""Tenant CAs issue gateway certificates that verify; foreign, expired and odd ones are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.ca import (
    TenantCA,
    create_tenant_ca,
    issue_gateway_certificate,
    verify_chain,
    verify_gateway_certificate,
)
from provisioning.certificates import (
    certificates_to_pem,
    gateway_id_of,
    load_certificates_pem,
    tenant_id_of,
    thumbprint,
)
from provisioning.csr import create_csr
from provisioning.errors import (
    CertificateError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateUntrusted,
    CsrError,
)
from provisioning.keys import generate_private_key, same_public_key
from tests.provisioning.support import Gateway


def _issue(ca: TenantCA, gateway_id: str = "gw-0001", **kwargs: object) -> x509.Certificate:
    csr = create_csr(generate_private_key(), "gw")
    return issue_gateway_certificate(ca, csr, gateway_id=gateway_id, **kwargs)  # type: ignore[arg-type]


def test_gateway_certificate_names_the_gateway_and_allows_client_auth_only(
    tenant_ca: TenantCA, gateway: Gateway
) -> None:
    cert = gateway.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-0001"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:tagway:gateway:gw-0001"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert same_public_key(cert.public_key(), gateway.key.public_key())  # type: ignore[arg-type]
    assert cert.issuer == tenant_ca.certificate.subject
    assert gateway_id_of(cert) == "gw-0001"
    assert verify_gateway_certificate(cert, tenant_ca.certificate) == "gw-0001"


def test_tenant_ca_is_a_self_signed_ca_naming_its_tenant(tenant_ca: TenantCA) -> None:
    cert = tenant_ca.certificate
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert tenant_id_of(cert) == "acme" == tenant_ca.tenant_id
    cert.verify_directly_issued_by(cert)


def test_validity_period_is_as_asked(tenant_ca: TenantCA) -> None:
    now = datetime.now(UTC)
    cert = _issue(tenant_ca, validity=timedelta(days=30), now=now)
    assert cert.not_valid_before_utc <= now
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=10)


def test_serial_numbers_are_random_and_large(tenant_ca: TenantCA) -> None:
    serials = {_issue(tenant_ca).serial_number for _ in range(20)}
    assert len(serials) == 20
    assert all(s.bit_length() > 64 for s in serials)


def test_chain_pem_round_trip_and_verification(tenant_ca: TenantCA, gateway: Gateway) -> None:
    chain = load_certificates_pem(certificates_to_pem([gateway.certificate, tenant_ca.certificate]))
    assert chain == [gateway.certificate, tenant_ca.certificate]
    assert verify_chain(chain, tenant_ca.certificate) == "gw-0001"
    assert verify_chain(chain[:1], tenant_ca.certificate) == "gw-0001"


def test_certificate_of_another_tenant_is_refused(tenant_ca: TenantCA) -> None:
    other = create_tenant_ca("globex")
    with pytest.raises(CertificateUntrusted, match="was not issued by"):
        verify_gateway_certificate(_issue(other), tenant_ca.certificate)


def test_impostor_ca_with_the_same_name_is_refused(tenant_ca: TenantCA) -> None:
    # Same subject as the real CA, different key: the issuer name matches, the signature does not.
    impostor_key = generate_private_key()
    impostor_cert = (
        x509.CertificateBuilder()
        .subject_name(tenant_ca.certificate.subject)
        .issuer_name(tenant_ca.certificate.subject)
        .public_key(impostor_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(tenant_ca.certificate.not_valid_before_utc)
        .not_valid_after(tenant_ca.certificate.not_valid_after_utc)
        .add_extension(
            tenant_ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value,
            critical=True,
        )
        .add_extension(
            tenant_ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value,
            critical=True,
        )
        .add_extension(
            tenant_ca.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value,
            critical=False,
        )
        .add_extension(
            tenant_ca.certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value,
            critical=False,
        )
        .sign(impostor_key, hashes.SHA256())
    )
    forged = _issue(TenantCA(certificate=impostor_cert, private_key=impostor_key))
    with pytest.raises(CertificateUntrusted, match="InvalidSignature"):
        verify_gateway_certificate(forged, tenant_ca.certificate)


def test_expired_certificate_is_refused(tenant_ca: TenantCA) -> None:
    issued = datetime.now(UTC) - timedelta(days=40)
    cert = _issue(tenant_ca, validity=timedelta(days=30), now=issued)
    with pytest.raises(CertificateExpired, match="expired at"):
        verify_gateway_certificate(cert, tenant_ca.certificate)


def test_expiry_tolerates_the_clock_skew_leeway_and_no_more(tenant_ca: TenantCA) -> None:
    cert = _issue(tenant_ca, validity=timedelta(days=30))
    end = cert.not_valid_after_utc
    ca = tenant_ca.certificate
    assert verify_gateway_certificate(cert, ca, now=end + timedelta(seconds=59)) == "gw-0001"
    with pytest.raises(CertificateExpired):
        verify_gateway_certificate(cert, ca, now=end + timedelta(seconds=61))
    with pytest.raises(CertificateExpired):
        verify_gateway_certificate(cert, ca, now=end + timedelta(seconds=5), leeway=timedelta(0))


def test_not_yet_valid_certificate_is_refused(tenant_ca: TenantCA) -> None:
    ca = create_tenant_ca("acme", now=datetime.now(UTC) - timedelta(days=1))
    cert = _issue(ca, now=datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(CertificateNotYetValid, match="clock"):
        verify_gateway_certificate(cert, ca.certificate)


def test_expired_ca_invalidates_its_gateways() -> None:
    start = datetime.now(UTC) - timedelta(days=20)
    ca = create_tenant_ca("acme", validity=timedelta(days=10), now=start)
    cert = _issue(ca, now=start + timedelta(days=1))
    # The CA caps the gateway certificate at its own end of validity.
    assert cert.not_valid_after_utc <= ca.certificate.not_valid_after_utc
    with pytest.raises(CertificateExpired):
        verify_gateway_certificate(cert, ca.certificate)


def test_a_ca_certificate_cannot_pose_as_a_gateway(tenant_ca: TenantCA) -> None:
    with pytest.raises(CertificateUntrusted, match="ca=False"):
        verify_gateway_certificate(tenant_ca.certificate, tenant_ca.certificate)


def test_a_gateway_certificate_cannot_act_as_a_ca(tenant_ca: TenantCA, gateway: Gateway) -> None:
    with pytest.raises(CertificateUntrusted, match="not a CA"):
        verify_gateway_certificate(gateway.certificate, gateway.certificate)


def test_chain_with_a_foreign_certificate_is_refused(tenant_ca: TenantCA, gateway: Gateway) -> None:
    other = create_tenant_ca("globex")
    with pytest.raises(CertificateUntrusted, match="unexpected certificate"):
        verify_chain([gateway.certificate, other.certificate], tenant_ca.certificate)
    with pytest.raises(CertificateError, match="empty"):
        verify_chain([], tenant_ca.certificate)


@pytest.mark.parametrize("bad_id", ["", "-leading-dash", "has space", "a/b", "x" * 65, "ü"])
def test_unusable_gateway_ids_are_refused(tenant_ca: TenantCA, bad_id: str) -> None:
    with pytest.raises(CertificateError, match="gateway id"):
        _issue(tenant_ca, gateway_id=bad_id)


def test_issuing_refuses_a_csr_that_does_not_verify(tenant_ca: TenantCA) -> None:
    der = bytearray(
        create_csr(generate_private_key(), "gw").public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01
    with pytest.raises(CsrError):
        issue_gateway_certificate(tenant_ca, x509.load_der_x509_csr(bytes(der)), gateway_id="gw-1")


def test_thumbprint_is_stable_and_unique(tenant_ca: TenantCA, gateway: Gateway) -> None:
    assert thumbprint(gateway.certificate) == thumbprint(gateway.certificate)
    assert len(thumbprint(gateway.certificate)) == 43  # 32 bytes, base64url without padding
    assert thumbprint(gateway.certificate) != thumbprint(_issue(tenant_ca))


def test_garbage_is_not_a_certificate() -> None:
    with pytest.raises(CertificateError, match="not PEM certificates"):
        load_certificates_pem(b"nothing here")


def _custom_leaf(ca: TenantCA, *extensions: tuple[x509.ExtensionType, bool]) -> x509.Certificate:
    key = generate_private_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(minutes=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("urn:tagway:gateway:gw-1")]
            ),
            critical=False,
        )
    )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    return builder.sign(ca.private_key, hashes.SHA256())


def test_certificate_for_server_auth_only_is_refused(tenant_ca: TenantCA) -> None:
    server = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(CertificateError, match="clientAuth"):
        verify_gateway_certificate(_custom_leaf(tenant_ca, (server, False)), tenant_ca.certificate)
    client = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    leaf = _custom_leaf(tenant_ca, (client, False))
    assert verify_gateway_certificate(leaf, tenant_ca.certificate) == "gw-1"


def test_unknown_critical_extension_is_refused(tenant_ca: TenantCA) -> None:
    client = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    policy = x509.CertificatePolicies(
        [x509.PolicyInformation(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), None)]
    )
    leaf = _custom_leaf(tenant_ca, (client, False), (policy, True))
    with pytest.raises(CertificateError, match="unsupported critical extensions"):
        verify_gateway_certificate(leaf, tenant_ca.certificate)


def test_authority_key_identifier_links_certificate_to_ca(
    tenant_ca: TenantCA, gateway: Gateway
) -> None:
    aki = gateway.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ski = tenant_ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.value.key_identifier == ski.value.digest
