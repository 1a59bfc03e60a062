"""The repository: every tenant-scoped operation takes the tenant id from the caller's principal.

The SQL is written once for both backends. Each statement also filters on ``tenant_id``
explicitly, so isolation does not rest on PostgreSQL's row-level security alone (and SQLite has
none); RLS is the second wall.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cloud.auth import Role
from cloud.errors import Conflict, GatewayRevoked, NotFound
from cloud.storage.asset_tree import DEVICE_COLUMNS, DEVICE_FROM, device_from_row, node, subtree
from cloud.storage.base import Database, Row, Tx
from cloud.storage.records import (
    ApiKey,
    Device,
    Gateway,
    Series,
    StoredPrincipal,
    Tenant,
    UsageDay,
)
from cloud.storage.telemetry import TelemetryStore

DAY_US: Final = 86_400_000_000

_TENANT = (
    "id, name, created_at, ingest_quota_per_day, rate_limit, max_devices, max_series, max_assets"
)
_KEY = "id, name, role, prefix, created_at, last_used_at, revoked_at"
_GATEWAY = "id, name, token_prefix, created_at, last_seen_at, last_seq, revoked_at"


def _tenant(row: Row) -> Tenant:
    return Tenant(
        id=row[0],
        name=row[1],
        created_at=row[2],
        ingest_quota_per_day=row[3],
        rate_limit=row[4],
        max_devices=row[5],
        max_series=row[6],
        max_assets=row[7],
    )


def _key(row: Row) -> ApiKey:
    return ApiKey(
        id=row[0],
        name=row[1],
        role=Role(row[2]),
        prefix=row[3],
        created_at=row[4],
        last_used_at=row[5],
        revoked_at=row[6],
    )


def _gateway(row: Row, dropped: dict[str, int] | None = None) -> Gateway:
    return Gateway(
        dropped=dropped or {},
        id=row[0],
        name=row[1],
        token_prefix=row[2],
        created_at=row[3],
        last_seen_at=row[4],
        last_seq=row[5],
        revoked_at=row[6],
    )


async def _one(tx: Tx, sql: str, params: list[Any], what: str) -> Row:
    row = await tx.fetchone(sql, params)
    if row is None:
        raise NotFound(f"{what} not found")
    return row


async def _require(tx: Tx, table: str, tenant_id: int, row_id: int, what: str) -> None:
    """Raise `NotFound` unless `table` has the row `row_id` in this tenant (`table` is one of
    our constant table names, never user input)."""
    await _one(tx, f"SELECT 1 FROM {table} WHERE tenant_id = %s AND id = %s",
               [tenant_id, row_id], what)  # fmt: skip


async def _deletable(db: Database) -> str:
    """The condition on telemetry of a tenant's readings that can be deleted row by row: the
    first row-stored timestamp is a literal, so that the planner leaves the columnar days out
    (they refuse a DELETE). Readings in columnar days stay, unreachable once their series is
    gone, until retention drops their day."""
    return f"tenant_id = %s AND ts >= {int(await db.row_stored_from())}"


class Repository(TelemetryStore):
    """Tenants, keys, gateways, devices and usage, over one `Database` (alarms, commands,
    shadows and write records have their own stores in this package)."""

    # -------------------------------------------------------------------- tenants (platform)

    async def create_tenant(
        self, *, name: str, now_us: int, quota: int | None, rate_limit: int | None,
        max_devices: int | None = None, max_series: int | None = None,
        max_assets: int | None = None,
    ) -> Tenant:  # fmt: skip
        """A new tenant; `Conflict` if the name is taken."""
        async with self.db.transaction(None, platform=True) as tx:
            if await tx.fetchone("SELECT 1 FROM tenants WHERE name = %s", [name]):
                raise Conflict(f"a tenant named {name!r} exists")
            row = await tx.fetchone(
                "INSERT INTO tenants (name, created_at, ingest_quota_per_day, rate_limit,"
                " max_devices, max_series, max_assets) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_TENANT}",
                [name, now_us, quota, rate_limit, max_devices, max_series, max_assets],
            )
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
        return _tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant (platform admin only)."""
        async with self.db.transaction(None, platform=True) as tx:
            rows = await tx.fetch(f"SELECT {_TENANT} FROM tenants ORDER BY id")
        return [_tenant(r) for r in rows]

    async def get_tenant(self, tenant_id: int) -> Tenant:
        """One tenant, as seen from inside it."""
        async with self.db.transaction(tenant_id) as tx:
            row = await _one(
                tx, f"SELECT {_TENANT} FROM tenants WHERE id = %s", [tenant_id], "tenant"
            )
        return _tenant(row)

    async def update_tenant_limits(
        self, tenant_id: int, *, quota: int | None, rate_limit: int | None,
        max_devices: int | None = None, max_series: int | None = None,
        max_assets: int | None = None,
    ) -> Tenant:  # fmt: skip
        """Set the tenant's ingest quota, rate limit, and device, series and asset limits (None:
        the service default)."""
        async with self.db.transaction(tenant_id) as tx:
            row = await _one(
                tx,
                "UPDATE tenants SET ingest_quota_per_day = %s, rate_limit = %s, max_devices = %s,"
                f" max_series = %s, max_assets = %s WHERE id = %s RETURNING {_TENANT}",
                [quota, rate_limit, max_devices, max_series, max_assets, tenant_id],
                "tenant",
            )
        return _tenant(row)

    # ------------------------------------------------------------------------------ api keys

    async def create_api_key(
        self, tenant_id: int, *, name: str, role: Role, prefix: str, digest: str, now_us: int
    ) -> ApiKey:
        """Store a new key's digest and visible prefix."""
        async with self.db.transaction(tenant_id) as tx:
            await _one(tx, "SELECT 1 FROM tenants WHERE id = %s", [tenant_id], "tenant")
            row = await tx.fetchone(
                "INSERT INTO api_keys (tenant_id, name, role, prefix, key_hash, created_at)"
                f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_KEY}",
                [tenant_id, name, role.value, prefix, digest, now_us],
            )
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
        return _key(row)

    async def list_api_keys(self, tenant_id: int) -> list[ApiKey]:
        """The tenant's keys, revoked ones included."""
        async with self.db.transaction(tenant_id) as tx:
            rows = await tx.fetch(
                f"SELECT {_KEY} FROM api_keys WHERE tenant_id = %s ORDER BY id", [tenant_id]
            )
        return [_key(r) for r in rows]

    async def revoke_api_key(self, tenant_id: int, key_id: int, *, now_us: int) -> ApiKey:
        """Revoke a key at once; it authenticates nothing afterwards."""
        async with self.db.transaction(tenant_id) as tx:
            row = await _one(
                tx,
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s)"
                f" WHERE tenant_id = %s AND id = %s RETURNING {_KEY}",
                [now_us, tenant_id, key_id],
                "api key",
            )
        return _key(row)

    async def authenticate(self, digest: str, *, now_us: int) -> StoredPrincipal | None:
        """The principal holding the token with this digest, if it exists and is not revoked."""
        return await self.db.authenticate(digest, now_us=now_us)

    # ------------------------------------------------------------------------------ gateways

    async def create_gateway(
        self, tenant_id: int, *, name: str, prefix: str, digest: str, now_us: int
    ) -> Gateway:
        """Register a gateway with its interim bearer token's digest."""
        async with self.db.transaction(tenant_id) as tx:
            taken = await tx.fetchone(
                "SELECT 1 FROM gateways WHERE tenant_id = %s AND name = %s", [tenant_id, name]
            )
            if taken:
                raise Conflict(f"a gateway named {name!r} exists in this tenant")
            row = await tx.fetchone(
                "INSERT INTO gateways (tenant_id, name, token_prefix, token_hash, created_at)"
                f" VALUES (%s, %s, %s, %s, %s) RETURNING {_GATEWAY}",
                [tenant_id, name, prefix, digest, now_us],
            )
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
        return _gateway(row)

    async def list_gateways(self, tenant_id: int) -> list[Gateway]:
        """The tenant's gateways, with the readings each reported dropped, per lane."""
        async with self.db.transaction(tenant_id) as tx:
            rows = await tx.fetch(
                f"SELECT {_GATEWAY} FROM gateways WHERE tenant_id = %s ORDER BY id", [tenant_id]
            )
            drops = await tx.fetch(
                "SELECT gateway_id, lane, dropped FROM gateway_drops WHERE tenant_id = %s",
                [tenant_id],
            )
        by_gateway: dict[int, dict[str, int]] = {}
        for gateway_id, lane, dropped in drops:
            by_gateway.setdefault(gateway_id, {})[lane] = dropped
        return [_gateway(r, by_gateway.get(r[0])) for r in rows]

    async def get_gateway(self, tenant_id: int, gateway_id: int) -> Gateway:
        """One gateway of the tenant, with the readings it reported dropped, per lane."""
        async with self.db.transaction(tenant_id) as tx:
            row = await _one(
                tx,
                f"SELECT {_GATEWAY} FROM gateways WHERE tenant_id = %s AND id = %s",
                [tenant_id, gateway_id],
                "gateway",
            )
            drops = await tx.fetch(
                "SELECT lane, dropped FROM gateway_drops WHERE tenant_id = %s AND gateway_id = %s",
                [tenant_id, gateway_id],
            )
        return _gateway(row, dict(drops))

    async def update_gateway(
        self,
        tenant_id: int,
        gateway_id: int,
        *,
        name: str | None = None,
        token: tuple[str, str] | None = None,
        revoke_at: int | None = None,
    ) -> Gateway:
        """Rename, replace the token (prefix, digest) of, or revoke a gateway.

        Revocation is final: a revoked gateway gets no new token (`GatewayRevoked`); the device
        comes back only by enrolling again with a claim token, as a new gateway.
        """
        async with self.db.transaction(tenant_id) as tx:
            found = await _one(
                tx, "SELECT revoked_at FROM gateways WHERE tenant_id = %s AND id = %s",
                [tenant_id, gateway_id], "gateway",
            )  # fmt: skip
            if token is not None and found[0] is not None:
                raise GatewayRevoked(
                    f"gateway {gateway_id} was revoked, which is final; enroll the device again"
                    " with a new claim token (it becomes a new gateway)"
                )
            if name is not None and await tx.fetchone(
                "SELECT 1 FROM gateways WHERE tenant_id = %s AND name = %s AND id <> %s",
                [tenant_id, name, gateway_id],
            ):
                raise Conflict(f"a gateway named {name!r} exists in this tenant")
            if name is not None:
                await tx.execute(
                    "UPDATE gateways SET name = %s WHERE tenant_id = %s AND id = %s",
                    [name, tenant_id, gateway_id],
                )
            if token is not None:
                await tx.execute(
                    "UPDATE gateways SET token_prefix = %s, token_hash = %s"
                    " WHERE tenant_id = %s AND id = %s AND revoked_at IS NULL",
                    [token[0], token[1], tenant_id, gateway_id],
                )
            if revoke_at is not None:
                await tx.execute(
                    "UPDATE gateways SET revoked_at = %s, token_hash = NULL"
                    " WHERE tenant_id = %s AND id = %s",
                    [revoke_at, tenant_id, gateway_id],
                )
            row = await _one(
                tx, f"SELECT {_GATEWAY} FROM gateways WHERE id = %s", [gateway_id], "gateway"
            )
        return _gateway(row)

    async def delete_gateway(self, tenant_id: int, gateway_id: int) -> None:
        """Delete a gateway with its devices, series, telemetry, alarms, commands, shadow,
        write records and batch log."""
        async with self.db.transaction(tenant_id) as tx:
            await _require(tx, "gateways", tenant_id, gateway_id, "gateway")
            await tx.execute(
                f"DELETE FROM telemetry WHERE {await _deletable(self.db)} AND series_id IN"
                " (SELECT id FROM series WHERE tenant_id = %s AND gateway_id = %s)",
                [tenant_id, tenant_id, gateway_id],
            )
            for table in ("alarms", "alarm_events", "commands", "shadows", "write_records",
                          "ingest_batch", "gateway_drops", "gateway_drop_totals", "series",
                          "device_paths", "devices", "gateway_labels", "gateway_configs",
                          "config_events", "rollout_gateways", "gateway_status",
                          "gateway_health_events"):  # fmt: skip
                await tx.execute(
                    f"DELETE FROM {table} WHERE tenant_id = %s AND gateway_id = %s",
                    [tenant_id, gateway_id],
                )
            if self.db.info.backend == "postgresql":  # written through a worker (on Citus)
                await tx.execute(
                    "DELETE FROM ingest_claim WHERE tenant_id = %s AND gateway_id = %s",
                    [tenant_id, gateway_id],
                )
            await tx.execute(
                "DELETE FROM gateways WHERE tenant_id = %s AND id = %s", [tenant_id, gateway_id]
            )

    # ------------------------------------------------------------------------------- devices

    async def list_devices(
        self, tenant_id: int, *, gateway_id: int | None = None, asset_id: int | None = None
    ) -> list[Device]:
        """The tenant's devices, optionally of one gateway, or under one asset (its subtree)."""
        sql = f"SELECT {DEVICE_COLUMNS} FROM {DEVICE_FROM} WHERE d.tenant_id = %s"
        params: list[Any] = [tenant_id]
        if gateway_id is not None:
            sql += " AND d.gateway_id = %s"
            params.append(gateway_id)
        async with self.db.transaction(tenant_id) as tx:
            if asset_id is not None:
                sql += " AND a.id_path LIKE %s"
                params.append(subtree((await node(tx, tenant_id, asset_id)).id_path))
            rows = await tx.fetch(sql + " ORDER BY d.id", params)
        return [device_from_row(r) for r in rows]

    async def get_device(self, tenant_id: int, device_id: int) -> Device:
        """One device of the tenant."""
        async with self.db.transaction(tenant_id) as tx:
            row = await _one(
                tx,
                f"SELECT {DEVICE_COLUMNS} FROM {DEVICE_FROM} WHERE d.tenant_id = %s AND d.id = %s",
                [tenant_id, device_id],
                "device",
            )
        return device_from_row(row)

    async def update_device(
        self,
        tenant_id: int,
        device_id: int,
        *,
        display_name: str | None,
        metadata: dict[str, Any] | None,
    ) -> Device:
        """Rename (the display name; the gateway keeps its own name) or re-tag a device."""
        async with self.db.transaction(tenant_id) as tx:
            await _require(tx, "devices", tenant_id, device_id, "device")
            if display_name is not None:
                await tx.execute(
                    "UPDATE devices SET display_name = %s WHERE tenant_id = %s AND id = %s",
                    [display_name, tenant_id, device_id],
                )
            if metadata is not None:
                await tx.execute(
                    "UPDATE devices SET metadata = %s WHERE tenant_id = %s AND id = %s",
                    [json.dumps(metadata), tenant_id, device_id],
                )
            row = await _one(
                tx,
                f"SELECT {DEVICE_COLUMNS} FROM {DEVICE_FROM} WHERE d.tenant_id = %s AND d.id = %s",
                [tenant_id, device_id],
                "device",
            )
        return device_from_row(row)

    async def delete_device(self, tenant_id: int, device_id: int) -> None:
        """Delete a device with its series and telemetry (it reappears if the gateway sends)."""
        async with self.db.transaction(tenant_id) as tx:
            await _require(tx, "devices", tenant_id, device_id, "device")
            await tx.execute(
                f"DELETE FROM telemetry WHERE {await _deletable(self.db)} AND series_id IN"
                " (SELECT id FROM series WHERE tenant_id = %s AND device_id = %s)",
                [tenant_id, tenant_id, device_id],
            )
            await tx.execute(
                "DELETE FROM series WHERE tenant_id = %s AND device_id = %s",
                [tenant_id, device_id],
            )
            await tx.execute(
                "DELETE FROM devices WHERE tenant_id = %s AND id = %s", [tenant_id, device_id]
            )

    async def list_series(
        self, tenant_id: int, *, device_id: int | None = None, gateway_id: int | None = None,
        asset_id: int | None = None,
    ) -> list[Series]:  # fmt: skip
        """The tenant's series, optionally of one device or gateway, or under one asset (its
        subtree)."""
        sql = (
            "SELECT s.id, s.gateway_id, s.device_id, d.name, s.tag, s.unit, s.simulated, a.path"
            " FROM series s"
            " JOIN devices d ON d.id = s.device_id AND d.tenant_id = s.tenant_id"
            " LEFT JOIN assets a ON a.id = d.asset_id AND a.tenant_id = d.tenant_id"
            " WHERE s.tenant_id = %s"
        )
        params: list[Any] = [tenant_id]
        if device_id is not None:
            sql += " AND s.device_id = %s"
            params.append(device_id)
        if gateway_id is not None:
            sql += " AND s.gateway_id = %s"
            params.append(gateway_id)
        async with self.db.transaction(tenant_id) as tx:
            if asset_id is not None:
                sql += " AND a.id_path LIKE %s"
                params.append(subtree((await node(tx, tenant_id, asset_id)).id_path))
            rows = await tx.fetch(sql + " ORDER BY s.id", params)
        return [
            Series(
                id=r[0],
                gateway_id=r[1],
                device_id=r[2],
                device=r[3],
                tag=r[4],
                unit=r[5],
                simulated=bool(r[6]),
                asset_path=r[7],
            )
            for r in rows
        ]

    # --------------------------------------------------------------------------------- usage

    async def record_api_call(self, tenant_id: int, *, now_us: int) -> None:
        """Count one API call in today's usage."""
        async with self.db.transaction(tenant_id) as tx:
            await tx.execute(
                "INSERT INTO usage_daily (tenant_id, day, api_calls) VALUES (%s, %s, 1)"
                " ON CONFLICT (tenant_id, day)"
                " DO UPDATE SET api_calls = usage_daily.api_calls + 1",
                [tenant_id, now_us // DAY_US],
            )

    async def holdings(self, tenant_id: int) -> tuple[int, int]:
        """How many devices and series the tenant holds."""
        async with self.db.transaction(tenant_id) as tx:
            row = await tx.fetchone(
                "SELECT (SELECT count(*) FROM devices WHERE tenant_id = %s),"
                " (SELECT count(*) FROM series WHERE tenant_id = %s)",
                [tenant_id, tenant_id],
            )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def usage(self, tenant_id: int, *, first_day: int, last_day: int) -> list[UsageDay]:
        """Metered usage per UTC day (days since the epoch, inclusive)."""
        async with self.db.transaction(tenant_id) as tx:
            rows = await tx.fetch(
                "SELECT day, readings, bytes, batches, api_calls, dropped FROM usage_daily"
                " WHERE tenant_id = %s AND day >= %s AND day <= %s ORDER BY day",
                [tenant_id, first_day, last_day],
            )
        return [_usage(r) for r in rows]


def _usage(row: Row) -> UsageDay:
    day = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=row[0])).date().isoformat()
    return UsageDay(
        day=day, readings=row[1], bytes=row[2], batches=row[3], api_calls=row[4], dropped=row[5]
    )
