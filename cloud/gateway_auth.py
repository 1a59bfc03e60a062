"""Gateways authenticate with ES256 tokens signed by their own key (`provisioning.tokens`).

`GatewayTokenVerifier` finds the certificate a token names (its ``x5t#S256`` header) in the
database, checks the certificate's state there (current, not rotated or revoked; the gateway not
revoked) and verifies the token with the certificate's key: signature, issuer = gateway id,
audience = this cloud's `public_url`, expiry and lifetime with the clock-skew leeway. The state
is read from the database on every request, so a revocation or a rotation is refused at once by
every replica. Parsed certificates are cached by thumbprint (a certificate's bytes never change;
its state is never cached).

Replay: ingest tokens are bearer tokens the gateway reuses for many requests during their short
life (`edge.gateway_token.TokenMinter`), so their ``jti`` is not single-use; a captured token is
good until its ``exp`` (5 minutes by default, at most `token_max_lifetime_s`), and TLS keeps it
from being captured. Rotation tokens are single-use (their ``jti`` is stored) and bound to the
CSR they carry.

`GatewayTokenAuthenticator` is the `Authenticator` of the chain; `WithoutStaticGatewayTokens`
drops the interim per-gateway bearer tokens from another authenticator when
`allow_static_gateway_tokens` is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509

from cloud.auth import Authenticator, Principal, PrincipalKind
from cloud.provisioning_errors import GatewayTokenRefused
from cloud.storage.provisioning import CertificateEntry, ProvisioningStore
from provisioning.certificates import load_certificates_pem
from provisioning.errors import (
    CertificateError,
    TokenAlgorithmRefused,
    TokenAudienceMismatch,
    TokenCertificateMismatch,
    TokenError,
    TokenExpired,
    TokenIssuerMismatch,
    TokenLifetimeTooLong,
    TokenNotYetValid,
    TokenSignatureInvalid,
)
from provisioning.tokens import GatewayToken, read_unverified, verify_gateway_token

_CACHE_SIZE: Final = 10_000
_REASONS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (TokenExpired, "expired"),
    (TokenNotYetValid, "not_yet_valid"),
    (TokenAudienceMismatch, "audience"),
    (TokenSignatureInvalid, "signature"),
    (TokenIssuerMismatch, "issuer"),
    (TokenCertificateMismatch, "certificate"),
    (TokenLifetimeTooLong, "lifetime"),
    (TokenAlgorithmRefused, "algorithm"),
    (CertificateError, "certificate"),
)


def looks_like_gateway_token(token: str) -> bool:
    """True for the compact-JWS shape (API keys and interim tokens have no dots)."""
    return token.count(".") == 2


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature and claims verified, with the certificate entry it names."""

    content: GatewayToken
    entry: CertificateEntry


class GatewayTokenVerifier:
    """Verifies gateway tokens against the certificates and their state in the database.

    Args:
        store: the provisioning storage.
        audience: this cloud's public URL.
        max_lifetime: the longest token lifetime accepted, in seconds.
        leeway: clock-skew tolerance in seconds.
    """

    def __init__(
        self, store: ProvisioningStore, *, audience: str, max_lifetime: int, leeway: int
    ) -> None:
        self._store = store
        self._audience = audience
        self._max_lifetime = max_lifetime
        self._leeway = leeway
        self._certificates: dict[str, x509.Certificate] = {}

    async def verify(self, token: str, *, allow_rotated: bool = False) -> VerifiedToken:
        """Verify `token`; a rotated certificate passes only with `allow_rotated`.

        Raises:
            GatewayTokenRefused: with the reason.
        """
        try:
            thumbprint = read_unverified(token).thumbprint
        except TokenError as exc:
            raise GatewayTokenRefused(
                f"malformed gateway token: {exc}", reason="malformed"
            ) from exc
        entry = await self._store.certificate_by_thumbprint(thumbprint)
        if entry is None:
            raise GatewayTokenRefused(
                "the token names a certificate this cloud never issued",
                reason="unknown_certificate",
            )
        if entry.gateway_revoked or entry.state == "revoked":
            raise GatewayTokenRefused("the gateway has been revoked", reason="revoked")
        if entry.state == "rotated" and not allow_rotated:
            raise GatewayTokenRefused(
                "the token's certificate has been replaced by a newer one",
                reason="certificate_rotated",
            )
        certificate = self._certificate(thumbprint, entry.certificate_pem)
        expired = certificate.not_valid_after_utc + timedelta(seconds=self._leeway)
        if expired < datetime.now(UTC):
            raise GatewayTokenRefused(
                "the gateway's certificate has expired", reason="certificate_expired"
            )
        try:
            content = verify_gateway_token(
                token,
                certificate,
                audience=self._audience,
                leeway=self._leeway,
                max_lifetime=self._max_lifetime,
            )
        except (TokenError, CertificateError) as exc:
            raise GatewayTokenRefused(str(exc), reason=_reason(exc)) from exc
        return VerifiedToken(content=content, entry=entry)

    def _certificate(self, thumbprint: str, pem: str) -> x509.Certificate:
        found = self._certificates.get(thumbprint)
        if found is None:
            if len(self._certificates) >= _CACHE_SIZE:
                self._certificates.clear()
            found = self._certificates[thumbprint] = load_certificates_pem(pem.encode())[0]
        return found


def _reason(exc: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "malformed"


class GatewayTokenAuthenticator:
    """The chain's authenticator for ES256 gateway tokens (others are left to the next one)."""

    def __init__(self, verifier: GatewayTokenVerifier) -> None:
        self._verifier = verifier

    async def authenticate(self, token: str) -> Principal | None:
        """The gateway principal of a verified token; None if `token` is not token-shaped.

        Raises:
            GatewayTokenRefused: a gateway token that does not verify (the reason is answered,
                so a gateway with a wrong clock or a rotated certificate can tell).
        """
        if not looks_like_gateway_token(token):
            return None
        verified = await self._verifier.verify(token)
        entry = verified.entry
        return Principal(
            PrincipalKind.GATEWAY, tenant_id=entry.tenant_id, subject_id=entry.gateway_id
        )


class WithoutStaticGatewayTokens:
    """Wraps an authenticator and refuses the gateways it finds (interim tokens turned off)."""

    def __init__(self, inner: Authenticator) -> None:
        self._inner = inner

    async def authenticate(self, token: str) -> Principal | None:
        """The inner principal, unless it is a gateway."""
        found = await self._inner.authenticate(token)
        if found is not None and found.kind is PrincipalKind.GATEWAY:
            return None
        return found
