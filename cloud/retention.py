"""Telemetry retention: a pass that removes readings older than `retention_days`, run by every
replica at start-up and then every `retention_interval_s`.

The storage backend does the removing (`Database.drop_telemetry`): native PostgreSQL drops whole
daily partitions through a SECURITY DEFINER function under an advisory lock, so two replicas
running the pass at once drop each partition once and the other finds it gone; TimescaleDB drops
whole daily chunks the same way (`drop_chunks`, and the same days of the continuous aggregate),
and its own retention policies are kept at the same number of days; SQLite deletes in short
batches.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from cloud.metrics import CloudMetrics
from cloud.storage.base import Database
from cloud.storage.records import RetentionResult

log = logging.getLogger("tagway.cloud.retention")


def now_us() -> int:
    """The current time in int microseconds since the epoch, UTC."""
    return time.time_ns() // 1_000


def describe(result: RetentionResult) -> str:
    """One line saying what a pass removed (or would remove)."""
    cutoff = dt.datetime.fromtimestamp(result.cutoff / 1e6, tz=dt.UTC).isoformat(timespec="seconds")
    verb = "would drop" if result.dry_run else "dropped"
    if result.method == "partitions":
        names = ", ".join(result.partitions) or "none"
        return f"{verb} {len(result.partitions)} partitions older than {cutoff}: {names}"
    if result.method == "chunks":
        days = ", ".join(_day(d) for d in result.days) or "none"
        return f"{verb} {len(result.partitions)} daily chunks older than {cutoff}: {days}"
    verb = "would delete" if result.dry_run else "deleted"
    return f"{verb} {result.rows_deleted} readings older than {cutoff}"


def _day(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86_400, tz=dt.UTC).date().isoformat()


async def retention_pass(
    db: Database, metrics: CloudMetrics, *, keep_days: int, compress_after_days: int = 0
) -> None:
    """One pass: remove what is too old, log it (INFO when something went), count it; then,
    on Citus, convert the days older than `compress_after_days` to columnar storage."""
    result = await db.drop_telemetry(keep_days=keep_days, now_us=now_us())
    metrics.retention_runs.labels("ok").inc()
    metrics.retention_last_run.set(time.time())
    metrics.retention_cutoff.set(result.cutoff / 1e6)
    metrics.retention_partitions.inc(len(result.partitions))
    metrics.retention_rows.inc(result.rows_deleted)
    level = logging.INFO if result.partitions or result.rows_deleted else logging.DEBUG
    log.log(level, "retention: %s", describe(result))
    if compress_after_days:
        converted = await db.compress_telemetry(after_days=compress_after_days)
        if converted:
            log.info("columnar: converted %s", ", ".join(converted))


async def run_retention(
    db: Database,
    metrics: CloudMetrics,
    *,
    keep_days: int,
    interval_s: float,
    compress_after_days: int = 0,
) -> None:
    """Run a pass now and then every `interval_s` until cancelled; a failed pass waits for the
    next one (it is logged and counted, never fatal: the data is only kept a little longer)."""
    while True:
        try:
            await retention_pass(
                db, metrics, keep_days=keep_days, compress_after_days=compress_after_days
            )
        except Exception:  # the supervisor of this loop: log and count, then try next time
            metrics.retention_runs.labels("error").inc()
            log.exception("retention pass failed; retrying in %.0f s", interval_s)
        await asyncio.sleep(interval_s)
