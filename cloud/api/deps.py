"""Request dependencies: the app's runtime objects and the authenticated principal."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.auth import Authenticator, Principal, PrincipalKind, Role, token_digest
from cloud.errors import Unauthenticated
from cloud.hub import Hub
from cloud.metrics import CloudMetrics
from cloud.settings import CloudSettings
from cloud.storage.alarms import AlarmStore
from cloud.storage.base import Database
from cloud.storage.commands import CommandStore
from cloud.storage.repository import Repository
from cloud.storage.shadow import ShadowStore
from cloud.storage.writes import WriteStore


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


def runtime(request: Request) -> Runtime:
    """The app's runtime objects."""
    rt: Runtime = request.app.state.runtime
    return rt


_bearer = HTTPBearer(auto_error=False, description="API key, gateway token or platform key")


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Authenticate the bearer token; count the call in the tenant's usage."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthenticated("send an Authorization: Bearer <token> header")
    rt = runtime(request)
    for authenticator in rt.authenticators:
        found = await authenticator.authenticate(credentials.credentials)
        if found is not None:
            if found.kind is PrincipalKind.USER and found.tenant_id is not None:
                await rt.repo.record_api_call(found.tenant_id, now_us=now_us())
            return found
    raise Unauthenticated("unknown or revoked credentials")


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


ViewerTenant = Annotated[int, Depends(viewer)]
OperatorTenant = Annotated[int, Depends(operator)]
AdminTenant = Annotated[int, Depends(admin)]


Id = Annotated[int, Path(ge=1, le=2**63 - 1, description="an id of the caller's tenant")]
IdFilter = Annotated[int | None, Query(ge=1, le=2**63 - 1)]
