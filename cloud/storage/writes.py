"""Setpoint writes the gateways report: every write, from the cloud, the shadow or a local user,
with who asked, from where, the old value, the new one, the value read back and the outcome."""

from __future__ import annotations

import json
from typing import Any, Final

from cloud.contract import WriteRecord
from cloud.errors import NotFound
from cloud.storage.base import Database, Row, Tx
from cloud.storage.records import WriteLog

_WRITE: Final = (
    "id, gateway_id, audit_id, ts, device, tag, value, old, read_back, outcome, reason, who,"
    " source, command_id, received_at"
)
_NAMES: Final = _WRITE.replace(" ", "").split(",")
_JSON_COLUMNS: Final = ("value", "old", "read_back")


def _write(row: Row) -> WriteLog:
    data = dict(zip(_NAMES, row, strict=True))
    for column in _JSON_COLUMNS:
        data[column] = None if data[column] is None else json.loads(data[column])
    return WriteLog(**data)


async def store_write(
    tx: Tx, tenant_id: int, gateway_id: int, record: WriteRecord, *, now_us: int
) -> None:
    """Keep one write record (once: a replay is ignored)."""
    values = [None if v is None else json.dumps(v)
              for v in (record.value, record.old, record.read_back)]  # fmt: skip
    await tx.execute(
        "INSERT INTO write_records (tenant_id, gateway_id, audit_id, ts, device, tag, value, old,"
        " read_back, outcome, reason, who, source, command_id, received_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (gateway_id, audit_id, ts) DO NOTHING",
        [tenant_id, gateway_id, record.id, record.ts, record.device, record.tag, *values,
         record.outcome, record.reason, record.who, record.source, record.command_id, now_us],
    )  # fmt: skip


class WriteStore:
    """The write records of the tenant's gateways."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def find(
        self, tenant_id: int, gateway_id: int, *, device: str | None, limit: int
    ) -> list[WriteLog]:
        """The gateway's writes, newest first."""
        sql = f"SELECT {_WRITE} FROM write_records WHERE tenant_id = %s AND gateway_id = %s"
        params: list[Any] = [tenant_id, gateway_id]
        if device is not None:
            sql += " AND device = %s"
            params.append(device)
        async with self.db.transaction(tenant_id) as tx:
            if not await tx.fetchone(
                "SELECT 1 FROM gateways WHERE tenant_id = %s AND id = %s", [tenant_id, gateway_id]
            ):
                raise NotFound("gateway not found")
            rows = await tx.fetch(sql + " ORDER BY ts DESC, id DESC LIMIT %s", [*params, limit])
        return [_write(r) for r in rows]
