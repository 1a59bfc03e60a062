"""Principals: who is calling, in which tenant, with which role.

Every request is authenticated into exactly one `Principal` by a chain of `Authenticator`s. The
tenant of every tenant-scoped operation comes from the principal, never from a body or a path.
Gateways currently authenticate with an interim per-gateway bearer token created by a tenant
admin (`StoredTokenAuthenticator`); provisioning adds a signed-token authenticator to the chain
and the rest of the service does not change.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from cloud.errors import Forbidden

API_KEY_PREFIX: Final = "tgw_key_"
GATEWAY_TOKEN_PREFIX: Final = "tgw_gw_"  # noqa: S105 - a public prefix, not a secret
VISIBLE_PREFIX_LENGTH: Final = 14


class Role(StrEnum):
    """A user's role within one tenant; each includes the rights of the ones below it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Viewer 0, operator 1, admin 2."""
        return (Role.VIEWER, Role.OPERATOR, Role.ADMIN).index(self)


class PrincipalKind(StrEnum):
    """What kind of caller a principal is."""

    PLATFORM_ADMIN = "platform_admin"
    USER = "user"
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Attributes:
        kind: platform admin, user (API key) or gateway.
        tenant_id: the tenant every operation is scoped to (None for the platform admin).
        role: the user's role (None for gateways and the platform admin).
        subject_id: the API key id or the gateway id.
    """

    kind: PrincipalKind
    tenant_id: int | None = None
    role: Role | None = None
    subject_id: int | None = None

    def require_user(self, role: Role) -> int:
        """The tenant id if this is a user with at least `role`; `Forbidden` otherwise."""
        if self.kind is not PrincipalKind.USER or self.tenant_id is None or self.role is None:
            raise Forbidden(f"this operation needs a tenant user with role {role.value}")
        if self.role.rank < role.rank:
            raise Forbidden(
                f"this operation needs role {role.value}; the key has {self.role.value}"
            )
        return self.tenant_id

    def require_gateway(self) -> tuple[int, int]:
        """(tenant id, gateway id) if this is a gateway; `Forbidden` otherwise."""
        if self.kind is not PrincipalKind.GATEWAY or self.tenant_id is None:
            raise Forbidden("only gateways may post batches")
        assert self.subject_id is not None  # noqa: S101 - invariant of gateway principals
        return self.tenant_id, self.subject_id

    def require_platform_admin(self) -> None:
        """Return if this is the platform admin; `Forbidden` otherwise."""
        if self.kind is not PrincipalKind.PLATFORM_ADMIN:
            raise Forbidden("this operation needs the platform admin key")


class Access(StrEnum):
    """What an operation demands of its caller (checked before the request body is read)."""

    ANY = "any"  # any authenticated principal; the operation decides the rest
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    PLATFORM = "platform"
    GATEWAY = "gateway"

    def check(self, principal: Principal) -> None:
        """Return if `principal` may call an operation demanding this; `Forbidden` otherwise."""
        if self is Access.PLATFORM:
            principal.require_platform_admin()
        elif self is Access.GATEWAY:
            principal.require_gateway()
        elif self is not Access.ANY:
            principal.require_user(Role(self.value))


class Authenticator(Protocol):
    """Turns a bearer token into a principal, or None when the token is not its kind."""

    async def authenticate(self, token: str) -> Principal | None:
        """The principal for `token`, or None."""
        ...


class PlatformKeyAuthenticator:
    """The platform admin key from the service settings (constant-time comparison)."""

    def __init__(self, key: str | None) -> None:
        self._key = key

    async def authenticate(self, token: str) -> Principal | None:
        """The platform admin principal if `token` is the configured key."""
        if self._key and hmac.compare_digest(token.encode(), self._key.encode()):
            return Principal(PrincipalKind.PLATFORM_ADMIN)
        return None


@dataclass(frozen=True, slots=True)
class NewSecret:
    """A freshly generated secret: shown once, stored only as `digest`."""

    token: str
    prefix: str
    digest: str


def new_secret(kind_prefix: str) -> NewSecret:
    """A random bearer secret with a visible prefix (for identification) and its digest."""
    token = kind_prefix + secrets.token_urlsafe(32)
    return NewSecret(token, token[:VISIBLE_PREFIX_LENGTH], token_digest(token))


def token_digest(token: str) -> str:
    """SHA-256 of a token. The tokens carry 256 random bits, so a fast hash is safe here."""
    return hashlib.sha256(token.encode()).hexdigest()
