"""Gateway tokens for the uplink: minted from the identity's key, reused until nearly expired.

Minting costs one ECDSA signature (tens of microseconds), so caching is not about speed: it keeps
the token stable across the requests of one burst, and renewing at 80 % of the lifetime (by
default) means a token never expires in flight, even with a slow upload and a little clock skew.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from edge.identity import GatewayIdentity
from provisioning.tokens import DEFAULT_LIFETIME, mint_token

RENEW_FRACTION: Final = 0.2


class TokenMinter:
    """Mints the gateway's ES256 tokens, reusing one until little of its lifetime is left.

    Args:
        identity: the gateway identity whose key signs.
        lifetime: token lifetime in seconds.
        renew_fraction: mint a new token once less than this share of the lifetime remains.
        clock: Unix time source (injectable for tests).
    """

    def __init__(
        self,
        identity: GatewayIdentity,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        renew_fraction: float = RENEW_FRACTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError(f"renew_fraction must be between 0 and 1, got {renew_fraction}")
        self._identity = identity
        self._lifetime = lifetime
        self._renew_after = lifetime * (1 - renew_fraction)
        self._clock = clock
        self._token: str | None = None
        self._issued_at = 0

    def token(self) -> str:
        """A valid token, minted now if the cached one is close to expiry."""
        now = int(self._clock())
        # A clock stepped backwards (NTP) also mints afresh: iat must not lie in the future.
        if self._token is None or not self._issued_at <= now < self._issued_at + self._renew_after:
            self._token = mint_token(
                self._identity.private_key,
                gateway_id=self._identity.gateway_id,
                audience=self._identity.cloud_url,
                thumbprint=self._identity.thumbprint,
                lifetime=self._lifetime,
                now=now,
            )
            self._issued_at = now
        return self._token

    def invalidate(self) -> None:
        """Forget the cached token (e.g. after the cloud answered 401)."""
        self._token = None

    def use(self, identity: GatewayIdentity) -> None:
        """Sign with `identity` from now on (after a rotation); drops the cached token."""
        self._identity = identity
        self._token = None
