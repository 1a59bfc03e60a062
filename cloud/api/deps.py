"""Request dependencies: the app's runtime objects and the authenticated principal."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import Depends, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.auth import Access, Authenticator, Principal, PrincipalKind, Role, token_digest
from cloud.errors import Unauthenticated
from cloud.hub import Hub
from cloud.metrics import CloudMetrics
from cloud.settings import CloudSettings
from cloud.storage.alarms import AlarmStore
from cloud.storage.assets import AssetStore
from cloud.storage.base import Database
from cloud.storage.commands import CommandStore
from cloud.storage.configs import ConfigStore
from cloud.storage.repository import Repository
from cloud.storage.rollouts import RolloutStore
from cloud.storage.shadow import ShadowStore
from cloud.storage.status import GatewayFacts, StatusStore
from cloud.storage.writes import WriteStore

DATA_SOURCE: Final = "X-Data-Source"
"""The response header that says an answer carries simulated data (value ``simulation``)."""


def say_data_source(response: Response, *, simulated: bool) -> None:
    """Mark a response that carries simulated data, so a program sees it without the body."""
    if simulated:
        response.headers[DATA_SOURCE] = "simulation"


def now_us() -> int:
    """The current time in int microseconds since the epoch, UTC."""
    return time.time_ns() // 1_000


class StoredTokenAuthenticator:
    """API keys and the interim per-gateway tokens, found by digest in the database."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo

    async def authenticate(self, token: str) -> Principal | None:
        """The stored principal for `token`, or None."""
        found = await self._repo.authenticate(token_digest(token), now_us=now_us())
        if found is None:
            return None
        return Principal(found.kind, found.tenant_id, found.role, found.subject_id)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What one app instance holds while it runs: no request state, nothing that must survive."""

    settings: CloudSettings
    db: Database
    repo: Repository
    metrics: CloudMetrics
    authenticators: tuple[Authenticator, ...]
    hub: Hub
    alarms: AlarmStore
    commands: CommandStore
    shadows: ShadowStore
    writes: WriteStore
    decoder: Executor
    """Threads that decode ingest bodies (`CloudSettings.decode_threads`), off the event loop."""
    configs: ConfigStore
    rollouts: RolloutStore
    status: StatusStore
    facts: GatewayFacts
    assets: AssetStore


def runtime(request: Request) -> Runtime:
    """The app's runtime objects."""
    rt: Runtime = request.app.state.runtime
    return rt


_bearer = HTTPBearer(auto_error=False, description="API key, gateway token or platform key")


def bearer_token(request: Request) -> str | None:
    """The bearer token of the Authorization header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def bearer_required(request: Request) -> str:
    """The bearer token, for operations that verify it themselves (the request guard refuses a
    request without one before reading its body)."""
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated("send an Authorization: Bearer <token> header")
    return token


async def authenticate(rt: Runtime, token: str | None) -> Principal:
    """The principal of a bearer token; `Unauthenticated` if there is none or it is unknown.

    Counts the call in the tenant's usage when the caller is a tenant user.
    """
    if not token:
        raise Unauthenticated("send an Authorization: Bearer <token> header")
    for authenticator in rt.authenticators:
        found = await authenticator.authenticate(token)
        if found is not None:
            if found.kind is PrincipalKind.USER and found.tenant_id is not None:
                await rt.repo.record_api_call(found.tenant_id, now_us=now_us())
            return found
    raise Unauthenticated("unknown or revoked credentials")


async def principal(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The authenticated caller: found by the request guard before the body was read (or here,
    for an app without the guard)."""
    found = getattr(request.state, "principal", None)
    if isinstance(found, Principal):
        return found
    return await authenticate(runtime(request), bearer_token(request))


Caller = Annotated[Principal, Depends(principal)]
Rt = Annotated[Runtime, Depends(runtime)]


def who(caller: Principal) -> str:
    """How audit records name the caller: ``key 12`` (an API key's id), ``platform admin``."""
    if caller.kind is PrincipalKind.USER:
        return f"key {caller.subject_id}"
    if caller.kind is PrincipalKind.GATEWAY:
        return f"gateway {caller.subject_id}"
    return "platform admin"


def viewer(caller: Caller) -> int:
    """The caller's tenant; any tenant user may read."""
    return caller.require_user(Role.VIEWER)


def operator(caller: Caller) -> int:
    """The caller's tenant, if the caller may operate (acknowledge, rename)."""
    return caller.require_user(Role.OPERATOR)


def admin(caller: Caller) -> int:
    """The caller's tenant, if the caller administers it."""
    return caller.require_user(Role.ADMIN)


def operator_caller(caller: Caller) -> Principal:
    """The caller, if it is a tenant user who may operate (for endpoints that record who)."""
    caller.require_user(Role.OPERATOR)
    return caller


def admin_caller(caller: Caller) -> Principal:
    """The caller, if it administers its tenant (for endpoints that record who)."""
    caller.require_user(Role.ADMIN)
    return caller


def platform_admin(caller: Caller) -> Principal:
    """The caller, if it is the platform admin."""
    caller.require_platform_admin()
    return caller


def gateway(caller: Caller) -> tuple[int, int]:
    """(tenant id, gateway id) of a gateway caller."""
    return caller.require_gateway()


ViewerTenant = Annotated[int, Depends(viewer)]
OperatorTenant = Annotated[int, Depends(operator)]
AdminTenant = Annotated[int, Depends(admin)]
OperatorCaller = Annotated[Principal, Depends(operator_caller)]
AdminCaller = Annotated[Principal, Depends(admin_caller)]
PlatformAdmin = Annotated[Principal, Depends(platform_admin)]
GatewayCaller = Annotated[tuple[int, int], Depends(gateway)]

ACCESS: Final[dict[Callable[..., Any], Access]] = {
    principal: Access.ANY,
    viewer: Access.VIEWER,
    operator: Access.OPERATOR,
    operator_caller: Access.OPERATOR,
    admin: Access.ADMIN,
    admin_caller: Access.ADMIN,
    platform_admin: Access.PLATFORM,
    gateway: Access.GATEWAY,
}
"""What each of these dependencies demands of the caller: the request guard checks it before
the body is read, so a new endpoint that uses them is guarded without doing anything more."""


BIGINT_MAX: Final = 2**63 - 1
Id = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="an id of the caller's tenant")]
IdFilter = Annotated[int | None, Query(ge=1, le=BIGINT_MAX)]
