"""Commands to gateways, the gateway's channel that delivers them, and its write records.

Users queue commands (`POST /v1/gateways/{id}/commands`); the gateway holds one outbound
request open, `GET /v1/gateway/channel` (server-sent events, with its normal token), and
receives there every pending command and the shadow's desired setpoints, within moments of the
change on whichever replica made it (`cloud.hub`). Results come back in the gateway's batches.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import Field, TypeAdapter

from cloud.api.deps import Caller, Id, OperatorCaller, Rt, Runtime, ViewerTenant, now_us, who
from cloud.api.schemas import CommandCreate
from cloud.auth import Principal, Role
from cloud.contract import (
    ChannelCommand,
    ChannelHello,
    CommandSpec,
    DesiredConfig,
    DesiredSetpoint,
    DesiredState,
)
from cloud.errors import InvalidRequest
from cloud.storage.records import Command, WriteLog
from cloud.stream import sse

router = APIRouter(tags=["commands"])

IdempotencyKey = Annotated[
    str,
    Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$"),
]
_SPEC: TypeAdapter[Any] = TypeAdapter(CommandSpec)
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def queue_command(
    rt: Runtime,
    caller: Principal,
    tenant_id: int,
    gateway_id: int,
    spec: Any,
    *,
    idempotency_key: str | None,
) -> tuple[Command, bool]:
    """Queue a command for a gateway (or find the one this key queued); (command, created)."""
    ttl = spec.ttl_s if spec.ttl_s is not None else rt.settings.command_ttl_default_s
    if ttl > rt.settings.command_ttl_max_s:
        raise InvalidRequest(
            f"ttl_s may be at most {rt.settings.command_ttl_max_s} seconds",
            path=["body", "ttl_s"],
        )
    async with rt.repo.live(tenant_id) as (tx, news):
        command, created = await rt.commands.create(
            tx, tenant_id, gateway_id, kind=spec.kind, args=spec.args.model_dump(mode="json"),
            ttl_s=ttl, created_by=who(caller), idempotency_key=idempotency_key,
            max_pending=rt.settings.max_pending_commands, now_us=now_us(), news=news,
        )  # fmt: skip
    if created:
        rt.metrics.commands.labels(command.kind).inc()
    return command, created


@router.post(
    "/v1/gateways/{gateway_id}/commands",
    status_code=201,
    responses={
        200: {"model": Command, "description": "The same Idempotency-Key queued it before"},
        409: {"description": "The Idempotency-Key was used for a different command"},
        429: {"description": "Too many commands waiting for this gateway"},
    },
)
async def create_command(
    gateway_id: Id,
    *,
    body: Annotated[CommandCreate, Body()],
    caller: OperatorCaller,
    rt: Rt,
    response: Response,
    idempotency_key: Annotated[IdempotencyKey | None, Header()] = None,
) -> Command:
    """Queue a command for the gateway (operator). With an ``Idempotency-Key`` header, the
    same key answers the same command again (200) instead of queuing a second one."""
    tenant_id = caller.require_user(Role.OPERATOR)
    command, created = await queue_command(
        rt, caller, tenant_id, gateway_id, body, idempotency_key=idempotency_key
    )
    response.status_code = 201 if created else 200
    return command


@router.get("/v1/gateways/{gateway_id}/commands")
async def list_commands(
    gateway_id: Id,
    *,
    tenant_id: ViewerTenant,
    rt: Rt,
    state: Literal["queued", "delivered", "succeeded", "failed", "expired", "unknown", "cancelled"]
    | None = None,
    kind: Literal["write", "ack_alarm", "reload_config", "requeue_quarantine", "ping"]
    | None = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="ids below")] = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
) -> list[Command]:
    """The gateway's commands, newest first (page with `before` = the last id seen)."""
    return await rt.commands.find(
        tenant_id, gateway_id, state=state, kind=kind, before=before, limit=limit
    )


@router.get("/v1/gateways/{gateway_id}/commands/{command_id}")
async def get_command(gateway_id: Id, command_id: Id, tenant_id: ViewerTenant, rt: Rt) -> Command:
    """One command: its state, the time of each step, and the gateway's result."""
    return await rt.commands.get(tenant_id, gateway_id, command_id)


@router.delete(
    "/v1/gateways/{gateway_id}/commands/{command_id}",
    responses={409: {"description": "The command is no longer queued"}},
)
async def cancel_command(gateway_id: Id, command_id: Id, caller: OperatorCaller, rt: Rt) -> Command:
    """Cancel a queued command (operator); one the gateway already received runs its course."""
    tenant_id = caller.require_user(Role.OPERATOR)
    async with rt.repo.live(tenant_id) as (tx, news):
        return await rt.commands.cancel(
            tx, tenant_id, gateway_id, command_id, by=who(caller), now_us=now_us(), news=news
        )


@router.get("/v1/gateways/{gateway_id}/writes")
async def list_writes(
    gateway_id: Id,
    tenant_id: ViewerTenant,
    rt: Rt,
    device: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
) -> list[WriteLog]:
    """Every setpoint write the gateway reported (cloud, shadow or local), newest first."""
    return await rt.writes.find(tenant_id, gateway_id, device=device, limit=limit)


# --------------------------------------------------------------------- the gateway's channel


@router.get(
    "/v1/gateway/channel",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "hello, config, desired and command events"}},
)  # fmt: skip
async def channel(caller: Caller, rt: Rt) -> StreamingResponse:
    """The gateway's command channel (gateway token): server-sent events ``hello``, then
    ``config`` (the config version the cloud wants it to run) and ``desired`` (on connect and
    each change) and ``command`` (each pending command, again on every new connection until
    its result arrives), with keepalive comments. The server ends
    it after a few minutes; the gateway reconnects."""
    tenant_id, gateway_id = caller.require_gateway()
    return StreamingResponse(
        _channel(rt, tenant_id, gateway_id), media_type="text/event-stream", headers=_SSE_HEADERS
    )


async def _channel(rt: Runtime, tenant_id: int, gateway_id: int) -> AsyncIterator[bytes]:
    settings = rt.settings
    keepalive = settings.channel_keepalive_s
    # Jittered, so a fleet that connected at once does not reconnect at once.
    deadline = time.monotonic() + settings.channel_max_s * random.uniform(0.8, 1.0)  # noqa: S311
    hello = ChannelHello(gateway_id=gateway_id, server_time=now_us(), keepalive_s=keepalive)
    with rt.hub.gateway_waiter(gateway_id) as wake:
        yield sse("hello", hello.model_dump_json())
        sent: set[int] = set()
        desired_version: int | None = None
        config_sent: DesiredConfig | None = None
        while (left := deadline - time.monotonic()) > 0:
            wake.clear()  # before reading: a change after the read wakes the next round
            now = now_us()
            async with rt.repo.live(tenant_id) as (tx, news):
                commands = await rt.commands.deliver(
                    tx, tenant_id, gateway_id, sent=sent, now_us=now, news=news
                )
                version, setpoints = await rt.shadows.desired(tx, tenant_id, gateway_id)
                config = _config(
                    await rt.configs.desired(tx, tenant_id, gateway_id, now_us=now, news=news),
                    now,
                )
            if config_sent is None or config.version != config_sent.version:
                config_sent = config
                yield sse("config", config.model_dump_json())
            if version != desired_version:
                desired_version = version
                yield sse("desired", _desired(version, setpoints, now).model_dump_json())
            for command in commands:
                sent.add(command.id)
                yield sse("command", _delivered(command, now).model_dump_json())
            while not wake.is_set() and (left := deadline - time.monotonic()) > 0:
                try:
                    async with asyncio.timeout(min(keepalive, left)):
                        await wake.wait()
                except TimeoutError:
                    yield b": keepalive\n\n"


def _desired(version: int, setpoints: dict[str, Any], now: int) -> DesiredState:
    return DesiredState(
        version=version,
        setpoints={d: {t: DesiredSetpoint(**e) for t, e in tags.items()}
                   for d, tags in setpoints.items()},
        server_time=now,
    )  # fmt: skip


def _config(found: tuple[int, str, int, str, int | None] | None, now: int) -> DesiredConfig:
    if found is None:
        return DesiredConfig(version=0, server_time=now)
    version, digest, at, by, rollout = found
    return DesiredConfig(
        version=version, digest=digest, assigned_at=at, assigned_by=by, rollout_id=rollout,
        server_time=now,
    )  # fmt: skip


def _delivered(command: Command, now: int) -> ChannelCommand:
    return ChannelCommand(
        id=command.id,
        command=_SPEC.validate_python({"kind": command.kind, "args": command.args}),
        created_at=command.created_at,
        created_by=command.created_by,
        expires_at=command.expires_at,
        expires_in_s=max(0.0, (command.expires_at - now) / 1e6),
    )
