"""The storage seam: a transaction handle (`Tx`) and a database (`Database`) per backend.

The repository (`cloud.storage.repository`) writes its SQL once against these; the two backends
(`sqlite`, `postgres`) differ only in connections, migrations, tenant context and the bulk write.
SQL is written with ``%s`` placeholders; the SQLite backend rewrites them to ``?``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from cloud.errors import RateLimited
from cloud.storage.records import BackendInfo, MaintenanceJob, RetentionResult, StoredPrincipal

Row = tuple[Any, ...]
NewSeriesCheck: TypeAlias = Callable[[int], Awaitable[None]]
"""Awaited with the number of series about to be created; raises to refuse them."""
SeriesKey: TypeAlias = tuple[str, str, str | None, bool]
"""(device, tag, unit, simulated) of a series in a batch."""

request_class: ContextVar[str] = ContextVar("tagway_request_class", default="background")
"""What the current task serves: ``ingest``, ``read`` or ``admin`` (set by the request guard),
``background`` otherwise. Both backends give each class its statement timeout, its wait for a
connection and, for ingest, a bounded share (PostgreSQL: of the pool; SQLite: of the places in
the queue for its one connection; `CloudSettings.db_classes`)."""

INGEST_BUSY_RETRY_S = 2


def ingest_busy(waited_s: float) -> RateLimited:
    """429 ``ingest_busy``: ingest's share of the database is taken; the gateway retries."""
    return RateLimited(
        f"ingest holds its share of the database connections; none came free within"
        f" {waited_s:g} s (retry)",
        retry_after=INGEST_BUSY_RETRY_S,
        code="ingest_busy",
    )


class Tx(Protocol):
    """One open transaction, already scoped to a tenant where the backend supports it."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """All rows of a query."""
        ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        ...


class TelemetryRows(Protocol):
    """The columns of the readings of one batch, ready for the bulk write."""

    series_id: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.int8]
    text_rows: list[tuple[int, int, str, int]]
    exact_rows: list[tuple[int, int, float, int, int]]
    """Readings whose value is an integer past float64's exactness: series id, ts, the float
    value, the exact integer, quality (see `cloud.storage.exact_schema`)."""


class Database(Protocol):
    """A backend: transactions, migrations and the backend-specific bulk operations."""

    info: BackendInfo
    replica: str
    """Tells this process's relayed messages apart from the other replicas'."""

    def transaction(
        self, tenant_id: int | None, *, platform: bool = False
    ) -> AbstractAsyncContextManager[Tx]:
        """A transaction scoped to `tenant_id` (and to all tenants when `platform`)."""
        ...

    async def authenticate(self, digest: str, *, now_us: int) -> StoredPrincipal | None:
        """The unrevoked user or gateway whose token has this digest; touches last-used.

        Runs outside any tenant context (the tenant is what it finds out), which is why the
        PostgreSQL backend does it in a SECURITY DEFINER function.
        """
        ...

    async def resolve_series(
        self,
        tx: Tx,
        tenant_id: int,
        gateway_id: int,
        keys: Sequence[SeriesKey],
        *,
        before_create: NewSeriesCheck | None = None,
    ) -> list[int]:
        """Ids of the (device, tag, unit, simulated) series of a gateway, creating missing
        devices/series (after awaiting `before_create` with how many are missing, which may
        refuse) and storing a simulated flag that changed."""
        ...

    async def ensure_partitions(self, days: Sequence[int]) -> None:
        """Make sure telemetry can hold readings of these UTC days (days since the epoch)."""
        ...

    async def write_telemetry(self, tx: Tx, tenant_id: int, rows: TelemetryRows) -> int:
        """Insert readings, skipping (series, ts) already stored; the number inserted."""
        ...

    @property
    def splits_ingest(self) -> bool:
        """True when a batch's readings are written through another node than its metadata
        (Citus with `telemetry_database_url`): ingest then takes three transactions
        (`cloud.storage.telemetry`) and the readings `write_batch_rows`."""
        ...

    async def write_batch_rows(
        self, tenant_id: int, gateway_id: int, seq: int, rows: TelemetryRows
    ) -> int:
        """Where `splits_ingest`: the batch's readings written once, in one transaction with its
        claim; the rows added (by this call, or by the attempt that claimed it first)."""
        ...

    async def drop_telemetry(
        self, *, keep_days: int, now_us: int, dry_run: bool = False
    ) -> RetentionResult:
        """Remove telemetry older than `keep_days` (never today's); what was (would be) removed.

        Idempotent, and safe to run from several replicas at once.
        """
        ...

    async def row_stored_from(self) -> int:
        """The first timestamp after every columnar day (Citus), or the smallest bigint."""
        ...

    async def compress_telemetry(self, *, after_days: int) -> list[str]:
        """Citus: convert whole days that ended `after_days` ago (at least 2) to columnar
        storage; the partitions converted. Elsewhere nothing (TimescaleDB compresses its own
        chunks). Safe to run from several replicas at once."""
        ...

    async def relay(self, tx: Tx, tenant_id: int, message: bytes) -> None:
        """Hand a live message to the other replicas when `tx` commits (`cloud.live`).

        PostgreSQL: a ``NOTIFY`` (through ``stream_log`` when too large for its payload).
        SQLite serves one process, so there is nobody to tell: a no-op.
        """
        ...

    def relay_listener(self) -> AbstractAsyncContextManager[AsyncIterator[str]] | None:
        """A connection receiving what the other replicas relay (raw notification payloads),
        or None where replicas cannot exist (SQLite)."""
        ...

    async def fetch_relayed(self, tenant_id: int, log_id: int) -> bytes | None:
        """A message relayed through ``stream_log`` (None once pruned)."""
        ...

    async def expire_commands(self, now_us: int) -> list[tuple[int, int, int, str]]:
        """Mark queued commands past their TTL expired, in every tenant; (tenant, id, gateway,
        kind) of each. Safe from several replicas at once: each row is expired once."""
        ...

    async def prune_relayed(self, before_us: int) -> int:
        """Forget relayed messages older than `before_us`; how many."""
        ...

    async def set_retention_policy(self, *, keep_days: int) -> int | None:
        """Make the database's own retention (TimescaleDB's policies) keep `keep_days` days;
        the days it kept before when that changed, else None (also where there is none)."""
        ...

    async def aggregate_rows(
        self, tx: Tx, tenant_id: int, series_id: int, *, start: int, end: int, bucket_us: int
    ) -> list[Row] | None:
        """The backend's own bucketed aggregates (bucket, min, max, avg, last number, last text,
        count), or None where the shared SQL over raw rows answers."""
        ...

    async def latest_rows(self, tx: Tx, tenant_id: int, device_id: int) -> list[Row] | None:
        """The backend's own newest reading per series of a device (series id, tag, unit, ts,
        number, text, quality; by tag), or None where the shared SQL answers."""
        ...

    async def latest_values(
        self, tx: Tx, tenant_id: int, series_ids: Sequence[int]
    ) -> dict[int, Row] | None:
        """The backend's own newest reading (ts, number, text, quality, exact integer) of each
        of these series that has one, by series id, reading telemetry alone; or None where the
        shared SQL answers."""
        ...

    async def maintenance_jobs(self) -> list[MaintenanceJob]:
        """The database's background jobs and their health (empty where there are none)."""
        ...

    async def ping(self) -> None:
        """Raise `StorageError` unless the database answers."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
