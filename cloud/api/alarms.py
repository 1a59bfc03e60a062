"""Alarms: their current state (one row per alarm), their transitions, and acknowledgement,
which the cloud asks of the gateway (an ``ack_alarm`` command) rather than pretending to do."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response

from cloud.api.commands import IdempotencyKey, queue_command
from cloud.api.deps import Id, IdFilter, OperatorCaller, Rt, ViewerTenant
from cloud.api.schemas import AckAlarmCommandCreate, AlarmAck
from cloud.auth import Role
from cloud.contract import AckAlarmArgs
from cloud.storage.records import Alarm, AlarmTransition, Command

router = APIRouter(tags=["alarms"])

Micros = Annotated[int, Query(ge=0, le=2**62, description="µs since the epoch, UTC")]


@router.get("/v1/alarms")
async def list_alarms(
    *,
    tenant_id: ViewerTenant,
    rt: Rt,
    state: Literal["active", "acknowledged", "cleared", "normal", "event"] | None = None,
    kind: Literal["alarm", "event"] | None = None,
    severity: Literal["low", "medium", "high", "critical"] | None = None,
    device: Annotated[str | None, Query(max_length=200)] = None,
    gateway_id: IdFilter = None,
    since: Micros | None = None,
    until: Micros | None = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
) -> list[Alarm]:
    """The alarms' current state, one row per alarm, last changed first. ``state=active``
    answers the alarms active and unacknowledged now; `since`/`until` bound the last change."""
    return await rt.alarms.find(
        tenant_id, state=state, kind=kind, severity=severity, device=device,
        gateway_id=gateway_id, since=since, until=until, limit=limit,
    )  # fmt: skip


@router.get("/v1/alarms/{alarm_id}")
async def get_alarm(alarm_id: Id, tenant_id: ViewerTenant, rt: Rt) -> Alarm:
    """One alarm's current state."""
    return await rt.alarms.get(tenant_id, alarm_id)


@router.get("/v1/alarms/{alarm_id}/events")
async def alarm_events(
    alarm_id: Id,
    tenant_id: ViewerTenant,
    rt: Rt,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
) -> list[AlarmTransition]:
    """The alarm's transitions (raised, cleared, acknowledged), newest first."""
    return await rt.alarms.transitions(tenant_id, alarm_id, limit=limit)


@router.post(
    "/v1/alarms/{alarm_id}/ack",
    status_code=202,
    responses={200: {"model": Command, "description": "The same Idempotency-Key was used"}},
)
async def acknowledge_alarm(
    alarm_id: Id,
    *,
    caller: OperatorCaller,
    rt: Rt,
    response: Response,
    body: AlarmAck | None = None,
    idempotency_key: Annotated[IdempotencyKey | None, Header()] = None,
) -> Command:
    """Ask the alarm's gateway to acknowledge it: answers the ``ack_alarm`` command. The alarm
    shows `acknowledged_at` and `acknowledged_by` once the gateway reports the acknowledgement
    (the gateway owns its alarms; the cloud never marks one acknowledged by itself)."""
    tenant_id = caller.require_user(Role.OPERATOR)
    alarm = await rt.alarms.get(tenant_id, alarm_id)
    ack = body or AlarmAck()
    spec = AckAlarmCommandCreate(
        kind="ack_alarm", args=AckAlarmArgs(name=alarm.name, comment=ack.comment), ttl_s=ack.ttl_s
    )
    command, created = await queue_command(
        rt, caller, tenant_id, alarm.gateway_id, spec, idempotency_key=idempotency_key
    )
    response.status_code = 202 if created else 200
    return command
