"""ES256 gateway tokens: short-lived, JWT-shaped proofs that a request comes from a gateway.

A token is ``base64url(header) . base64url(payload) . base64url(signature)`` (RFC 7519 compact
JWS). The header is ``{"alg": "ES256", "typ": "JWT", "x5t#S256": <certificate thumbprint>}``; the
thumbprint sits in the header, where RFC 7515 §4.1.8 defines it, and is covered by the signature.
The cloud reads it (`read_unverified`) to find the certificate, then verifies the token with that
certificate's key (`verify_gateway_token`): a token naming a rotated or revoked certificate finds
none, or a different one, and is refused.

Claims: ``iss`` = gateway id, ``aud`` = the cloud URL (a trailing ``/`` is ignored on both
sides), ``iat``, ``nbf``, ``exp`` (integer seconds; five minutes by default), ``jti`` (random,
unique, for replay detection by the verifier), plus any extra claims the caller adds.

The signature is the raw 64-byte ``r || s`` of ECDSA P-256 with SHA-256 (RFC 7518 §3.4), not the
DER that `cryptography` produces. Verification pins the algorithm to ES256: ``none``, HS256 and
everything else are refused before any key is touched, so the classic algorithm-confusion attacks
have nothing to work with. Parsing is strict: canonical unpadded base64url, JSON objects without
duplicate keys, integer times.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from provisioning.certificates import gateway_id_of, p256_key, thumbprint
from provisioning.errors import (
    TokenAlgorithmRefused,
    TokenAudienceMismatch,
    TokenCertificateMismatch,
    TokenExpired,
    TokenIssuerMismatch,
    TokenLifetimeTooLong,
    TokenMalformed,
    TokenNotYetValid,
    TokenSignatureInvalid,
)
from provisioning.jws import Json, b64decode, b64encode, decode_json, encode_json
from provisioning.keys import PrivateKey, PublicKey, is_p256

ALGORITHM: Final = "ES256"
THUMBPRINT_HEADER: Final = "x5t#S256"
_THUMBPRINT: Final = re.compile(r"[A-Za-z0-9_-]{43}")
DEFAULT_LIFETIME: Final = 300
DEFAULT_LEEWAY: Final = 60
DEFAULT_MAX_LIFETIME: Final = 3600
REGISTERED_CLAIMS: Final = frozenset({"iss", "aud", "iat", "nbf", "exp", "jti"})
MAX_TOKEN_LENGTH: Final = 8192
_COORDINATE_BYTES: Final = 32
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class GatewayToken:
    """The content of a gateway token.

    Attributes:
        gateway_id: ``iss``.
        audience: ``aud``, the cloud URL the token is for.
        issued_at, not_before, expires_at: ``iat``, ``nbf``, ``exp`` in Unix seconds.
        token_id: ``jti``, unique per token.
        thumbprint: the header's ``x5t#S256``, naming the signing certificate.
        extra: any other claims.
    """

    gateway_id: str
    audience: str
    issued_at: int
    not_before: int
    expires_at: int
    token_id: str
    thumbprint: str
    extra: Mapping[str, Json] = field(default_factory=dict)


def normalize_audience(url: str) -> str:
    """The form of a cloud URL that tokens carry and compare: without trailing slashes."""
    return url.rstrip("/")


def mint_token(
    private_key: PrivateKey,
    *,
    gateway_id: str,
    audience: str,
    thumbprint: str,
    lifetime: int = DEFAULT_LIFETIME,
    now: float | None = None,
    extra: Mapping[str, Json] | None = None,
) -> str:
    """Sign a gateway token with the gateway's private key.

    Raises:
        ValueError: `lifetime` is not positive, or `extra` redefines a registered claim.
    """
    if lifetime <= 0:
        raise ValueError(f"token lifetime must be positive, got {lifetime}")
    clashing = REGISTERED_CLAIMS & set(extra or {})
    if clashing:
        raise ValueError(f"extra claims may not redefine {sorted(clashing)}")
    issued = int(time.time() if now is None else now)
    header = {"alg": ALGORITHM, "typ": "JWT", THUMBPRINT_HEADER: thumbprint}
    payload: dict[str, Json] = {
        **(extra or {}),
        "iss": gateway_id,
        "aud": normalize_audience(audience),
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(16),
    }
    signing_input = f"{encode_json(header)}.{encode_json(payload)}".encode("ascii")
    r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")
    return f"{signing_input.decode('ascii')}.{b64encode(raw)}"


def read_unverified(token: str) -> GatewayToken:
    """Parse a token without checking signature, audience or times (to find its certificate).

    Never trust the result for anything but the lookup; call `verify_gateway_token` next.

    Raises:
        TokenMalformed: not a well-formed gateway token.
        TokenAlgorithmRefused: the header's ``alg`` is not ES256, or it has ``crit``.
    """
    return _parse(token)[0]


def verify_token(
    token: str,
    public_key: PublicKey,
    *,
    audience: str,
    issuer: str | None = None,
    expected_thumbprint: str | None = None,
    now: float | None = None,
    leeway: int = DEFAULT_LEEWAY,
    max_lifetime: int = DEFAULT_MAX_LIFETIME,
) -> GatewayToken:
    """Verify a token with `public_key` and check its claims; return its content.

    Args:
        token: the compact token.
        public_key: the gateway's P-256 public key.
        audience: this cloud's URL; the token's ``aud`` must name it.
        issuer: if given, the gateway id ``iss`` must equal.
        expected_thumbprint: if given, the ``x5t#S256`` the header must carry.
        now: the verifier's time in Unix seconds (default: the system clock).
        leeway: clock-skew tolerance in seconds for ``exp``, ``nbf`` and ``iat``.
        max_lifetime: the longest ``exp - iat`` accepted, in seconds.

    Raises:
        TokenError: a subclass per reason (see `provisioning.errors`).
    """
    content, signing_input, signature = _parse(token)
    if expected_thumbprint is not None and content.thumbprint != expected_thumbprint:
        raise TokenCertificateMismatch("the token names another certificate (rotated or revoked?)")
    _check_signature(public_key, signing_input, signature)
    if issuer is not None and content.gateway_id != issuer:
        raise TokenIssuerMismatch(f"token issued by {content.gateway_id!r}, expected {issuer!r}")
    if content.audience != normalize_audience(audience):
        raise TokenAudienceMismatch(
            f"token is for {content.audience!r}, this cloud is {normalize_audience(audience)!r}"
        )
    _check_times(content, int(time.time() if now is None else now), leeway, max_lifetime)
    return content


def verify_gateway_token(
    token: str,
    certificate: x509.Certificate,
    *,
    audience: str,
    now: float | None = None,
    leeway: int = DEFAULT_LEEWAY,
    max_lifetime: int = DEFAULT_MAX_LIFETIME,
) -> GatewayToken:
    """Verify a token against the gateway's current certificate (key, gateway id, thumbprint).

    The caller has already verified `certificate` (issuer, validity, revocation).

    Raises:
        TokenError: a subclass per reason (see `provisioning.errors`).
        CertificateError: the certificate does not name a gateway or has no P-256 key.
    """
    return verify_token(
        token,
        p256_key(certificate),
        audience=audience,
        issuer=gateway_id_of(certificate),
        expected_thumbprint=thumbprint(certificate),
        now=now,
        leeway=leeway,
        max_lifetime=max_lifetime,
    )


def _parse(token: str) -> tuple[GatewayToken, bytes, bytes]:
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenMalformed(f"token longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenMalformed(f"a token has 3 dot-separated parts, this one has {len(parts)}")
    header = decode_json(parts[0], "header")
    if header.get("alg") != ALGORITHM:
        raise TokenAlgorithmRefused(f"algorithm {header.get('alg')!r} refused; only ES256")
    if "crit" in header:
        raise TokenAlgorithmRefused("critical header extensions are not supported")
    if header.get("typ", "JWT") != "JWT":
        raise TokenMalformed(f"token type {header.get('typ')!r} is not JWT")
    if not _THUMBPRINT.fullmatch(str(header.get(THUMBPRINT_HEADER, ""))):
        raise TokenMalformed(f"{THUMBPRINT_HEADER} must be 43 base64url characters (SHA-256)")
    claims = decode_json(parts[1], "payload")
    signature = b64decode(parts[2], "signature")
    content = GatewayToken(
        gateway_id=_claim(claims, "iss", str),
        audience=_claim(claims, "aud", str),
        issued_at=_claim(claims, "iat", int),
        not_before=_claim(claims, "nbf", int),
        expires_at=_claim(claims, "exp", int),
        token_id=_claim(claims, "jti", str),
        thumbprint=_claim(header, THUMBPRINT_HEADER, str),
        extra={k: v for k, v in claims.items() if k not in REGISTERED_CLAIMS},
    )
    return content, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _check_signature(public_key: PublicKey, signing_input: bytes, signature: bytes) -> None:
    if not is_p256(public_key):
        raise TokenSignatureInvalid("the verification key is not a P-256 key")
    if len(signature) != 2 * _COORDINATE_BYTES:
        raise TokenSignatureInvalid(f"ES256 signatures are 64 bytes, got {len(signature)}")
    r = int.from_bytes(signature[:_COORDINATE_BYTES], "big")
    s = int.from_bytes(signature[_COORDINATE_BYTES:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise TokenSignatureInvalid("the token's signature does not verify") from exc


def _check_times(content: GatewayToken, now: int, leeway: int, max_lifetime: int) -> None:
    if content.expires_at <= content.not_before or content.expires_at <= content.issued_at:
        raise TokenMalformed("exp must come after iat and nbf")
    if content.expires_at - content.issued_at > max_lifetime:
        raise TokenLifetimeTooLong(
            f"token lives {content.expires_at - content.issued_at} s; at most {max_lifetime} s"
        )
    if now >= content.expires_at + leeway:
        raise TokenExpired(f"token expired {now - content.expires_at} s ago")
    if now + leeway < max(content.not_before, content.issued_at):
        raise TokenNotYetValid(
            f"token valid from {max(content.not_before, content.issued_at)}, it is {now} "
            "(is the gateway's clock right?)"
        )


def _claim(claims: Mapping[str, Any], name: str, kind: type[_T]) -> _T:
    value = claims.get(name)
    # bool is an int subclass; a JSON true is not a time.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TokenMalformed(f"claim {name!r} must be a {kind.__name__}, got {value!r}")
    return value
