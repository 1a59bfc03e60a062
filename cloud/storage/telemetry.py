"""Ingestion and telemetry queries, over the shared SQL.

Ingestion is one transaction: the (gateway, seq) row that makes the batch idempotent, the daily
quota (a conditional UPDATE, so concurrent replicas serialize on the usage row and the quota holds
across them), devices and series created on first sight, the readings' bulk write, the alarm
transitions and the gateway's events (command results, write records, shadow reports), and the
live messages for the other replicas (`cloud.live`). Any error rolls all of it back: nothing is
ever half-written, and nothing is announced that was not stored.

On Citus with `telemetry_database_url` (`Database.splits_ingest`) the readings go through a
worker, so they never pass the coordinator, whose tables (local, with their row-level security)
the worker cannot write. A batch then takes three transactions:

1. coordinator: the (gateway, seq) row with no stored count yet, series, alarms, events, the
   gateway's last batch, and the quota charged for every reading of the batch;
2. worker: the readings, with the batch's row in the distributed ``ingest_claim`` (one Citus
   distributed transaction: both on every node or neither);
3. coordinator: the stored count, the readings that were not stored refunded, the batch
   announced to live clients.

A replay of a seq whose count is set is a duplicate, as always. One whose count is not set is an
attempt that stopped between 1 and 3 (the gateway retries until acknowledged): it redoes 2 and 3
only; 2 finds the claim and returns what the first attempt stored, or writes the readings if
none did; 3 sets the count only while it is unset. So every reading is stored once, and the
batch's count and usage are the rows stored, once. Between 1 and 3 the day's usage holds the
batch's full size (the quota is charged before the readings, so it is never passed).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cloud.contract import (
    AssetPaths,
    Batch,
    CommandResult,
    ConfigReport,
    ShadowReport,
    StatusReport,
    WriteRecord,
)
from cloud.errors import IngestUnfinished, NotFound, RateLimited, SeqConflict
from cloud.health import HealthPolicy
from cloud.live import AlarmChanges, Announce, News, StoredBatch, ignore
from cloud.storage.alarms import write_alarms
from cloud.storage.asset_tree import apply_asset_paths, place_reported
from cloud.storage.base import Database, Row, Tx
from cloud.storage.commands import apply_result
from cloud.storage.metering import (
    IngestPolicy,
    charge,
    check_holdings,
    check_new_series,
    record_drops,
    refund,
)
from cloud.storage.records import Bucket, IngestResult, LatestValue, Point
from cloud.storage.rollouts import RolloutStore
from cloud.storage.shadow import apply_report
from cloud.storage.status import apply_config_report, apply_status
from cloud.storage.writes import store_write

DAY_US: Final = 86_400_000_000
US: Final = 1_000_000
_LOG_BATCH: Final = (
    "INSERT INTO ingest_batch (tenant_id, gateway_id, seq, created_at, received_at, readings,"
    " bytes, digest) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (gateway_id, seq) DO NOTHING RETURNING seq"
)
_GATEWAY_SEEN: Final = (
    "UPDATE gateways SET last_seen_at = %s,"
    " last_seq = CASE WHEN last_seq IS NULL OR last_seq < %s THEN %s ELSE last_seq END"
    " WHERE tenant_id = %s AND id = %s"
)


@dataclass(slots=True)
class BatchRows:
    """The readings of one batch as columns, series names resolved to ids."""

    series_id: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.int8]
    text_rows: list[tuple[int, int, str, int]] = field(default_factory=list)
    exact_rows: list[tuple[int, int, float, int, int]] = field(default_factory=list)

    @classmethod
    def build(cls, batch: Batch, ids: list[int]) -> BatchRows:
        """Concatenate the numeric series; text series go row by row (they are rare)."""
        numeric = [(i, s) for i, s in zip(ids, batch.series, strict=True)
                   if not s.is_text and not _exact(s)]  # fmt: skip
        exact_rows = [
            (sid, int(ts), float(v), v, int(q))
            for sid, s in zip(ids, batch.series, strict=True)
            if _exact(s)
            for ts, v, q in zip(
                s.ts, _column(s.values), _qualities(s.qualities, len(s)).tolist(), strict=True
            )
        ]
        text_rows = [
            (sid, int(ts), str(v), int(q))
            for sid, s in zip(ids, batch.series, strict=True)
            if s.is_text
            for ts, v, q in zip(
                s.ts, s.values, _qualities(s.qualities, len(s)).tolist(), strict=True
            )
        ]
        if not numeric:
            empty = np.empty(0, dtype=np.int64)
            return cls(empty, empty, np.empty(0), np.empty(0, dtype=np.int8), text_rows,
                       exact_rows)  # fmt: skip
        lengths = [len(s) for _, s in numeric]
        return cls(
            series_id=np.repeat(np.asarray([i for i, _ in numeric], dtype=np.int64), lengths),
            ts=np.concatenate([np.asarray(s.ts, dtype=np.int64) for _, s in numeric]),
            value=np.concatenate([np.asarray(s.values, dtype=np.float64) for _, s in numeric]),
            quality=np.concatenate([_qualities(s.qualities, len(s)) for _, s in numeric]),
            text_rows=text_rows,
            exact_rows=exact_rows,
        )

    def __len__(self) -> int:
        return len(self.ts) + len(self.text_rows) + len(self.exact_rows)


def _exact(s: Any) -> bool:
    """A series of integers past float64's exactness (the contract decodes them as int64 or
    uint64 arrays; every other numeric series is float64)."""
    kind = getattr(getattr(s.values, "dtype", None), "kind", "")
    return kind in ("i", "u")


def _column(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _qualities(qualities: Any, length: int) -> npt.NDArray[np.int8]:
    if qualities is None:
        return np.zeros(length, dtype=np.int8)
    return np.asarray(qualities, dtype=np.int8)


def batch_days(batch: Batch) -> list[int]:
    """The UTC days (since the epoch) the batch's readings fall on."""
    days: set[int] = set()
    for s in batch.series:
        if len(s):
            days.update(np.unique(np.asarray(s.ts, dtype=np.int64) // DAY_US).tolist())
    return sorted(days)


async def _apply_events(
    tx: Tx, tenant_id: int, gateway_id: int, batch: Batch, *, news: News, now_us: int,
    health: HealthPolicy, rollouts: RolloutStore,
) -> None:  # fmt: skip
    """The gateway's command results, write records, shadow, config and status reports, each
    applied once."""
    # only the newest path report of a batch matters (each replaces the one before)
    reports = [e for e in batch.events if isinstance(e, AssetPaths)]
    newest = max(reports, key=lambda e: e.seq) if reports else None
    for event in batch.events:
        if isinstance(event, CommandResult):
            await apply_result(tx, tenant_id, gateway_id, event, now_us=now_us, news=news)
        elif isinstance(event, WriteRecord):
            await store_write(tx, tenant_id, gateway_id, event, now_us=now_us)
        elif isinstance(event, ShadowReport):
            await apply_report(tx, tenant_id, gateway_id, event, now_us=now_us)
        elif isinstance(event, ConfigReport):
            await apply_config_report(tx, tenant_id, gateway_id, event, now_us=now_us, news=news,
                                      rollouts=rollouts)  # fmt: skip
        elif isinstance(event, StatusReport):
            await apply_status(tx, tenant_id, gateway_id, event, now_us=now_us, policy=health)
        elif isinstance(event, AssetPaths) and event is newest:
            await apply_asset_paths(tx, tenant_id, gateway_id, event, now_us=now_us)


def value_of(num: float | None, text: str | None, exact: Any = None) -> int | float | str:
    """A stored reading's value from its number, text and exact-integer columns."""
    if exact is not None:
        return int(exact)  # numeric(20, 0) comes back as a Decimal, SQLite's uint64 as text
    return text if text is not None else float(num if num is not None else math.nan)


_value = value_of
_LATEST_IDS: Final = 500  # series ids per statement of the shared latest query

_LATEST_OF: Final = (
    "SELECT s.id, t.ts, t.value_num, t.value_text, t.quality, t.value_int FROM series s"
    " JOIN telemetry t ON t.series_id = s.id AND t.tenant_id = %s"
    " WHERE s.tenant_id = %s AND s.id IN ({marks}) AND t.ts = (SELECT max(x.ts)"
    " FROM telemetry x WHERE x.tenant_id = %s AND x.series_id = s.id)"
)


async def latest_of_series(
    db: Database, tx: Tx, tenant_id: int, series_ids: list[int]
) -> dict[int, Row]:
    """The newest reading (ts, number, text, quality, exact integer) of each of these series
    that has one, by id: the backend's own way (`Database.latest_values`; on PostgreSQL and
    Citus telemetry is read alone, by series id), else the shared SQL."""
    found = await db.latest_values(tx, tenant_id, series_ids)
    if found is not None:
        return found
    newest: dict[int, Row] = {}
    for first in range(0, len(series_ids), _LATEST_IDS):
        part = series_ids[first : first + _LATEST_IDS]
        sql = _LATEST_OF.format(marks=", ".join(["%s"] * len(part)))
        for row in await tx.fetch(sql, [tenant_id, tenant_id, *part, tenant_id]):
            newest[int(row[0])] = row[1:]
    return newest


async def series_buckets(
    db: Database, tx: Tx, tenant_id: int, series_id: int, *, start: int, end: int,
    bucket_us: int,
) -> list[Bucket]:  # fmt: skip
    """min/max/avg/last/count per bucket of one series (known to be the tenant's)."""
    rows = await db.aggregate_rows(
        tx, tenant_id, series_id, start=start, end=end, bucket_us=bucket_us
    )
    if rows is None:
        rows = await TelemetryStore.aggregate_raw(
            tx, tenant_id, series_id, start=start, end=end, bucket_us=bucket_us
        )
    return [_bucket(r) for r in rows]


_AGGREGATE_IDS: Final = 200  # series ids per statement of the shared aggregate over many series

_AGGREGATE_MANY: Final = (
    "WITH b AS (SELECT series_id, (ts / %s) * %s AS bucket, ts, value_num FROM telemetry"
    " WHERE tenant_id = %s AND series_id IN ({marks}) AND ts >= %s AND ts < %s),"
    " agg AS (SELECT series_id, bucket, min(value_num) AS lo, max(value_num) AS hi,"
    " avg(value_num) AS mean, count(*) AS n, max(ts) AS last_ts FROM b"
    " GROUP BY series_id, bucket)"
    " SELECT a.series_id, a.bucket, a.lo, a.hi, a.mean, t.value_num, t.value_text, a.n FROM agg a"
    " JOIN telemetry t ON t.tenant_id = %s AND t.series_id = a.series_id AND t.ts = a.last_ts"
    " ORDER BY a.series_id, a.bucket"
)


async def buckets_of_series(
    db: Database, tx: Tx, tenant_id: int, series_ids: list[int], *, start: int, end: int,
    bucket_us: int,
) -> dict[int, list[Bucket]]:  # fmt: skip
    """`series_buckets` of many series (known to be the tenant's), by id. Where the backend has
    its own aggregates for this bucket (TimescaleDB's `telemetry_1m`) series by series; else the
    shared SQL over raw rows for a few hundred series per statement (telemetry alone, grouped
    by series: on Citus each worker answers for its own shards)."""
    out: dict[int, list[Bucket]] = {sid: [] for sid in series_ids}
    if not series_ids:
        return out
    first = await db.aggregate_rows(
        tx, tenant_id, series_ids[0], start=start, end=end, bucket_us=bucket_us
    )
    if first is not None:
        out[series_ids[0]] = [_bucket(r) for r in first]
        for sid in series_ids[1:]:
            out[sid] = await series_buckets(
                db, tx, tenant_id, sid, start=start, end=end, bucket_us=bucket_us
            )
        return out
    for at in range(0, len(series_ids), _AGGREGATE_IDS):
        part = series_ids[at : at + _AGGREGATE_IDS]
        sql = _AGGREGATE_MANY.format(marks=", ".join(["%s"] * len(part)))
        rows = await tx.fetch(sql, [bucket_us, bucket_us, tenant_id, *part, start, end, tenant_id])
        for row in rows:
            out[int(row[0])].append(_bucket(row[1:]))
    return out


@dataclass(frozen=True, slots=True)
class Admitted:
    """A tenant's ingest rate and the limits its batch is held to."""

    rate: int
    ingest: IngestPolicy


@dataclass(frozen=True, slots=True)
class IngestDefaults:
    """The service's defaults for tenants that have no limits of their own."""

    quota: int
    rate: int
    max_devices: int
    max_series: int
    max_new_series: int

    def apply(
        self, quota: int | None, rate: int | None, devices: int | None, series: int | None
    ) -> Admitted:
        """The tenant's own limits where set, these defaults elsewhere."""
        return Admitted(
            rate=self.rate if rate is None else int(rate),
            ingest=IngestPolicy(
                quota=self.quota if quota is None else int(quota),
                max_devices=self.max_devices if devices is None else int(devices),
                max_series=self.max_series if series is None else int(series),
                max_new_series=self.max_new_series,
            ),
        )


@dataclass(frozen=True, slots=True)
class PostedBody:
    """A batch's body as the gateway posted it (relayed as is to the other replicas)."""

    body: bytes
    content_type: str
    content_encoding: str | None


class TelemetryStore:
    """Ingest, rate limits and telemetry reads; the base of `Repository`.

    Args:
        db: the backend.
        announce: hands committed live messages to this replica's hub.
        health: the limits status documents are held to.
    """

    def __init__(
        self, db: Database, announce: Announce = ignore, *, health: HealthPolicy | None = None
    ) -> None:
        self.db = db
        self.announce = announce
        self.health = health or HealthPolicy()

    @asynccontextmanager
    async def live(self, tenant_id: int) -> AsyncIterator[tuple[Tx, News]]:
        """A tenant transaction whose `News` is relayed inside it and announced after commit."""
        news = News(relay=self.db.relay, tenant_id=tenant_id)
        async with self.db.transaction(tenant_id) as tx:
            yield tx, news
            await news.relay(tx)
        for message in news.relayed:
            self.announce(tenant_id, message)

    async def admit_ingest(
        self, tenant_id: int, *, defaults: IngestDefaults, window_s: int, now_us: int
    ) -> IngestPolicy:
        """Count this ingest request against the tenant's rate limit; the limits to apply.

        The counter is a row per (tenant, window) in the database, so every replica sees it.
        Raises `RateLimited` with the seconds left in the window when over the limit.
        """
        window_us = window_s * US
        start = now_us - now_us % window_us
        async with self.db.transaction(tenant_id) as tx:
            row = await tx.fetchone(
                "INSERT INTO rate_window (tenant_id, window_start, hits) VALUES (%s, %s, 1)"
                " ON CONFLICT (tenant_id, window_start)"
                " DO UPDATE SET hits = rate_window.hits + 1 RETURNING hits",
                [tenant_id, start],
            )
            limits = await tx.fetchone(
                "SELECT ingest_quota_per_day, rate_limit, max_devices, max_series FROM tenants"
                " WHERE id = %s",
                [tenant_id],
            )
            if row is None or limits is None:
                raise NotFound("tenant not found")
            hits = row[0]
            if hits == 1:  # first request of a window: forget the old windows
                await tx.execute(
                    "DELETE FROM rate_window WHERE tenant_id = %s AND window_start < %s",
                    [tenant_id, start],
                )
        policy = defaults.apply(*limits)
        if hits > policy.rate:
            retry = math.ceil((start + window_us - now_us) / US)
            raise RateLimited(
                f"over the ingest rate limit of {policy.rate} requests per {window_s} s",
                retry_after=retry,
            )
        return policy.ingest

    async def ingest(
        self,
        tenant_id: int,
        gateway_id: int,
        batch: Batch,
        *,
        posted: PostedBody,
        digest: bytes,
        policy: IngestPolicy,
        now_us: int,
    ) -> IngestResult:
        """Store a batch once per (gateway, seq); a replay answers `duplicate=True`, the same
        seq with other content (another `digest`) is a `SeqConflict`."""
        readings = batch.reading_count
        body_bytes = len(posted.body)
        await self.db.ensure_partitions(batch_days(batch))
        if self.db.splits_ingest:
            return await self._ingest_split(
                tenant_id, gateway_id, batch, posted=posted, digest=digest, policy=policy,
                now_us=now_us,
            )  # fmt: skip
        async with self.live(tenant_id) as (tx, news):
            claimed = await tx.fetchone(_LOG_BATCH, [tenant_id, gateway_id, batch.seq,
                                                     batch.created_at, now_us, readings,
                                                     body_bytes, digest])  # fmt: skip
            if claimed is None:
                return await self._duplicate(tx, tenant_id, gateway_id, batch.seq, digest)
            ids = await self._series_ids(tx, tenant_id, gateway_id, batch, policy=policy,
                                         now_us=now_us)  # fmt: skip
            stored = await self.db.write_telemetry(tx, tenant_id, BatchRows.build(batch, ids))
            changed = await write_alarms(tx, tenant_id, gateway_id, batch.alarms, now_us)
            await _apply_events(tx, tenant_id, gateway_id, batch, news=news, now_us=now_us,
                                health=self.health, rollouts=RolloutStore(self.db))  # fmt: skip
            if batch.series:
                news.add(StoredBatch(gateway_id, posted.body, posted.content_type,
                                     posted.content_encoding, batch))  # fmt: skip
            if changed:
                simulated = {s.device for s in batch.series if s.simulated}
                for transition in changed:
                    transition["simulated"] = transition["device"] in simulated
                news.add(AlarmChanges(gateway_id, changed))
            await news.relay(tx)  # before the rows every batch updates, to hold their locks less
            await tx.execute(
                "UPDATE ingest_batch SET stored = %s WHERE gateway_id = %s AND seq = %s",
                [stored, gateway_id, batch.seq],
            )
            # The rows every batch of this gateway/tenant updates come last, so their row locks
            # are held only until the commit and concurrent batches overlap their bulk writes.
            await tx.execute(_GATEWAY_SEEN, [now_us, batch.seq, batch.seq, tenant_id, gateway_id])
            dropped = await record_drops(tx, tenant_id, gateway_id, batch)
            await charge(tx, tenant_id, stored=stored, dropped=dropped, body_bytes=body_bytes,
                         quota=policy.quota, now_us=now_us)  # fmt: skip
        return IngestResult(
            duplicate=False, seq=batch.seq, readings=readings, stored=stored, received_at=now_us
        )

    async def _ingest_split(
        self,
        tenant_id: int,
        gateway_id: int,
        batch: Batch,
        *,
        posted: PostedBody,
        digest: bytes,
        policy: IngestPolicy,
        now_us: int,
    ) -> IngestResult:
        """`ingest` with the readings written through a worker (`Database.splits_ingest`), in
        three transactions (the module docstring says why it stays exactly once)."""
        readings, body_bytes, seq = batch.reading_count, len(posted.body), batch.seq
        async with self.live(tenant_id) as (tx, news):
            claimed = await tx.fetchone(_LOG_BATCH, [tenant_id, gateway_id, seq,
                                                     batch.created_at, now_us, readings,
                                                     body_bytes, digest])  # fmt: skip
            if claimed is None:
                logged = await self._logged(tx, tenant_id, gateway_id, seq, digest)
                if logged is not None:
                    return logged
            ids = await self._series_ids(tx, tenant_id, gateway_id, batch, policy=policy,
                                         now_us=now_us)  # fmt: skip
            if claimed is not None:  # the first attempt: everything but the readings, once
                await self._apply_batch(tx, news, batch, tenant_id=tenant_id,
                                        gateway_id=gateway_id, now_us=now_us)  # fmt: skip
                dropped = await record_drops(tx, tenant_id, gateway_id, batch)
                await charge(tx, tenant_id, stored=readings, dropped=dropped,
                             body_bytes=body_bytes, quota=policy.quota, now_us=now_us)  # fmt: skip
        stored = 0  # a batch of alarms and events alone does not wait on a worker
        if readings:
            rows = BatchRows.build(batch, ids)
            stored = await self.db.write_batch_rows(tenant_id, gateway_id, seq, rows)
        async with self.live(tenant_id) as (tx, news):
            done = await tx.fetchone(
                "UPDATE ingest_batch SET stored = %s WHERE tenant_id = %s AND gateway_id = %s"
                " AND seq = %s AND stored IS NULL RETURNING received_at",
                [stored, tenant_id, gateway_id, seq],
            )
            if done is None:  # a concurrent attempt finished it first
                return await self._duplicate(tx, tenant_id, gateway_id, seq, digest)
            await refund(tx, tenant_id, readings=readings - stored, charged_us=int(done[0]))
            if batch.series:
                news.add(StoredBatch(gateway_id, posted.body, posted.content_type,
                                     posted.content_encoding, batch))  # fmt: skip
        return IngestResult(
            duplicate=False, seq=seq, readings=readings, stored=stored, received_at=int(done[0])
        )

    async def _apply_batch(
        self, tx: Tx, news: News, batch: Batch, *, tenant_id: int, gateway_id: int, now_us: int
    ) -> None:
        """A split ingest's first attempt: alarms, events and the gateway's last batch."""
        changed = await write_alarms(tx, tenant_id, gateway_id, batch.alarms, now_us)
        await _apply_events(tx, tenant_id, gateway_id, batch, news=news, now_us=now_us,
                            health=self.health, rollouts=RolloutStore(self.db))  # fmt: skip
        if changed:
            simulated = {s.device for s in batch.series if s.simulated}
            for transition in changed:
                transition["simulated"] = transition["device"] in simulated
            news.add(AlarmChanges(gateway_id, changed))
        await tx.execute(_GATEWAY_SEEN, [now_us, batch.seq, batch.seq, tenant_id, gateway_id])

    async def _series_ids(
        self, tx: Tx, tenant_id: int, gateway_id: int, batch: Batch, *, policy: IngestPolicy,
        now_us: int,
    ) -> list[int]:  # fmt: skip
        """The id of each series entry, creating new series within the tenant's limits. A series
        split over several entries (one per chunk of a format-2 batch) is looked up once."""
        keys = [(s.device, s.tag, s.unit) for s in batch.series]
        simulated: dict[tuple[str, str, str | None], bool] = {}
        for key, s in zip(keys, batch.series, strict=True):
            simulated[key] = simulated.get(key, False) or s.simulated
        unique = list(simulated)
        if not unique:
            return []
        created = 0
        new_devices: list[str] = []

        async def admit(count: int) -> None:
            nonlocal created, new_devices
            check_new_series(policy, count)
            created = count
            if count:  # the devices not known yet (a new series of a known one places nothing)
                names = sorted({k[0] for k in unique})
                known = await tx.fetch(
                    "SELECT name FROM devices WHERE tenant_id = %s AND gateway_id = %s"
                    f" AND name IN ({', '.join(['%s'] * len(names))})",
                    [tenant_id, gateway_id, *names],
                )
                new_devices = sorted(set(names) - {str(r[0]) for r in known})

        found = await self.db.resolve_series(
            tx, tenant_id, gateway_id, [(*k, simulated[k]) for k in unique], before_create=admit
        )
        if created:
            await check_holdings(tx, tenant_id, policy)
            # devices new in this batch: placed by the paths their gateway reported
            await place_reported(tx, tenant_id, gateway_id, now_us=now_us,
                                 devices=new_devices)  # fmt: skip
        ids = dict(zip(unique, found, strict=True))
        return [ids[key] for key in keys]

    async def _duplicate(
        self, tx: Tx, tenant_id: int, gateway_id: int, seq: int, digest: bytes
    ) -> IngestResult:
        answer = await self._logged(tx, tenant_id, gateway_id, seq, digest)
        return answer or IngestResult(duplicate=True, seq=seq, readings=0, stored=0, received_at=0)

    async def _logged(
        self, tx: Tx, tenant_id: int, gateway_id: int, seq: int, digest: bytes
    ) -> IngestResult | None:
        """The answer to a replay of a logged batch; None while its readings are still to be
        written (a split ingest's attempt that stopped after its first transaction)."""
        row = await tx.fetchone(
            "SELECT readings, stored, received_at, digest FROM ingest_batch"
            " WHERE tenant_id = %s AND gateway_id = %s AND seq = %s",
            [tenant_id, gateway_id, seq],
        )
        readings, stored, received, known = row if row else (0, 0, 0, None)
        if known is not None and bytes(known) != digest:
            raise SeqConflict(
                f"seq {seq} of this gateway was stored with other content; a gateway never"
                " reuses a seq, so this is a bug on the gateway (quarantine the batch)",
                details={"seq": seq},
            )
        if stored is None and self.db.splits_ingest:
            return None
        if stored is None:  # begun through a worker by another replica, not finished
            raise IngestUnfinished(
                f"batch seq {seq} was begun by a replica that writes readings through a Citus"
                " worker and is not finished; only such a replica can finish it: retry",
                details={"seq": seq},
            )
        return IngestResult(
            duplicate=True, seq=seq, readings=readings, stored=stored or 0, received_at=received
        )

    # ----------------------------------------------------------------------------- queries

    async def _series_simulated(self, tx: Tx, tenant_id: int, series_id: int) -> bool:
        row = await tx.fetchone(
            "SELECT simulated FROM series WHERE tenant_id = %s AND id = %s", [tenant_id, series_id]
        )
        if row is None:
            raise NotFound("series not found")
        return bool(row[0])

    async def series_simulated(self, tenant_id: int, series_id: int) -> bool:
        """Whether the series is simulated (`NotFound` if the tenant has no such series)."""
        async with self.db.transaction(tenant_id) as tx:
            return await self._series_simulated(tx, tenant_id, series_id)

    async def latest(self, tenant_id: int, device_id: int) -> list[LatestValue]:
        """The newest reading of each series of a device."""
        async with self.db.transaction(tenant_id) as tx:
            found = await tx.fetchone(
                "SELECT a.path FROM devices d LEFT JOIN assets a ON a.id = d.asset_id"
                " AND a.tenant_id = d.tenant_id WHERE d.tenant_id = %s AND d.id = %s",
                [tenant_id, device_id],
            )
            if found is None:
                raise NotFound("device not found")
            rows = await self.db.latest_rows(tx, tenant_id, device_id)
            if rows is None:
                rows = await tx.fetch(
                    "SELECT s.id, s.tag, s.unit, t.ts, t.value_num, t.value_text, t.quality,"
                    " t.value_int FROM series s"
                    " JOIN telemetry t ON t.series_id = s.id AND t.tenant_id = %s"
                    " WHERE s.tenant_id = %s AND s.device_id = %s AND t.ts = (SELECT max(x.ts)"
                    " FROM telemetry x WHERE x.tenant_id = %s AND x.series_id = s.id)"
                    " ORDER BY s.tag",
                    [tenant_id, tenant_id, device_id, tenant_id],
                )
            flags = await tx.fetch(
                "SELECT id FROM series WHERE tenant_id = %s AND device_id = %s AND simulated",
                [tenant_id, device_id],
            )
        simulated = {int(f[0]) for f in flags}
        return [
            LatestValue(
                series_id=r[0],
                tag=r[1],
                unit=r[2],
                ts=r[3],
                value=_value(r[4], r[5], r[7]),
                quality=r[6],
                simulated=int(r[0]) in simulated,
                asset_path=found[0],
            )
            for r in rows
        ]

    async def raw(
        self, tenant_id: int, series_id: int, *, start: int, end: int, after: int | None, limit: int
    ) -> tuple[list[Point], int | None]:
        """Readings in [start, end) in time order, after the cursor; (page, next cursor)."""
        lower = start if after is None else max(start, after + 1)
        async with self.db.transaction(tenant_id) as tx:
            await self._series_simulated(tx, tenant_id, series_id)
            rows = await tx.fetch(
                "SELECT ts, value_num, value_text, quality, value_int FROM telemetry"
                " WHERE tenant_id = %s AND series_id = %s AND ts >= %s AND ts < %s"
                " ORDER BY ts LIMIT %s",
                [tenant_id, series_id, lower, end, limit + 1],
            )
        points = [Point(ts=r[0], value=_value(r[1], r[2], r[4]), quality=r[3])
                  for r in rows[:limit]]  # fmt: skip
        return points, (points[-1].ts if len(rows) > limit else None)

    async def aggregate(
        self, tenant_id: int, series_id: int, *, start: int, end: int, bucket_us: int
    ) -> list[Bucket]:
        """min/max/avg/last/count per time bucket in [start, end)."""
        async with self.db.transaction(tenant_id) as tx:
            await self._series_simulated(tx, tenant_id, series_id)
            return await series_buckets(
                self.db, tx, tenant_id, series_id, start=start, end=end, bucket_us=bucket_us
            )

    @staticmethod
    async def aggregate_raw(
        tx: Tx, tenant_id: int, series_id: int, *, start: int, end: int, bucket_us: int
    ) -> list[Row]:
        return await tx.fetch(
            "WITH b AS (SELECT (ts / %s) * %s AS bucket, ts, value_num FROM telemetry"
            " WHERE tenant_id = %s AND series_id = %s AND ts >= %s AND ts < %s),"
            " agg AS (SELECT bucket, min(value_num) AS lo, max(value_num) AS hi,"
            " avg(value_num) AS mean, count(*) AS n, max(ts) AS last_ts FROM b GROUP BY bucket)"
            " SELECT a.bucket, a.lo, a.hi, a.mean, t.value_num, t.value_text, a.n FROM agg a"
            " JOIN telemetry t ON t.tenant_id = %s AND t.series_id = %s AND t.ts = a.last_ts"
            " ORDER BY a.bucket",
            [bucket_us, bucket_us, tenant_id, series_id, start, end, tenant_id, series_id],
        )


def _bucket(r: Row) -> Bucket:
    return Bucket(
        start=int(r[0]),
        min=r[1],
        max=r[2],
        avg=None if r[3] is None else float(r[3]),
        last=r[5] if r[5] is not None else r[4],
        count=int(r[6]),
    )
