"""The SQLite backend: one file, no server; the embedded default for the quickstart and small
sites.

One connection in WAL mode, serialized by an asyncio lock (SQLite has one writer anyway). Small
statements run on the event loop (microseconds); the bulk write of a batch's readings runs in a
worker thread with ``executemany`` inside the batch's transaction.

Request classes (`cloud.storage.base.request_class`, `CloudSettings.db_classes`), as on
PostgreSQL: each transaction waits at most its class's `pool_timeout_s` for the connection (then
429 ``ingest_busy`` for ingest, 503 for the others), and its statements are interrupted past its
`statement_timeout_ms` (a progress handler checks the deadline, which each statement starts
again). At most `sqlite_ingest_writers`
ingest transactions hold or wait for the connection at once; the lock is first come, first
served, so a read or admin request waits behind at most that many ingest transactions however
many gateways push at once, and the pushing gateways get 429 ``ingest_busy`` and retry.

SQLite has no row-level security: isolation rests on the ``tenant_id`` filter every repository
statement carries. One process per file: run replicas against PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final

from cloud.errors import Conflict, InvalidRequest, StorageError
from cloud.settings import DbClasses, DbClassLimits
from cloud.storage import asset_schema, exact_schema, fleet_schema, simulated_schema
from cloud.storage.base import (
    NewSeriesCheck,
    Row,
    SeriesKey,
    TelemetryRows,
    Tx,
    ingest_busy,
    request_class,
)
from cloud.storage.provisioning_schema import SQLITE_MIGRATION
from cloud.storage.records import BackendInfo, MaintenanceJob, RetentionResult, StoredPrincipal
from cloud.storage.registry import find_or_create_series, find_series, mark_simulated
from cloud.storage.telemetry import DAY_US
from cloud.storage.twoway_schema import SQLITE_MIGRATION as TWO_WAY_MIGRATION

MIGRATIONS: Final[list[tuple[int, str, str]]] = [
    (
        1,
        "initial schema",
        """
CREATE TABLE tenants (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL, ingest_quota_per_day INTEGER, rate_limit INTEGER);
CREATE TABLE api_keys (id INTEGER PRIMARY KEY AUTOINCREMENT,
  tenant_id INTEGER NOT NULL REFERENCES tenants(id), name TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')), prefix TEXT NOT NULL,
  key_hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL, last_used_at INTEGER,
  revoked_at INTEGER);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
CREATE TABLE gateways (id INTEGER PRIMARY KEY AUTOINCREMENT,
  tenant_id INTEGER NOT NULL REFERENCES tenants(id), name TEXT NOT NULL, token_prefix TEXT,
  token_hash TEXT UNIQUE, created_at INTEGER NOT NULL, last_seen_at INTEGER, last_seq INTEGER,
  revoked_at INTEGER, UNIQUE (tenant_id, name));
CREATE TABLE devices (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id INTEGER NOT NULL,
  gateway_id INTEGER NOT NULL REFERENCES gateways(id), name TEXT NOT NULL, display_name TEXT,
  metadata TEXT NOT NULL DEFAULT '{}', created_at INTEGER NOT NULL, UNIQUE (gateway_id, name));
CREATE INDEX devices_tenant ON devices (tenant_id);
CREATE TABLE series (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id INTEGER NOT NULL,
  gateway_id INTEGER NOT NULL, device_id INTEGER NOT NULL REFERENCES devices(id),
  tag TEXT NOT NULL, unit TEXT, created_at INTEGER NOT NULL, UNIQUE (device_id, tag));
CREATE INDEX series_tenant ON series (tenant_id);
CREATE TABLE telemetry (tenant_id INTEGER NOT NULL, series_id INTEGER NOT NULL,
  ts INTEGER NOT NULL, value_num REAL, value_text TEXT, quality INTEGER NOT NULL,
  PRIMARY KEY (series_id, ts)) WITHOUT ROWID;
CREATE TABLE ingest_batch (tenant_id INTEGER NOT NULL, gateway_id INTEGER NOT NULL,
  seq INTEGER NOT NULL, created_at INTEGER NOT NULL, received_at INTEGER NOT NULL,
  readings INTEGER NOT NULL, stored INTEGER, bytes INTEGER NOT NULL,
  PRIMARY KEY (gateway_id, seq));
CREATE TABLE alarms (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id INTEGER NOT NULL,
  gateway_id INTEGER NOT NULL, device TEXT NOT NULL, tag TEXT, name TEXT NOT NULL,
  kind TEXT NOT NULL, state TEXT NOT NULL, ts INTEGER NOT NULL, severity INTEGER NOT NULL,
  message TEXT NOT NULL, value REAL, received_at INTEGER NOT NULL, acknowledged_at INTEGER,
  acknowledged_by INTEGER, UNIQUE (gateway_id, device, name, kind, state, ts));
CREATE INDEX alarms_tenant_ts ON alarms (tenant_id, ts);
CREATE TABLE gateway_drops (tenant_id INTEGER NOT NULL, gateway_id INTEGER NOT NULL,
  lane TEXT NOT NULL, dropped INTEGER NOT NULL, PRIMARY KEY (gateway_id, lane));
CREATE TABLE usage_daily (tenant_id INTEGER NOT NULL, day INTEGER NOT NULL,
  readings INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
  batches INTEGER NOT NULL DEFAULT 0, api_calls INTEGER NOT NULL DEFAULT 0,
  dropped INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, day));
CREATE TABLE rate_window (tenant_id INTEGER NOT NULL, window_start INTEGER NOT NULL,
  hits INTEGER NOT NULL, PRIMARY KEY (tenant_id, window_start));
""",
    ),
    (2, "provisioning", SQLITE_MIGRATION),
    (4, "two-way: commands, shadow, write records, alarm state", TWO_WAY_MIGRATION),
    (
        5,
        "batch digests, drop totals, tenant series limits",
        """
ALTER TABLE ingest_batch ADD COLUMN digest BLOB;
CREATE TABLE gateway_drop_totals (tenant_id INTEGER NOT NULL, gateway_id INTEGER NOT NULL,
  life TEXT NOT NULL, lane TEXT NOT NULL, total INTEGER NOT NULL,
  PRIMARY KEY (gateway_id, life, lane));
ALTER TABLE tenants ADD COLUMN max_devices INTEGER;
ALTER TABLE tenants ADD COLUMN max_series INTEGER;
""",
    ),
    (fleet_schema.VERSION, fleet_schema.NAME, fleet_schema.SQLITE_MIGRATION),
    (simulated_schema.VERSION, simulated_schema.NAME, simulated_schema.SQLITE_MIGRATION),
    (exact_schema.VERSION, exact_schema.NAME, exact_schema.SQLITE_MIGRATION),
    (asset_schema.VERSION, asset_schema.NAME, asset_schema.SQLITE_MIGRATION),
    (asset_schema.LIMIT_VERSION, asset_schema.LIMIT_NAME, asset_schema.SQLITE_LIMIT_MIGRATION),
]

# Readings deleted per retention transaction: a few milliseconds of the write lock, so ingest
# interleaves with a large first pass instead of waiting for all of it.
RETENTION_BATCH: Final = 5000
_PROGRESS_STEPS: Final = 10_000  # VM instructions between two looks at the statement deadline

_INSERT_READING: Final = (
    "INSERT OR IGNORE INTO telemetry (tenant_id, series_id, ts, value_num, value_text, quality)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_EXACT: Final = (
    "INSERT OR IGNORE INTO telemetry (tenant_id, series_id, ts, value_num, quality, value_int)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def _sql(sql: str) -> str:
    return sql.replace("%s", "?")


@contextmanager
def _translated() -> Iterator[None]:
    """SQLite's errors in our words: a unique key is a conflict, an int past 64 bits a bad value
    (our checks at the API come first; these are the last wall), the rest storage trouble."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise Conflict("the request conflicts with data stored meanwhile; retry") from exc
    except OverflowError as exc:
        raise InvalidRequest("a number is out of the range the database stores", path=[]) from exc
    except sqlite3.Error as exc:
        raise StorageError(f"sqlite: {exc}") from exc


class SqliteTx:
    """A transaction on the one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection, arm: Callable[[], None] = lambda: None) -> None:
        self.conn = conn
        self._arm = arm  # starts the statement timeout of the next statement

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """All rows of a query."""
        self._arm()
        with _translated():
            return self.conn.execute(_sql(sql), tuple(params)).fetchall()

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row, or None."""
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; rows changed."""
        self._arm()
        with _translated():
            return self.conn.execute(_sql(sql), tuple(params)).rowcount


class SqliteDatabase:
    """The embedded backend. Open with `SqliteDatabase.open(path)`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        classes: DbClasses | None = None,
        ingest_writers: int = 2,
    ) -> None:
        self.replica = "local"
        self._conn = conn
        self._lock = asyncio.Lock()
        self.classes = classes or DbClasses()
        self._ingest_slots = asyncio.Semaphore(max(1, ingest_writers))
        self._deadline: float | None = None  # of the running statement
        self._timeout_s: float | None = None  # of the open transaction's statements, each
        self._timed_out = False
        conn.set_progress_handler(self._past_deadline, _PROGRESS_STEPS)
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        self.info = BackendInfo(
            backend="sqlite", timescaledb=False, partitioning="none", schema_version=version
        )

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        migrate: bool = True,
        classes: DbClasses | None = None,
        ingest_writers: int = 2,
    ) -> SqliteDatabase:
        """Open (creating) the database file and apply pending migrations."""
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            if migrate:
                apply_migrations(conn)
            return cls(conn, classes=classes, ingest_writers=ingest_writers)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc

    @asynccontextmanager
    async def transaction(
        self, tenant_id: int | None, *, platform: bool = False
    ) -> AsyncIterator[Tx]:
        """A write transaction (BEGIN IMMEDIATE) under the request class's limits; rolled back if
        the block raises."""
        kind = request_class.get()
        limits = self.classes.of(kind)
        async with self._slot(kind, limits.pool_timeout_s), self._connection(kind, limits):
            timeout_ms = limits.statement_timeout_ms
            self._timeout_s = timeout_ms / 1000 if timeout_ms else None
            self._timed_out = False
            try:
                self._arm()
                self._conn.execute("BEGIN IMMEDIATE")
                yield SqliteTx(self._conn, self._arm)
            except BaseException as exc:
                self._deadline = self._timeout_s = None
                self._rollback()
                if self._timed_out and isinstance(exc, (StorageError, sqlite3.Error)):
                    raise StorageError(f"a statement ran past the {timeout_ms} ms statement"
                                       f" timeout of {kind} requests") from exc  # fmt: skip
                raise
            self._deadline = self._timeout_s = None
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StorageError(f"sqlite commit failed: {exc}") from exc

    def _rollback(self) -> None:
        # An interrupted statement may have rolled the whole transaction back already.
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _arm(self) -> None:
        """Start the statement timeout of the next statement: like PostgreSQL's
        `statement_timeout`, it bounds each statement, not the transaction."""
        timeout_s = self._timeout_s
        self._deadline = time.monotonic() + timeout_s if timeout_s else None

    def _past_deadline(self) -> int:
        """SQLite's progress handler: non-zero interrupts the running statement."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            self._timed_out = True
            return 1
        return 0

    @asynccontextmanager
    async def _slot(self, kind: str, timeout_s: float) -> AsyncIterator[None]:
        """For ingest: one of the `sqlite_ingest_writers` places in the connection's queue."""
        if kind != "ingest":
            yield
            return
        try:
            await asyncio.wait_for(self._ingest_slots.acquire(), timeout_s)
        except TimeoutError as exc:
            raise ingest_busy(timeout_s) from exc
        try:
            yield
        finally:
            self._ingest_slots.release()

    @asynccontextmanager
    async def _connection(self, kind: str, limits: DbClassLimits) -> AsyncIterator[None]:
        """The one connection, waited for at most the class's `pool_timeout_s`."""
        try:
            await asyncio.wait_for(self._lock.acquire(), limits.pool_timeout_s)
        except TimeoutError as exc:
            if kind == "ingest":
                raise ingest_busy(limits.pool_timeout_s) from exc
            raise StorageError(f"the database was not free within {limits.pool_timeout_s:g} s"
                               f" ({kind} requests)") from exc  # fmt: skip
        try:
            yield
        finally:
            self._lock.release()

    async def authenticate(self, digest: str, *, now_us: int) -> StoredPrincipal | None:
        """The user or gateway whose token has this digest (unrevoked); touches last-used."""
        async with self.transaction(None) as tx:
            row = await tx.fetchone(
                "SELECT 'user', tenant_id, id, role FROM api_keys"
                " WHERE key_hash = %s AND revoked_at IS NULL"
                " UNION ALL SELECT 'gateway', tenant_id, id, NULL FROM gateways"
                " WHERE token_hash = %s AND revoked_at IS NULL",
                [digest, digest],
            )
            if row is not None and row[0] == "user":
                await tx.execute(
                    "UPDATE api_keys SET last_used_at = %s WHERE id = %s"
                    " AND (last_used_at IS NULL OR last_used_at < %s)",
                    [now_us, row[2], now_us - 60_000_000],
                )
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
        """Series ids, one lookup per series (in-process, so cheap)."""
        found = [await find_series(tx, tenant_id, gateway_id, device=k[0], tag=k[1]) for k in keys]
        changed = {f[0]: k[3] for f, k in zip(found, keys, strict=True) if f and f[1] != k[3]}
        await mark_simulated(tx, tenant_id, changed)
        missing = [i for i, f in enumerate(found) if f is None]
        if missing and before_create is not None:
            await before_create(len(missing))
        ids = [f[0] if f else 0 for f in found]
        for i in missing:
            device, tag, unit, simulated = keys[i]
            ids[i] = await find_or_create_series(
                tx, tenant_id, gateway_id, device=device, tag=tag, unit=unit, simulated=simulated
            )
        return ids

    async def ensure_partitions(self, days: Sequence[int]) -> None:
        """Nothing to do: SQLite does not partition."""

    @property
    def splits_ingest(self) -> bool:
        """Never: one file holds everything."""
        return False

    async def write_batch_rows(
        self, tenant_id: int, gateway_id: int, seq: int, rows: TelemetryRows
    ) -> int:
        """Not used: ingest writes the readings in its own transaction (`splits_ingest`)."""
        raise NotImplementedError("SQLite writes readings in the batch's transaction")

    async def write_telemetry(self, tx: Tx, tenant_id: int, rows: TelemetryRows) -> int:
        """executemany INSERT OR IGNORE in the caller's transaction, off the event loop."""
        numeric = zip(
            [tenant_id] * len(rows.ts),
            rows.series_id.tolist(),
            rows.ts.tolist(),
            rows.value.tolist(),
            [None] * len(rows.ts),
            rows.quality.tolist(),
            strict=True,
        )
        text = [(tenant_id, sid, ts, None, v, q) for sid, ts, v, q in rows.text_rows]
        exact = [(tenant_id, sid, ts, v, q, exact_schema.stored(i))
                 for sid, ts, v, i, q in rows.exact_rows]  # fmt: skip
        work = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self._insert, [*numeric, *text], exact), name="sqlite-executemany"
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The worker thread still holds the connection: let it finish before the caller's
            # rollback touches the same connection, then let the cancellation go on.
            await asyncio.wait([work])
            raise
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite: {exc}") from exc

    def _insert(self, rows: list[tuple[Any, ...]], exact: list[tuple[Any, ...]]) -> int:
        before = self._conn.total_changes
        self._arm()
        self._conn.executemany(_INSERT_READING, rows)
        if exact:
            self._arm()
            self._conn.executemany(_INSERT_EXACT, exact)
        return self._conn.total_changes - before

    async def drop_telemetry(
        self, *, keep_days: int, now_us: int, dry_run: bool = False
    ) -> RetentionResult:
        """Delete readings older than the cutoff, at most `RETENTION_BATCH` per transaction.

        Series by series along the (series_id, ts) primary key, so no batch scans the table.
        Series, devices, usage and the batch log stay: they are metadata, not telemetry.
        """
        cutoff = now_us - max(keep_days, 1) * DAY_US
        if dry_run:
            async with self.transaction(None) as tx:
                row = await tx.fetchone(
                    "SELECT count(*) FROM series s JOIN telemetry t"
                    " ON t.series_id = s.id AND t.ts < %s",
                    [cutoff],
                )
            counted = int(row[0]) if row else 0
            return RetentionResult(method="rows", cutoff=cutoff, dry_run=True, rows_deleted=counted)
        deleted, after = 0, -1
        while True:
            async with self.transaction(None) as tx:
                done, resume = await _delete_batch(tx, cutoff, after, RETENTION_BATCH)
            deleted += done
            if resume is None:
                return RetentionResult(
                    method="rows", cutoff=cutoff, dry_run=False, rows_deleted=deleted
                )
            after = resume
            await asyncio.sleep(0)  # let waiting requests take the lock between batches

    async def row_stored_from(self) -> int:
        """The smallest timestamp: every reading is row-stored."""
        return -(2**63 - 1)

    async def compress_telemetry(self, *, after_days: int) -> list[str]:
        """Nothing: SQLite has no columnar storage."""
        return []

    async def relay(self, tx: Tx, tenant_id: int, message: bytes) -> None:
        """Nothing to do: one process per file, and its hub hears everything directly."""

    def relay_listener(self) -> AbstractAsyncContextManager[AsyncIterator[str]] | None:
        """None: there are no other replicas."""
        return None

    async def fetch_relayed(self, tenant_id: int, log_id: int) -> bytes | None:
        """None: nothing is relayed."""
        return None

    async def expire_commands(self, now_us: int) -> list[tuple[int, int, int, str]]:
        """Queued commands past their TTL become expired."""
        async with self.transaction(None) as tx:
            return await tx.fetch(
                "UPDATE commands SET state = 'expired', finished_at = %s,"
                " error = 'not delivered before its TTL ran out'"
                " WHERE state = 'queued' AND expires_at <= %s"
                " RETURNING tenant_id, id, gateway_id, kind",
                [now_us, now_us],
            )

    async def prune_relayed(self, before_us: int) -> int:
        """Nothing is relayed."""
        return 0

    async def set_retention_policy(self, *, keep_days: int) -> int | None:
        """SQLite has no retention of its own: the service's pass is all there is."""
        return None

    async def aggregate_rows(
        self, tx: Tx, tenant_id: int, series_id: int, *, start: int, end: int, bucket_us: int
    ) -> list[Row] | None:
        """None: the shared SQL over raw rows answers."""
        return None

    async def latest_rows(self, tx: Tx, tenant_id: int, device_id: int) -> list[Row] | None:
        """None: the shared SQL answers."""
        return None

    async def latest_values(
        self, tx: Tx, tenant_id: int, series_ids: Sequence[int]
    ) -> dict[int, Row] | None:
        """None: the shared SQL answers (in-process, one index probe per series)."""
        return None

    async def maintenance_jobs(self) -> list[MaintenanceJob]:
        """SQLite runs no background jobs."""
        return []

    async def ping(self) -> None:
        """Raise `StorageError` unless the file answers."""
        async with self._lock:
            try:
                self._conn.execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                raise StorageError(f"sqlite: {exc}") from exc

    async def close(self) -> None:
        """Close the connection."""
        async with self._lock:
            self._conn.close()


async def _delete_batch(tx: Tx, cutoff: int, after: int, budget: int) -> tuple[int, int | None]:
    """Delete up to `budget` old readings of the series after id `after`.

    Answers (rows deleted, the last series id finished, or None when no series is left).
    """
    deleted = 0
    series = await tx.fetch("SELECT id FROM series WHERE id > %s ORDER BY id", [after])
    for (sid,) in series:
        # The budget-th oldest reading below the cutoff bounds this series' share of the batch;
        # without one, everything of the series below the cutoff fits.
        edge = await tx.fetchone(
            "SELECT ts FROM telemetry WHERE series_id = %s AND ts < %s ORDER BY ts"
            " LIMIT 1 OFFSET %s",
            [sid, cutoff, budget - deleted - 1],
        )
        below = cutoff if edge is None else int(edge[0]) + 1
        deleted += await tx.execute(
            "DELETE FROM telemetry WHERE series_id = %s AND ts < %s", [sid, below]
        )
        if edge is not None:  # budget used up, maybe mid-series: this series again next time
            return deleted, int(sid) - 1
    return deleted, None


def apply_migrations(conn: sqlite3.Connection) -> int:
    """Apply pending migrations, each in its own transaction with its version row."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
        " name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    for version, name, script in MIGRATIONS:
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (version, name, time.time_ns() // 1000),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return max(v for v, _, _ in MIGRATIONS)
