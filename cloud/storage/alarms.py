"""Alarms in the cloud: the current state of each alarm, and the transitions that led to it.

A batch's alarm records are transitions. Each is stored once in ``alarm_events`` (a replay
changes nothing) and moves the alarm's row in ``alarms`` forward, unless a newer transition is
already there (a late batch never moves an alarm back in time). Acknowledging happens on the
gateway, where the alarm lives: the cloud asks for it with an ``ack_alarm`` command, and the
gateway's acknowledgement comes back as a transition carrying who made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from cloud.contract import AlarmRecord
from cloud.errors import NotFound
from cloud.storage.base import Database, Row, Tx
from cloud.storage.records import Alarm, AlarmTransition

_ALARM: Final = (
    "id, gateway_id, device, tag, name, kind, state, severity, message, value, ts, raised_at,"
    " cleared_at, acknowledged_at, acknowledged_by, comment, received_at"
)
_ALARM_NAMES: Final = _ALARM.replace(" ", "").split(",")
_EVENT: Final = (
    "id, alarm_id, gateway_id, device, tag, name, kind, state, transition, ts, severity,"
    " message, value, acknowledged_by, comment, received_at"
)
_EVENT_NAMES: Final = _EVENT.replace(" ", "").split(",")
_INFERRED: Final = {"active": "raised", "acknowledged": "acked", "cleared": "cleared",
                    "normal": "cleared", "event": "raised"}  # fmt: skip

# One transition moves the current row: a raise starts a new episode (clearing the previous
# one's times), a clear and an acknowledgement add theirs. `WHERE alarms.ts <= excluded.ts`
# keeps a late, older transition from moving the alarm back.
_UPSERT: Final = f"""
INSERT INTO alarms (tenant_id, gateway_id, device, tag, name, kind, state, severity, message,
  value, ts, received_at, raised_at, cleared_at, acknowledged_at, acknowledged_by, comment)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (gateway_id, device, name, kind) DO UPDATE SET
  tag = excluded.tag, state = excluded.state, severity = excluded.severity,
  message = excluded.message, value = excluded.value, ts = excluded.ts,
  received_at = excluded.received_at,
  raised_at = COALESCE(excluded.raised_at, alarms.raised_at),
  cleared_at = CASE WHEN excluded.raised_at IS NOT NULL THEN NULL
                    ELSE COALESCE(excluded.cleared_at, alarms.cleared_at) END,
  acknowledged_at = CASE WHEN excluded.raised_at IS NOT NULL THEN NULL
                         ELSE COALESCE(excluded.acknowledged_at, alarms.acknowledged_at) END,
  acknowledged_by = CASE WHEN excluded.raised_at IS NOT NULL THEN NULL
                         WHEN excluded.acknowledged_at IS NOT NULL THEN excluded.acknowledged_by
                         ELSE alarms.acknowledged_by END,
  comment = CASE WHEN excluded.raised_at IS NOT NULL THEN NULL
                 WHEN excluded.acknowledged_at IS NOT NULL THEN excluded.comment
                 ELSE alarms.comment END
WHERE alarms.ts <= excluded.ts
RETURNING {_ALARM}
"""


def _alarm(row: Row) -> Alarm:
    return Alarm(**dict(zip(_ALARM_NAMES, row, strict=True)))


def _event(row: Row) -> AlarmTransition:
    return AlarmTransition(**dict(zip(_EVENT_NAMES, row, strict=True)))


async def write_alarms(
    tx: Tx, tenant_id: int, gateway_id: int, records: Sequence[AlarmRecord], now_us: int
) -> list[dict[str, Any]]:
    """Store a batch's transitions; the alarms they moved, as `/v1/stream` shows them."""
    changed: list[dict[str, Any]] = []
    for a in records:
        transition = a.transition or _INFERRED[a.state]
        raised = a.ts if transition == "raised" else None
        cleared = a.ts if transition == "cleared" else None
        acked = a.ts if transition == "acked" else None
        row = await tx.fetchone(
            _UPSERT,
            [tenant_id, gateway_id, a.device, a.tag, a.name, a.kind, a.state, a.severity,
             a.message, a.value, a.ts, now_us, raised, cleared, acked, a.acknowledged_by,
             a.comment],
        )  # fmt: skip
        alarm_id = row[0] if row is not None else await _alarm_id(tx, gateway_id, a)
        stored = await tx.execute(
            "INSERT INTO alarm_events (tenant_id, gateway_id, alarm_id, device, tag, name, kind,"
            " state, transition, ts, severity, message, value, received_at, acknowledged_by,"
            " comment) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (gateway_id, device, name, kind, state, ts) DO NOTHING",
            [tenant_id, gateway_id, alarm_id, a.device, a.tag, a.name, a.kind, a.state,
             transition, a.ts, a.severity, a.message, a.value, now_us, a.acknowledged_by,
             a.comment],
        )  # fmt: skip
        if stored:
            changed.append({"alarm_id": alarm_id, "gateway_id": gateway_id, "device": a.device,
                            "tag": a.tag, "name": a.name, "kind": a.kind, "state": a.state,
                            "transition": transition, "ts": a.ts, "severity": a.severity,
                            "message": a.message, "value": a.value,
                            "acknowledged_by": a.acknowledged_by})  # fmt: skip
    return changed


async def _alarm_id(tx: Tx, gateway_id: int, a: AlarmRecord) -> int:
    row = await tx.fetchone(
        "SELECT id FROM alarms WHERE gateway_id = %s AND device = %s AND name = %s AND kind = %s",
        [gateway_id, a.device, a.name, a.kind],
    )
    assert row is not None  # noqa: S101 - the upsert above created it or a newer one kept it
    return int(row[0])


class AlarmStore:
    """The tenant's alarms (current state) and their transitions."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def find(
        self,
        tenant_id: int,
        *,
        state: str | None = None,
        kind: str | None = None,
        severity: str | None = None,
        device: str | None = None,
        gateway_id: int | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
    ) -> list[Alarm]:
        """One row per alarm, filtered on its current state; last changed first."""
        sql = f"SELECT {_ALARM} FROM alarms WHERE tenant_id = %s"
        params: list[Any] = [tenant_id]
        for column, op, value in (
            ("state", "=", state),
            ("kind", "=", kind),
            ("severity", "=", severity),
            ("device", "=", device),
            ("gateway_id", "=", gateway_id),
            ("ts", ">=", since),
            ("ts", "<", until),
        ):
            if value is not None:
                sql += f" AND {column} {op} %s"
                params.append(value)
        async with self.db.transaction(tenant_id) as tx:
            rows = await tx.fetch(sql + " ORDER BY ts DESC, id DESC LIMIT %s", [*params, limit])
        return [_alarm(r) for r in rows]

    async def get(self, tenant_id: int, alarm_id: int) -> Alarm:
        """One alarm of the tenant."""
        async with self.db.transaction(tenant_id) as tx:
            row = await tx.fetchone(
                f"SELECT {_ALARM} FROM alarms WHERE tenant_id = %s AND id = %s",
                [tenant_id, alarm_id],
            )
        if row is None:
            raise NotFound("alarm not found")
        return _alarm(row)

    async def transitions(
        self, tenant_id: int, alarm_id: int, *, limit: int
    ) -> list[AlarmTransition]:
        """The alarm's transitions, newest first."""
        async with self.db.transaction(tenant_id) as tx:
            if not await tx.fetchone(
                "SELECT 1 FROM alarms WHERE tenant_id = %s AND id = %s", [tenant_id, alarm_id]
            ):
                raise NotFound("alarm not found")
            rows = await tx.fetch(
                f"SELECT {_EVENT} FROM alarm_events WHERE tenant_id = %s AND alarm_id = %s"
                " ORDER BY ts DESC, id DESC LIMIT %s",
                [tenant_id, alarm_id, limit],
            )
        return [_event(r) for r in rows]
