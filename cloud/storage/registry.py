"""Devices and series created on first sight, shared by both backends."""

from __future__ import annotations

import time

from cloud.storage.base import Tx


async def find_or_create_series(
    tx: Tx,
    tenant_id: int,
    gateway_id: int,
    *,
    device: str,
    tag: str,
    unit: str | None,
    simulated: bool = False,
) -> int:
    """The id of the (device, tag) series of a gateway, creating the device and series if new.

    ON CONFLICT DO NOTHING plus a re-read makes this safe when two replicas create the same
    series at once.
    """
    now = time.time_ns() // 1_000
    row = await tx.fetchone(
        "SELECT id FROM devices WHERE tenant_id = %s AND gateway_id = %s AND name = %s",
        [tenant_id, gateway_id, device],
    )
    if row is None:
        await tx.execute(
            "INSERT INTO devices (tenant_id, gateway_id, name, created_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (gateway_id, name) DO NOTHING",
            [tenant_id, gateway_id, device, now],
        )
        row = await tx.fetchone(
            "SELECT id FROM devices WHERE tenant_id = %s AND gateway_id = %s AND name = %s",
            [tenant_id, gateway_id, device],
        )
    assert row is not None  # noqa: S101 - inserted or found just above
    device_id = row[0]
    await tx.execute(
        "INSERT INTO series (tenant_id, gateway_id, device_id, tag, unit, simulated, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device_id, tag) DO NOTHING",
        [tenant_id, gateway_id, device_id, tag, unit, simulated, now],
    )
    row = await tx.fetchone(
        "SELECT id FROM series WHERE tenant_id = %s AND device_id = %s AND tag = %s",
        [tenant_id, device_id, tag],
    )
    assert row is not None  # noqa: S101 - inserted or found just above
    return int(row[0])


async def find_series(
    tx: Tx, tenant_id: int, gateway_id: int, *, device: str, tag: str
) -> tuple[int, bool] | None:
    """The id of the (device, tag) series of a gateway and whether it is simulated, if it
    exists."""
    row = await tx.fetchone(
        "SELECT s.id, s.simulated FROM series s"
        " JOIN devices d ON d.id = s.device_id AND d.tenant_id = %s"
        " WHERE s.tenant_id = %s AND d.gateway_id = %s AND d.name = %s AND s.tag = %s",
        [tenant_id, tenant_id, gateway_id, device, tag],
    )
    return None if row is None else (int(row[0]), bool(row[1]))


async def mark_simulated(tx: Tx, tenant_id: int, changed: dict[int, bool]) -> None:
    """Store the simulated flag of the series whose flag changed (rare: a device that became,
    or stopped being, simulated), one statement per direction."""
    for flag in (True, False):
        ids = [sid for sid, simulated in changed.items() if simulated is flag]
        if ids:
            marks = ", ".join(["%s"] * len(ids))
            await tx.execute(
                f"UPDATE series SET simulated = %s WHERE tenant_id = %s AND id IN ({marks})",
                [flag, tenant_id, *ids],
            )
