"""The PostgreSQL backend (psycopg 3, psycopg-pool): production, any number of replicas.

Each transaction sets ``app.tenant_id`` with ``set_config(..., true)`` (transaction-local, so a
pooled connection never carries one tenant's context into the next request) and the row-level
security policies of `pg_schema` do the rest for metadata. Telemetry is filtered explicitly.

Readings are written with binary COPY straight into the telemetry table: the buffer is built
with numpy in one pass (no per-row Python), and batch idempotency already stops replays. When
the COPY hits the (series_id, ts) unique key, a savepoint rolls it back and the rows go in with
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` (the fallback for a replay of the
same readings under a new seq, or overlapping batches).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import struct
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import Any, Final

import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cloud.errors import Conflict, InvalidRequest, StorageError
from cloud.settings import CloudSettings, DbClasses
from cloud.storage import citus, columnar, pg_migrate, timescale
from cloud.storage.base import (
    NewSeriesCheck,
    Row,
    SeriesKey,
    TelemetryRows,
    Tx,
    ingest_busy,
    request_class,
)
from cloud.storage.pg_layout import current, server_facts
from cloud.storage.pg_schema import DAY_US
from cloud.storage.records import BackendInfo, MaintenanceJob, RetentionResult, StoredPrincipal
from cloud.storage.registry import mark_simulated

log = logging.getLogger("tagway.cloud.storage")


async def _lookup_series(
    tx: Tx, tenant_id: int, gateway_id: int, keys: Sequence[SeriesKey]
) -> list[Row]:
    """(1-based position in `keys`, series id, simulated) of the keys' known series."""
    return await tx.fetch(
        "SELECT k.ord, s.id, s.simulated FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY"
        " AS k(device, tag, ord)"
        " JOIN devices d ON d.tenant_id = %s AND d.gateway_id = %s AND d.name = k.device"
        " JOIN series s ON s.tenant_id = %s AND s.device_id = d.id AND s.tag = k.tag",
        [[k[0] for k in keys], [k[1] for k in keys], tenant_id, gateway_id, tenant_id],
    )


_holding_slot: ContextVar[bool] = ContextVar("tagway_ingest_slot", default=False)
_ingest_busy = ingest_busy


apply_migrations = pg_migrate.apply_migrations  # callers written before pg_migrate import it here

_COPY_SQL: Final = (
    "COPY telemetry (tenant_id, series_id, ts, value_num, value_text, quality)"
    " FROM STDIN (FORMAT BINARY)"
)
_COPY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
# One binary COPY tuple of a numeric reading: field count, then (length, value) per column;
# value_text is NULL (length -1, no bytes).
_COPY_ROW: Final = np.dtype(
    [
        ("fields", ">i2"),
        ("l_tenant", ">i4"),
        ("tenant", ">i8"),
        ("l_series", ">i4"),
        ("series", ">i8"),
        ("l_ts", ">i4"),
        ("ts", ">i8"),
        ("l_value", ">i4"),
        ("value", ">f8"),
        ("l_text", ">i4"),
        ("l_quality", ">i4"),
        ("quality", ">i2"),
    ]
)
_RETENTION_SCHEMA: Final = 3  # the migration that added tagway_drop_partitions
RELAY_CHANNEL: Final = "tagway_live"
# NOTIFY payloads must stay under 8000 bytes; a larger message goes through stream_log.
_INLINE_RELAY: Final = 7_000
_TIMESCALE_SCHEMA: Final = 6  # the migration that made TimescaleDB's retention and aggregate
_INSERT_SKIPPING: Final = (
    "INSERT INTO telemetry (tenant_id, series_id, ts, value_num, value_text, quality)"
    " SELECT %s, u.s, u.t, u.v, u.x, u.q"
    " FROM unnest(%s::bigint[], %s::bigint[], %s::float8[], %s::text[], %s::int2[])"
    " AS u(s, t, v, x, q) ON CONFLICT (series_id, ts) DO NOTHING RETURNING 1"
)  # the rows RETURNING gives back are the rows added (Citus's rowcount can claim more)
# Distributed: the parent has no unique key (each row-stored partition has its own, see
# cloud.storage.columnar), so the conflict has no target; it is the same one key.
_INSERT_SKIPPING_ANY: Final = _INSERT_SKIPPING.replace("ON CONFLICT (series_id, ts)", "ON CONFLICT")


_INSERT_EXACT: Final = (
    "INSERT INTO telemetry (tenant_id, series_id, ts, value_num, quality, value_int)"
    " SELECT %s, u.s, u.t, u.v, u.q, u.i::numeric"
    " FROM unnest(%s::bigint[], %s::bigint[], %s::float8[], %s::int2[], %s::text[])"
    " AS u(s, t, v, q, i) ON CONFLICT (series_id, ts) DO NOTHING RETURNING 1"
)  # integers past int64 travel as text: psycopg has no array type for them
_INSERT_EXACT_ANY: Final = _INSERT_EXACT.replace("ON CONFLICT (series_id, ts)", "ON CONFLICT")


async def _insert_skipping(tx: Tx, params: list[Any], *, distributed: bool = False) -> int:
    return len(await tx.fetch(_INSERT_SKIPPING_ANY if distributed else _INSERT_SKIPPING, params))


async def _insert_exact(
    tx: Tx, tenant_id: int, rows: list[tuple[int, int, float, int, int]], *, distributed: bool
) -> int:
    """Readings with exact integers (rare: integers past 2**53), by a skipping INSERT."""
    sids, tss, nums, ints, qualities = (list(c) for c in zip(*rows, strict=True))
    params = [tenant_id, sids, tss, nums, qualities, [str(i) for i in ints]]
    return len(await tx.fetch(_INSERT_EXACT_ANY if distributed else _INSERT_EXACT, params))


def copy_buffer(tenant_id: int, rows: TelemetryRows) -> bytes:
    """The binary COPY stream (header and tuples, psycopg adds the trailer) for numeric rows."""
    out = np.empty(len(rows.ts), dtype=_COPY_ROW)
    out["fields"] = 6
    out["l_tenant"] = out["l_series"] = out["l_ts"] = out["l_value"] = 8
    out["tenant"] = tenant_id
    out["series"] = rows.series_id
    out["ts"] = rows.ts
    out["value"] = rows.value
    out["l_text"] = -1
    out["l_quality"] = 2
    out["quality"] = rows.quality
    return _COPY_HEADER + out.tobytes()


_LATEST_LATERAL: Final = (
    "SELECT s.id, t.ts, t.value_num, t.value_text, t.quality, t.value_int"
    " FROM unnest(%s::bigint[]) AS s(id) CROSS JOIN LATERAL (SELECT ts, value_num, value_text,"
    " quality, value_int FROM telemetry WHERE tenant_id = %s AND series_id = s.id AND ts >= %s"
    " ORDER BY ts DESC LIMIT 1) t"
)
"""The newest reading of each series at or after a time, one index probe per series."""


class PgTx:
    """A transaction on one pooled connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """All rows of a query."""
        cur = await self.conn.execute(sql, params)
        return await cur.fetchall() if cur.description else []

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row, or None."""
        cur = await self.conn.execute(sql, params)
        return await cur.fetchone() if cur.description else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; rows changed."""
        cur = await self.conn.execute(sql, params)
        return cur.rowcount


class PostgresDatabase:
    """The production backend. Open with `await PostgresDatabase.open(settings)`."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        info: BackendInfo,
        dsn: str = "",
        settings: CloudSettings | None = None,
    ) -> None:
        self.pool = pool
        self.info = info
        settings = settings or CloudSettings()
        self.classes: DbClasses = settings.db_classes
        # Ingest never holds the connections reserved for the other classes.
        self._ingest_slots = asyncio.Semaphore(
            max(1, settings.pool_max_size - settings.pool_reserved_for_reads)
        )
        self.replica = secrets.token_hex(6)  # tells this replica's own notifications apart
        self._dsn = dsn
        self._known_days: set[int] = set()
        self._aggregate_sql = timescale.AGGREGATE
        self.rows_pool: AsyncConnectionPool[Any] | None = None
        """Citus: the pool on the worker the readings are written through (`write_batch_rows`)."""

    @property
    def splits_ingest(self) -> bool:
        """True when the readings go through a worker, not the metadata's connection."""
        return self.rows_pool is not None

    @classmethod
    async def open(cls, settings: CloudSettings) -> PostgresDatabase:
        """Migrate (when configured), open the pool, detect TimescaleDB, create partitions."""
        if settings.migrate_on_start and settings.migrate_database_url:
            await apply_migrations(settings.migrate_database_url, settings)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url,
            min_size=settings.pool_min_size,
            max_size=max(settings.pool_max_size, settings.pool_min_size),
            kwargs={"autocommit": True},
            open=False,
            name="tagway-cloud",
        )
        try:
            await pool.open(wait=True, timeout=10)
            info = await _detect(pool)
        except (psycopg.Error, PoolTimeout) as exc:
            await pool.close()
            raise StorageError(f"cannot use PostgreSQL: {exc}") from exc
        db = cls(pool, info, settings.database_url, settings)
        if worker := settings.telemetry_database_url:
            try:
                db.rows_pool = await _open_rows_pool(settings, worker, info)
            except StorageError:
                await pool.close()
                raise
            db.info = info.model_copy(update={"readings_through_worker": True})
        if info.timescaledb:
            await db._choose_aggregate_sql()
        today = time.time_ns() // 1000 // DAY_US
        await db.ensure_partitions(range(today - 1, today + settings.partitions_ahead_days + 1))
        return db

    def transaction(
        self, tenant_id: int | None, *, platform: bool = False
    ) -> AbstractAsyncContextManager[Tx]:
        """A transaction with `app.tenant_id` (and `app.platform`) set for its duration only."""
        return self._transaction(self.pool, tenant_id, platform=platform)

    @asynccontextmanager
    async def _transaction(
        self, pool: AsyncConnectionPool[Any], tenant_id: int | None, *, platform: bool = False
    ) -> AsyncIterator[Tx]:
        # BEGIN and the tenant context travel in one round trip (simple query protocol). The
        # tenant id is an int and the flag a constant, so the literals cannot inject anything.
        tenant = "" if tenant_id is None else str(int(tenant_id))
        kind = request_class.get()
        limits = self.classes.of(kind)
        begin = (
            f"BEGIN; SELECT set_config('app.tenant_id', '{tenant}', true),"
            f" set_config('app.platform', '{'on' if platform else 'off'}', true),"
            f" set_config('statement_timeout', '{int(limits.statement_timeout_ms)}', true)"
        )
        try:
            async with (
                self._slot(kind, limits.pool_timeout_s),
                pool.connection(timeout=limits.pool_timeout_s) as conn,
            ):
                await conn.execute(begin.encode())
                try:
                    yield PgTx(conn)
                except BaseException:
                    with contextlib.suppress(psycopg.Error):  # a broken link: the pool drops it
                        await conn.rollback()
                    raise
                await conn.commit()
        except PoolTimeout as exc:
            if kind == "ingest":
                raise _ingest_busy(limits.pool_timeout_s) from exc
            raise StorageError(
                f"no database connection free within {limits.pool_timeout_s:g} s ({kind} requests)"
            ) from exc
        except pg_errors.QueryCanceled as exc:
            raise StorageError(
                f"a statement ran past the {limits.statement_timeout_ms} ms statement timeout"
                f" of {kind} requests"
            ) from exc
        except pg_errors.IntegrityError as exc:  # a race past our own checks: say it our way
            raise Conflict("the request conflicts with data stored meanwhile; retry") from exc
        except psycopg.DataError as exc:  # a value no column can hold (our checks come first)
            raise InvalidRequest(
                f"a value cannot be stored: {exc.diag.message_primary or exc}", path=[]
            ) from exc
        except psycopg.Error as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    @asynccontextmanager
    async def _slot(self, kind: str, timeout_s: float) -> AsyncIterator[None]:
        """For ingest: one of the connections ingest may hold (once per task: a transaction
        inside another of the same request does not wait for a second slot)."""
        if kind != "ingest" or _holding_slot.get():
            yield
            return
        try:
            await asyncio.wait_for(self._ingest_slots.acquire(), timeout_s)
        except TimeoutError as exc:
            raise _ingest_busy(timeout_s) from exc
        token = _holding_slot.set(True)
        try:
            yield
        finally:
            _holding_slot.reset(token)
            self._ingest_slots.release()

    async def authenticate(self, digest: str, *, now_us: int) -> StoredPrincipal | None:
        """Look the token up through the SECURITY DEFINER function (no tenant context yet)."""
        async with self.transaction(None) as tx:
            row = await tx.fetchone("SELECT * FROM tagway_authenticate(%s, %s)", [digest, now_us])
        if row is None:
            return None
        return StoredPrincipal(kind=row[0], tenant_id=row[1], subject_id=row[2], role=row[3])

    async def resolve_series(
        self,
        tx: Tx,
        tenant_id: int,
        gateway_id: int,
        keys: Sequence[SeriesKey],
        *,
        before_create: NewSeriesCheck | None = None,
    ) -> list[int]:
        """All known series in one query; the new ones created in two more statements (devices,
        then series) and read back in one, however many there are (first sight only)."""
        rows = await _lookup_series(tx, tenant_id, gateway_id, keys)
        ids: dict[int, int] = {int(ord_) - 1: int(sid) for ord_, sid, _ in rows}
        changed: dict[int, bool] = {}
        for ord_, sid, stored in rows:
            if bool(stored) != keys[int(ord_) - 1][3]:
                changed[int(sid)] = keys[int(ord_) - 1][3]
        await mark_simulated(tx, tenant_id, changed)
        missing = set(range(len(keys))) - set(ids)
        if not missing:
            return [ids[i] for i in range(len(keys))]
        if before_create is not None:
            await before_create(len(missing))
        # Sorted, so two transactions creating the same new series take locks in one order; ON
        # CONFLICT DO NOTHING and the re-read make it safe when replicas create them at once.
        new = sorted((keys[i] for i in missing), key=lambda k: k[:2])
        now = time.time_ns() // 1_000
        await tx.execute(
            "INSERT INTO devices (tenant_id, gateway_id, name, created_at)"
            " SELECT %s, %s, k.name, %s FROM unnest(%s::text[]) AS k(name) ORDER BY k.name"
            " ON CONFLICT (gateway_id, name) DO NOTHING",
            [tenant_id, gateway_id, now, sorted({k[0] for k in new})],
        )
        await tx.execute(
            "INSERT INTO series (tenant_id, gateway_id, device_id, tag, unit, simulated,"
            " created_at) SELECT %s, %s, d.id, k.tag, k.unit, k.simulated, %s"
            " FROM unnest(%s::text[], %s::text[], %s::text[], %s::bool[])"
            " AS k(device, tag, unit, simulated)"
            " JOIN devices d ON d.tenant_id = %s AND d.gateway_id = %s AND d.name = k.device"
            " ORDER BY k.device, k.tag ON CONFLICT (device_id, tag) DO NOTHING",
            [tenant_id, gateway_id, now, [k[0] for k in new], [k[1] for k in new],
             [k[2] for k in new], [k[3] for k in new], tenant_id, gateway_id],
        )  # fmt: skip
        wanted = sorted(missing)
        for ord_, sid, _ in await _lookup_series(tx, tenant_id, gateway_id,
                                                 [keys[i] for i in wanted]):  # fmt: skip
            ids[wanted[int(ord_) - 1]] = int(sid)
        if len(ids) != len(keys):
            raise StorageError("postgresql: series created in this batch could not be read back")
        return [ids[i] for i in range(len(keys))]

    async def _choose_aggregate_sql(self) -> None:
        async with self.transaction(None) as tx:
            row = await tx.fetchone("SELECT to_regclass(%s)", [timescale.RANGES_TABLE])
        if row is None or row[0] is None:  # a TimescaleDB older than 2.2x
            self._aggregate_sql = timescale.AGGREGATE_WITHOUT_RANGES

    async def ensure_partitions(self, days: Sequence[int]) -> None:
        """Create missing daily partitions in their own short transaction (not the batch's)."""
        missing = [d for d in days if d not in self._known_days]
        if not missing or self.info.partitioning != "native":
            return
        async with self.transaction(None) as tx:
            await tx.execute("SELECT tagway_ensure_partitions(%s::bigint[])", [missing])
        self._known_days.update(missing)  # a cache of work done, never a source of truth

    def _require_schema(self, version: int, what: str) -> None:
        if self.info.schema_version < version:
            raise StorageError(
                f"the schema is at version {self.info.schema_version}; {what} needs"
                f" {version}: run tagway cloud migrate as the schema owner"
            )

    async def drop_telemetry(
        self, *, keep_days: int, now_us: int, dry_run: bool = False
    ) -> RetentionResult:
        """Drop whole daily partitions (TimescaleDB: chunks, and the same days of the aggregate)
        through `tagway_drop_partitions` (owner's rights)."""
        cutoff = now_us - keep_days * DAY_US
        hypertable = self.info.timescaledb
        self._require_schema(_TIMESCALE_SCHEMA if hypertable else _RETENTION_SCHEMA, "retention")
        async with self.transaction(None) as tx:
            rows = await tx.fetch(
                "SELECT partition, day FROM tagway_drop_partitions(%s, %s)", [keep_days, dry_run]
            )
        days = [int(r[1]) for r in rows]
        if not dry_run:
            self._known_days.difference_update(days)
        return RetentionResult(
            method="chunks" if hypertable else "partitions",
            cutoff=cutoff,
            dry_run=dry_run,
            partitions=[str(r[0]) for r in rows],
            days=days,
        )

    async def row_stored_from(self) -> int:
        """Citus: the end of the newest columnar day; else the smallest bigint."""
        if not self.info.distributed:
            return columnar.MIN_TS
        async with self.transaction(None) as tx:
            row = await tx.fetchone(columnar.ROW_STORED_FROM)
        return columnar.MIN_TS if row is None or row[0] is None else int(row[0])

    async def compress_telemetry(self, *, after_days: int) -> list[str]:
        """Citus: each old row-stored day rewritten as columnar in a transaction of its own
        (`tagway_compress_day`, owner's rights); the partitions converted."""
        if not self.info.distributed or after_days <= 0:
            return []
        self._require_schema(columnar.VERSION, "columnar compression")
        async with self.transaction(None) as tx:
            rows = await tx.fetch("SELECT tagway_columnar_candidates(%s)", [after_days])
        done: list[str] = []
        for (day,) in rows:
            async with self.transaction(None) as tx:
                await tx.fetchone(columnar.CONVERSION_SETTINGS)
                row = await tx.fetchone("SELECT tagway_compress_day(%s)", [int(day)])
            if row is not None and row[0] is not None:
                done.append(str(row[0]))
        return done

    async def set_retention_policy(self, *, keep_days: int) -> int | None:
        """TimescaleDB: its retention policies (telemetry and the aggregate) keep `keep_days`."""
        if not self.info.timescaledb:
            return None
        self._require_schema(_TIMESCALE_SCHEMA, "the retention policy")
        async with self.transaction(None) as tx:
            row = await tx.fetchone("SELECT tagway_set_retention(%s)", [keep_days])
        return None if row is None or row[0] is None else int(row[0])

    async def aggregate_rows(
        self, tx: Tx, tenant_id: int, series_id: int, *, start: int, end: int, bucket_us: int
    ) -> list[Row] | None:
        """TimescaleDB: through `telemetry_1m` for buckets of whole minutes; else None."""
        if not self.info.timescaledb or self.info.schema_version < _TIMESCALE_SCHEMA:
            return None
        params = timescale.aggregate_params(
            tenant_id, series_id, start=start, end=end, bucket_us=bucket_us
        )
        if params is None:
            return None
        assert isinstance(tx, PgTx)  # noqa: S101 - the backend only ever hands out PgTx
        cur = await tx.conn.execute(self._aggregate_sql, params)
        return await cur.fetchall()

    async def maintenance_jobs(self) -> list[MaintenanceJob]:
        """TimescaleDB's background jobs, each with whether its work is done."""
        if not self.info.timescaledb or self.info.schema_version < _TIMESCALE_SCHEMA:
            return []
        async with self.transaction(None) as tx:
            return timescale.job_health(await tx.fetch(timescale.JOBS))

    async def write_telemetry(self, tx: Tx, tenant_id: int, rows: TelemetryRows) -> int:
        """Binary COPY; on a unique violation, the skipping INSERT instead."""
        try:
            return await self._write_telemetry(tx, tenant_id, rows)
        except psycopg.Error as exc:
            if not citus.is_missing_partition(exc):
                raise
            # No partition for a day this replica thought existed: another replica's retention
            # pass dropped it. Forget what we knew; the gateway's retry creates it again.
            self._known_days.clear()
            raise StorageError(f"postgresql: {exc.diag.message_primary}") from exc

    async def write_batch_rows(
        self, tenant_id: int, gateway_id: int, seq: int, rows: TelemetryRows
    ) -> int:
        """Where `splits_ingest`: the readings of batch (gateway, seq) written once, in one
        transaction with the batch's row in ``ingest_claim`` (distributed, so Citus commits
        both on every node or on none), through the worker. The rows added; for a batch
        claimed already (an attempt that stopped before the coordinator recorded it), the rows
        that attempt added. Batches with late readings go through the coordinator: the per-day
        lock that keeps them once (`cloud.storage.columnar`) is the coordinator's."""
        late = columnar.split_late(rows, time.time_ns() // 1000) is not None
        pool = self.pool if late or self.rows_pool is None else self.rows_pool
        async with self._transaction(pool, tenant_id) as tx:
            if await tx.fetchone(citus.CLAIM, [tenant_id, gateway_id, seq]) is None:
                row = await tx.fetchone(citus.CLAIMED, [tenant_id, gateway_id, seq])
                return int(row[0]) if row and row[0] is not None else 0
            stored = await self.write_telemetry(tx, tenant_id, rows)
            await tx.execute(citus.CLAIM_STORED, [stored, tenant_id, gateway_id, seq])
        return stored

    async def _write_telemetry(self, tx: Tx, tenant_id: int, rows: TelemetryRows) -> int:
        assert isinstance(tx, PgTx)  # noqa: S101 - the backend only ever hands out PgTx
        conn = tx.conn
        distributed = self.info.distributed
        inserted = 0
        split = columnar.split_late(rows, time.time_ns() // 1000) if distributed else None
        if split is not None:  # days that may be columnar, without a unique index
            late, rows = split

            async def copy_late(selected: TelemetryRows) -> None:
                async with conn.cursor() as cur, cur.copy(_COPY_SQL) as out:
                    await out.write(copy_buffer(tenant_id, selected))

            inserted += await columnar.write_late(conn, tenant_id, late, copy_late)
        if rows.exact_rows:
            inserted += await _insert_exact(tx, tenant_id, rows.exact_rows, distributed=distributed)
        if len(rows.ts):
            try:
                async with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY_SQL) as copy:
                    await copy.write(copy_buffer(tenant_id, rows))
                inserted += len(rows.ts)
            except psycopg.Error as exc:
                if not citus.is_duplicate(exc):
                    raise
                inserted += await _insert_skipping(
                    tx,
                    [
                        tenant_id,
                        rows.series_id.tolist(),
                        rows.ts.tolist(),
                        rows.value.tolist(),
                        [None] * len(rows.ts),
                        rows.quality.tolist(),
                    ],
                    distributed=distributed,
                )
        if rows.text_rows:
            sids, tss, texts, qualities = (list(c) for c in zip(*rows.text_rows, strict=True))
            inserted += await _insert_skipping(
                tx, [tenant_id, sids, tss, [None] * len(sids), texts, qualities],
                distributed=distributed,
            )  # fmt: skip
        return inserted

    async def latest_rows(self, tx: Tx, tenant_id: int, device_id: int) -> list[Row] | None:
        """The newest reading of each series of a device, by `latest_values` (the shared SQL's
        correlated subquery is slow on partitioned telemetry, and Citus refuses it)."""
        series = await tx.fetch(
            "SELECT id, tag, unit FROM series WHERE tenant_id = %s AND device_id = %s ORDER BY tag",
            [tenant_id, device_id],
        )
        newest = await self.latest_values(tx, tenant_id, [int(s[0]) for s in series])
        assert newest is not None  # noqa: S101 - this backend always answers
        return [(s[0], s[1], s[2], *newest[int(s[0])]) for s in series if int(s[0]) in newest]

    async def latest_values(
        self, tx: Tx, tenant_id: int, series_ids: Sequence[int]
    ) -> dict[int, Row] | None:
        """Citus: `citus.latest_by_series`. One node: per series, the newest row by its
        (series_id, ts) index within a recent window first (so only that window's partitions
        or chunks are probed), widening it for the series not found."""
        if self.info.distributed:
            return await citus.latest_by_series(tx, tenant_id, series_ids)
        newest: dict[int, Row] = {}
        for window in citus.LATEST_WINDOWS_S:
            missing = [int(s) for s in series_ids if int(s) not in newest]
            if not missing:
                break
            since = -(2**63) if window is None else time.time_ns() // 1000 - window * 1_000_000
            found = await tx.fetch(_LATEST_LATERAL, [missing, tenant_id, since])
            newest.update({int(r[0]): r[1:] for r in found})
        return newest

    async def relay(self, tx: Tx, tenant_id: int, message: bytes) -> None:
        """``NOTIFY`` the other replicas at commit: inline when small, else by a reference to
        a ``stream_log`` row. The payload is ``tenant:replica:i:<base64>`` or
        ``tenant:replica:l:<log id>``."""
        text = base64.b64encode(message).decode()
        if len(text) > _INLINE_RELAY:
            row = await tx.fetchone(
                "INSERT INTO stream_log (tenant_id, created_at, payload) VALUES (%s, %s, %s)"
                " RETURNING id",
                [tenant_id, time.time_ns() // 1000, message],
            )
            text = f"l:{row[0] if row else 0}"
        else:
            text = f"i:{text}"
        await tx.execute(
            "SELECT pg_notify(%s, %s)", [RELAY_CHANNEL, f"{tenant_id}:{self.replica}:{text}"]
        )

    def relay_listener(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """A dedicated connection that LISTENs to what the replicas relay."""
        return self._listen()

    @asynccontextmanager
    async def _listen(self) -> AsyncIterator[AsyncIterator[str]]:
        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            await conn.execute(f"LISTEN {RELAY_CHANNEL}")
        except psycopg.Error as exc:
            raise StorageError(f"postgresql: cannot listen: {exc}") from exc

        async def payloads() -> AsyncIterator[str]:
            try:
                while True:  # a bounded wait each round: cancelling never waits on the server
                    async for note in conn.notifies(timeout=1.0):
                        yield note.payload
            except psycopg.Error as exc:
                raise StorageError(f"postgresql: listening failed: {exc}") from exc

        try:
            yield payloads()
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def fetch_relayed(self, tenant_id: int, log_id: int) -> bytes | None:
        """A message relayed through ``stream_log``."""
        async with self.transaction(tenant_id) as tx:
            row = await tx.fetchone(
                "SELECT payload FROM stream_log WHERE tenant_id = %s AND id = %s",
                [tenant_id, log_id],
            )
        return bytes(row[0]) if row else None

    async def expire_commands(self, now_us: int) -> list[tuple[int, int, int, str]]:
        """Through `tagway_expire_commands` (every tenant, so the owner's rights)."""
        async with self.transaction(None) as tx:
            rows = await tx.fetch("SELECT * FROM tagway_expire_commands(%s)", [now_us])
        return [(int(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in rows]

    async def prune_relayed(self, before_us: int) -> int:
        """Through `tagway_prune_stream_log`."""
        async with self.transaction(None) as tx:
            row = await tx.fetchone("SELECT tagway_prune_stream_log(%s)", [before_us])
        return int(row[0]) if row else 0

    async def ping(self) -> None:
        """Raise `StorageError` unless PostgreSQL answers (and the worker readings go through)."""
        async with self.transaction(None) as tx:
            await tx.fetchone("SELECT 1")
        if self.rows_pool is not None:
            async with self._transaction(self.rows_pool, None) as tx:
                await tx.fetchone("SELECT 1")

    async def close(self) -> None:
        """Close the pools."""
        if self.rows_pool is not None:
            await self.rows_pool.close()
        await self.pool.close()


async def _open_rows_pool(
    settings: CloudSettings, dsn: str, info: BackendInfo
) -> AsyncConnectionPool[Any]:
    """The pool on the worker readings are written through, once it is known to see the
    distributed tables (Citus syncs their metadata to every node)."""
    if not info.distributed:
        raise StorageError(
            "telemetry_database_url names a node readings are written through, which needs"
            " telemetry distributed over Citus (tagway cloud migrate --distribute)"
        )
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn,
        min_size=settings.pool_min_size,
        max_size=max(settings.pool_max_size, settings.pool_min_size),
        kwargs={"autocommit": True},
        open=False,
        name="tagway-cloud-rows",
    )
    try:
        await pool.open(wait=True, timeout=10)
        async with pool.connection() as conn:
            cur = await conn.execute(citus.SEES_DISTRIBUTED)
            row = await cur.fetchone()
    except (psycopg.Error, PoolTimeout) as exc:
        await pool.close()
        raise StorageError(f"cannot use the telemetry node: {exc}") from exc
    if row is None or not row[0]:
        await pool.close()
        raise StorageError(
            "the telemetry node does not see telemetry and ingest_claim as distributed tables:"
            " name a worker of the same Citus database (with its metadata synced), after"
            " tagway cloud migrate"
        )
    return pool


async def _detect(pool: AsyncConnectionPool[Any]) -> BackendInfo:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT max(version) FROM schema_migrations")
        row = await cur.fetchone()
        layout = current(await server_facts(conn))
    return BackendInfo(
        backend="postgresql",
        timescaledb=layout.timescaledb,
        partitioning="timescaledb" if layout.timescaledb else "native",
        distributed=layout.distributed,
        schema_version=int(row[0] or 0) if row else 0,
        storage=layout.reason,
    )
