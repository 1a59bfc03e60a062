"""ES256 gateway tokens: they round-trip, and every forgery, tamper and time error is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.ca import TenantCA, issue_gateway_certificate
from provisioning.certificates import thumbprint
from provisioning.csr import create_csr
from provisioning.errors import (
    TokenAlgorithmRefused,
    TokenAudienceMismatch,
    TokenCertificateMismatch,
    TokenError,
    TokenExpired,
    TokenIssuerMismatch,
    TokenLifetimeTooLong,
    TokenMalformed,
    TokenNotYetValid,
    TokenSignatureInvalid,
)
from provisioning.keys import PrivateKey, generate_private_key
from provisioning.tokens import (
    mint_token,
    read_unverified,
    verify_gateway_token,
    verify_token,
)
from tests.provisioning.support import CLOUD_URL, Gateway

NOW = 1_800_000_000


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _part(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value).encode())


def _es256(key: PrivateKey, signing_input: str) -> str:
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def _token(gateway: Gateway, **kwargs: Any) -> str:
    kwargs.setdefault("now", NOW)
    return mint_token(
        gateway.key,
        gateway_id=gateway.gateway_id,
        audience=CLOUD_URL,
        thumbprint=thumbprint(gateway.certificate),
        **kwargs,
    )


def _verify(token: str, gateway: Gateway, **kwargs: Any) -> Any:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("audience", CLOUD_URL)
    return verify_gateway_token(token, gateway.certificate, **kwargs)


def _decoded(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")
    return json.loads(_unb64(header)), json.loads(_unb64(payload)), _unb64(signature)


def test_token_round_trip_carries_the_claims(gateway: Gateway) -> None:
    token = _token(gateway, extra={"site": "plant-7"})
    content = _verify(token, gateway)
    assert content.gateway_id == "gw-0001"
    assert content.audience == CLOUD_URL
    assert (content.issued_at, content.not_before, content.expires_at) == (NOW, NOW, NOW + 300)
    assert content.thumbprint == thumbprint(gateway.certificate)
    assert content.extra == {"site": "plant-7"}
    header, payload, _ = _decoded(token)
    assert header == {"alg": "ES256", "typ": "JWT", "x5t#S256": thumbprint(gateway.certificate)}
    assert payload["iss"] == "gw-0001"
    assert payload["exp"] - payload["iat"] == 300


def test_signature_is_raw_r_s_per_rfc_7518(gateway: Gateway) -> None:
    token = _token(gateway)
    signing_input, _, encoded = token.rpartition(".")
    raw = _unb64(encoded)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    gateway.key.public_key().verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))


def test_every_token_has_a_unique_id(gateway: Gateway) -> None:
    ids = {read_unverified(_token(gateway)).token_id for _ in range(50)}
    assert len(ids) == 50


def test_cloud_finds_the_certificate_before_verifying(gateway: Gateway) -> None:
    unverified = read_unverified(_token(gateway))
    assert unverified.thumbprint == thumbprint(gateway.certificate)
    assert unverified.gateway_id == "gw-0001"


def test_token_signed_by_a_different_key_is_refused(gateway: Gateway) -> None:
    stranger = Gateway(generate_private_key(), gateway.certificate, gateway.gateway_id)
    with pytest.raises(TokenSignatureInvalid):
        _verify(_token(stranger), gateway)


def test_tampered_payload_is_refused(gateway: Gateway) -> None:
    header, payload, signature = _token(gateway).split(".")
    claims = json.loads(_unb64(payload))
    claims["iss"] = "gw-9999"
    with pytest.raises(TokenSignatureInvalid):
        verify_token(
            f"{header}.{_part(claims)}.{signature}",
            gateway.key.public_key(),
            audience=CLOUD_URL,
            now=NOW,
        )


def test_tampered_header_is_refused(gateway: Gateway) -> None:
    header, payload, signature = _token(gateway).split(".")
    fields = json.loads(_unb64(header))
    fields["kid"] = "other"
    with pytest.raises(TokenSignatureInvalid):
        _verify(f"{_part(fields)}.{payload}.{signature}", gateway)


def test_tampered_signature_is_refused(gateway: Gateway) -> None:
    header, payload, signature = _token(gateway).split(".")
    raw = bytearray(_unb64(signature))
    raw[10] ^= 0x01
    with pytest.raises(TokenSignatureInvalid):
        _verify(f"{header}.{payload}.{_b64(bytes(raw))}", gateway)


def test_der_signature_is_refused(gateway: Gateway) -> None:
    token = _token(gateway)
    signing_input = token.rpartition(".")[0]
    der = gateway.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(TokenSignatureInvalid, match="64 bytes"):
        _verify(f"{signing_input}.{_b64(der)}", gateway)


def test_expired_token_is_refused_after_the_leeway(gateway: Gateway) -> None:
    token = _token(gateway)  # exp = NOW + 300
    assert _verify(token, gateway, now=NOW + 300 + 59).gateway_id == "gw-0001"
    with pytest.raises(TokenExpired):
        _verify(token, gateway, now=NOW + 300 + 60)
    with pytest.raises(TokenExpired):
        _verify(token, gateway, now=NOW + 300, leeway=0)


def test_token_from_the_future_is_refused_beyond_the_leeway(gateway: Gateway) -> None:
    token = _token(gateway)
    assert _verify(token, gateway, now=NOW - 60).gateway_id == "gw-0001"
    with pytest.raises(TokenNotYetValid, match="clock"):
        _verify(token, gateway, now=NOW - 61)


def test_not_before_is_enforced(gateway: Gateway) -> None:
    header, payload, _ = _token(gateway).split(".")
    claims = json.loads(_unb64(payload))
    claims["nbf"] = NOW + 200
    forged = f"{header}.{_part(claims)}"
    token = f"{forged}.{_es256(gateway.key, forged)}"
    with pytest.raises(TokenNotYetValid):
        _verify(token, gateway, now=NOW)
    assert _verify(token, gateway, now=NOW + 200).not_before == NOW + 200


def test_token_for_another_cloud_is_refused(gateway: Gateway) -> None:
    token = _token(gateway)
    with pytest.raises(TokenAudienceMismatch, match="other-cloud"):
        _verify(token, gateway, audience="https://other-cloud.example")


def test_audience_ignores_a_trailing_slash(gateway: Gateway) -> None:
    assert _verify(_token(gateway), gateway, audience=CLOUD_URL + "/").audience == CLOUD_URL


def test_alg_none_is_refused(gateway: Gateway) -> None:
    _, payload, _ = _token(gateway).split(".")
    header = _part({"alg": "none", "typ": "JWT", "x5t#S256": thumbprint(gateway.certificate)})
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        with pytest.raises(TokenError):
            _verify(token, gateway)
    with pytest.raises(TokenAlgorithmRefused, match="'none'"):
        _verify(f"{header}.{payload}.", gateway)


def test_hs256_signed_with_the_public_key_is_refused(gateway: Gateway) -> None:
    # The classic algorithm confusion: HMAC keyed with the (public) verification key.
    _, payload, _ = _token(gateway).split(".")
    header = _part({"alg": "HS256", "typ": "JWT", "x5t#S256": thumbprint(gateway.certificate)})
    secret = gateway.certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(TokenAlgorithmRefused, match="HS256"):
        _verify(f"{header}.{payload}.{_b64(mac)}", gateway)


def test_critical_header_extensions_are_refused(gateway: Gateway) -> None:
    _, payload, _ = _token(gateway).split(".")
    header = _part({"alg": "ES256", "crit": ["exp"], "x5t#S256": thumbprint(gateway.certificate)})
    signing_input = f"{header}.{payload}"
    with pytest.raises(TokenAlgorithmRefused, match="critical"):
        _verify(f"{signing_input}.{_es256(gateway.key, signing_input)}", gateway)


def test_token_living_too_long_is_refused(gateway: Gateway) -> None:
    token = _token(gateway, lifetime=86_400)
    with pytest.raises(TokenLifetimeTooLong):
        _verify(token, gateway)
    assert _verify(token, gateway, max_lifetime=86_400).expires_at == NOW + 86_400


def test_token_of_another_gateway_is_refused(tenant_ca: TenantCA, gateway: Gateway) -> None:
    token = mint_token(
        gateway.key,
        gateway_id="gw-0002",
        audience=CLOUD_URL,
        thumbprint=thumbprint(gateway.certificate),
        now=NOW,
    )
    with pytest.raises(TokenIssuerMismatch, match="gw-0002"):
        _verify(token, gateway)


def test_token_of_a_rotated_certificate_is_refused(tenant_ca: TenantCA, gateway: Gateway) -> None:
    old_token = _token(gateway)
    new_key = generate_private_key()
    new_cert = issue_gateway_certificate(
        tenant_ca, create_csr(new_key, "press line 3"), gateway_id=gateway.gateway_id
    )
    rotated = Gateway(new_key, new_cert, gateway.gateway_id)
    with pytest.raises(TokenCertificateMismatch, match="rotated"):
        _verify(old_token, rotated)
    assert _verify(_token(rotated), rotated).gateway_id == "gw-0001"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.e30.AA",
        "eyJhbGciOiJFUzI1NiJ9=.e30.AA",  # padding is not canonical
        f"{_b64(b'[1]')}.{_b64(b'{}')}.AA",  # header not an object
        f"{_b64(b'not json')}.e30.AA",
        _b64(b'{"alg":"ES256","alg":"none"}') + ".e30.AA",  # duplicate keys
        "x" * 9000,
    ],
)
def test_malformed_tokens_are_refused(gateway: Gateway, token: str) -> None:
    with pytest.raises(TokenMalformed):
        _verify(token, gateway)


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", True), ("exp", "1800000300"), ("iat", 1.5), ("iss", 7), ("jti", None), ("exp", NOW)],
)
def test_badly_typed_claims_are_refused(gateway: Gateway, claim: str, value: Any) -> None:
    header, payload, _ = _token(gateway).split(".")
    claims = json.loads(_unb64(payload))
    claims[claim] = value
    signing_input = f"{header}.{_part(claims)}"
    with pytest.raises(TokenMalformed):
        _verify(f"{signing_input}.{_es256(gateway.key, signing_input)}", gateway)


def test_extra_claims_may_not_redefine_registered_ones(gateway: Gateway) -> None:
    with pytest.raises(ValueError, match="exp"):
        _token(gateway, extra={"exp": NOW + 10**9})


def test_the_private_key_never_appears_in_the_token(gateway: Gateway) -> None:
    token = _token(gateway, extra={"note": "x"})
    scalar = gateway.key.private_numbers().private_value.to_bytes(32, "big")
    pkcs8 = gateway.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    decoded = b"".join(_unb64(part) for part in token.split("."))
    for secret in (scalar, scalar.hex().encode(), str(int.from_bytes(scalar)).encode()):
        assert secret not in decoded
        assert secret not in token.encode()
    assert _b64(scalar) not in token
    assert _b64(pkcs8)[20:60] not in token


def test_default_clock_is_the_system_clock(gateway: Gateway) -> None:
    token = _token(gateway, now=None)
    content = _verify(token, gateway, now=None)
    assert abs(content.issued_at - time.time()) < 5


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
_extra = st.dictionaries(
    st.text().filter(lambda k: k not in {"iss", "aud", "iat", "nbf", "exp", "jti"}),
    _json,
    max_size=5,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    extra=_extra,
    gateway_id=st.text(min_size=1, max_size=64),
    audience=st.text(min_size=1).map(lambda s: "https://" + s),
    lifetime=st.integers(min_value=1, max_value=3600),
)
def test_round_trip_with_arbitrary_claims(
    gateway: Gateway, extra: dict[str, Any], gateway_id: str, audience: str, lifetime: int
) -> None:
    token = mint_token(
        gateway.key,
        gateway_id=gateway_id,
        audience=audience,
        thumbprint="t" * 43,
        lifetime=lifetime,
        now=NOW,
        extra=extra,
    )
    content = verify_token(
        token, gateway.key.public_key(), audience=audience, issuer=gateway_id, now=NOW
    )
    assert content.extra == extra
    assert content.gateway_id == gateway_id
    assert content.expires_at == NOW + lifetime


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_single_character_change_is_refused(gateway: Gateway, data: st.DataObject) -> None:
    token = _token(gateway)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="
    replacement = data.draw(st.sampled_from(alphabet).filter(lambda c: c != token[index]))
    tampered = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(TokenError):
        _verify(tampered, gateway)
