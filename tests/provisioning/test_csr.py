"""CSRs: the proof of possession verifies, and every forged or unsuitable request is refused."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioning.csr import create_csr, csr_to_pem, load_csr_pem, verify_csr
from provisioning.errors import CsrError
from provisioning.keys import generate_private_key, private_key_to_pem, same_public_key

# DER of AlgorithmIdentifier ecdsa-with-SHA256 (RFC 5758 §3.2: parameters absent).
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _spliced_csr(claimed: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR that carries `claimed`'s public key but is signed by `signer`."""
    info = create_csr(claimed, "gw").tbs_certrequest_bytes
    signature = signer.sign(info, ec.ECDSA(hashes.SHA256()))
    der = _der(0x30, info + _ECDSA_SHA256 + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


def test_csr_round_trip_gives_the_name_and_the_key() -> None:
    key = generate_private_key()
    verified = verify_csr(load_csr_pem(csr_to_pem(create_csr(key, "Presse Halle Süd"))))
    assert verified.requested_name == "Presse Halle Süd"
    assert same_public_key(verified.public_key, key.public_key())


def test_csr_signed_by_another_key_is_refused() -> None:
    pem = _spliced_csr(claimed=generate_private_key(), signer=generate_private_key())
    with pytest.raises(CsrError, match="signature does not verify"):
        verify_csr(load_csr_pem(pem))


def test_splice_helper_builds_valid_csrs_when_the_keys_match() -> None:
    # Guards the test above: the splice itself is sound, only the key mismatch breaks it.
    key = generate_private_key()
    assert verify_csr(load_csr_pem(_spliced_csr(claimed=key, signer=key))).requested_name == "gw"


def test_csr_with_a_flipped_signature_bit_is_refused() -> None:
    der = bytearray(
        create_csr(generate_private_key(), "gw").public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01
    with pytest.raises(CsrError, match="signature does not verify"):
        verify_csr(x509.load_der_x509_csr(bytes(der)))


def test_csr_for_a_p384_key_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CsrError, match="P-256"):
        verify_csr(csr)


def test_csr_without_a_common_name_is_refused() -> None:
    key = generate_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CsrError, match="common name"):
        verify_csr(csr)


@pytest.mark.parametrize("name", ["", " padded", "line\nbreak", "x" * 65])
def test_unusable_names_are_refused(name: str) -> None:
    with pytest.raises(CsrError, match="gateway name"):
        create_csr(generate_private_key(), name)


def test_garbage_is_not_a_csr() -> None:
    with pytest.raises(CsrError, match="not a PEM certificate signing request"):
        load_csr_pem(b"hello")


def test_the_private_key_never_appears_in_the_csr() -> None:
    key = generate_private_key()
    csr = create_csr(key, "gw")
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    pem = csr_to_pem(csr)
    pem_body = b"".join(private_key_to_pem(key).splitlines()[1:-1])
    for secret in (scalar, pkcs8, scalar.hex().encode(), base64.b64encode(scalar), pem_body):
        assert secret not in der
        assert secret not in pem
