"""Outbox figures: per-lane totals, and `read_stats()` for other processes (the CLI).

`read_stats()` opens the file without creating it and with ``query_only``, reads one
consistent WAL snapshot and closes: it never blocks the agent's appends and never writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from ._sqlite import (
    as_float,
    as_int,
    file_bytes,
    open_reader,
    rollback_quietly,
    scalar_int,
    translate,
)
from .errors import OutboxMissing, StorageError
from .model import ConsumerStats, Lane, LaneStats, OutboxStats, RecoveryEvent
from .schema import LANE_SHIFT, SCHEMA_VERSION, NotAnOutbox, check_version

LANES = tuple(Lane)


def _zeros() -> list[int]:
    return [0] * len(LANES)


@dataclass(slots=True)
class LaneTotals:
    """Chunks, readings and payload bytes per lane rank, waiting and quarantined."""

    chunks: list[int] = field(default_factory=_zeros)
    readings: list[int] = field(default_factory=_zeros)
    bytes: list[int] = field(default_factory=_zeros)
    q_chunks: list[int] = field(default_factory=_zeros)
    q_readings: list[int] = field(default_factory=_zeros)
    q_bytes: list[int] = field(default_factory=_zeros)

    used: int = 0
    """Payload bytes counted against the quota: waiting and quarantined."""

    def add(self, rank: int, chunks: int, readings: int, nbytes: int) -> None:
        """Account for chunks entering (positive) or leaving (negative) the waiting lanes."""
        self.chunks[rank] += chunks
        self.readings[rank] += readings
        self.bytes[rank] += nbytes
        self.used += nbytes

    def add_quarantine(self, rank: int, chunks: int, readings: int, nbytes: int) -> None:
        """Account for chunks entering or leaving the quarantine."""
        self.q_chunks[rank] += chunks
        self.q_readings[rank] += readings
        self.q_bytes[rank] += nbytes
        self.used += nbytes


def load_totals(conn: apsw.Connection) -> LaneTotals:
    """Count the chunks and quarantine by lane: a scan of the row headers, O(chunks)."""
    totals = LaneTotals()
    for table, add in (("chunk", totals.add), ("quarantine", totals.add_quarantine)):
        query = (
            f"SELECT id >> {LANE_SHIFT}, count(*), sum(count), sum(size) "  # noqa: S608 - table names are literals above
            f"FROM {table} GROUP BY id >> {LANE_SHIFT}"
        )
        for rank, chunks, readings, nbytes in conn.execute(query):
            add(as_int(rank), as_int(chunks), as_int(readings), as_int(nbytes))
    return totals


def collect(
    conn: apsw.Connection, path: Path, totals: LaneTotals, now: float, version: int
) -> OutboxStats:
    """Assemble the figures inside the caller's read transaction."""
    dropped = {
        as_int(lane): (as_int(chunks), as_int(readings))
        for lane, chunks, readings in conn.execute(
            "SELECT lane, dropped_chunks, dropped_readings FROM lane_counter"
        )
    }
    leased = _zeros()
    for rank, n in conn.execute(
        "SELECT id >> ?, count(*) FROM chunk WHERE id IN (SELECT j.value FROM lease, "
        "json_each(lease.chunk_ids) AS j WHERE lease.deadline > ?) GROUP BY 1",
        (LANE_SHIFT, now),
    ):
        leased[as_int(rank)] = as_int(n)
    lanes = {
        lane: LaneStats(
            chunks=totals.chunks[rank],
            readings=totals.readings[rank],
            bytes=totals.bytes[rank],
            oldest_age_s=_oldest_age(conn, rank, now),
            leased_chunks=leased[rank],
            dropped_chunks=dropped.get(rank, (0, 0))[0],
            dropped_readings=dropped.get(rank, (0, 0))[1],
            quarantined_chunks=totals.q_chunks[rank],
            quarantined_readings=totals.q_readings[rank],
            quarantined_bytes=totals.q_bytes[rank],
        )
        for rank, lane in enumerate(LANES)
    }
    quota = scalar_int(conn, "SELECT value FROM meta WHERE key = 'quota_bytes'")
    recoveries = tuple(
        RecoveryEvent(at=as_float(at), moved_to=Path(str(moved_to)), reason=str(reason))
        for at, moved_to, reason in conn.execute(
            "SELECT at, moved_to, reason FROM recovery ORDER BY id"
        )
    )
    return OutboxStats(
        lanes=lanes,
        leased_chunks=sum(leased),
        used_bytes=totals.used,
        quota_bytes=int(quota),
        file_bytes=file_bytes(path),
        schema_version=version,
        recoveries=recoveries,
        consumers=_consumers(conn, now),
        life=_life(conn),
        refused={
            str(reason): as_int(readings)
            for reason, readings in conn.execute(
                "SELECT reason, readings FROM refused_counter ORDER BY reason"
            )
        },
    )


def _consumers(conn: apsw.Connection, now: float) -> dict[str, ConsumerStats]:
    """Per consumer: pending chunks and readings (a walk of the pending index joined to the
    chunk headers, O(pending rows)), live leases, and the drops counted against it."""
    names = {as_int(i): str(name) for i, name in conn.execute("SELECT id, name FROM consumer")}
    pending = {
        as_int(i): (as_int(n), as_int(readings))
        for i, n, readings in conn.execute(
            "SELECT p.consumer, count(*), sum(c.count) FROM pending p "
            "JOIN chunk c ON c.id = p.chunk_id GROUP BY p.consumer"
        )
    }
    leased = {
        as_int(i): as_int(n)
        for i, n in conn.execute(
            "SELECT lease.consumer, count(*) FROM lease, json_each(lease.chunk_ids) "
            "WHERE lease.deadline > ? GROUP BY lease.consumer",
            (now,),
        )
    }
    dropped: dict[int, dict[Lane, int]] = {i: dict.fromkeys(LANES, 0) for i in names}
    for i, rank, readings in conn.execute(
        "SELECT consumer, lane, dropped_readings FROM consumer_counter"
    ):
        if as_int(i) in dropped:
            dropped[as_int(i)][LANES[as_int(rank)]] = as_int(readings)
    return {
        name: ConsumerStats(
            pending_chunks=pending.get(i, (0, 0))[0],
            pending_readings=pending.get(i, (0, 0))[1],
            leased_chunks=leased.get(i, 0),
            dropped_readings=dropped[i],
        )
        for i, name in sorted(names.items())
    }


def _life(conn: apsw.Connection) -> str:
    """When the file's schema was first created: a new file (a damaged one moved aside) is a new
    life, and its drop counters start again from zero."""
    rows = conn.execute("SELECT applied_at FROM schema_migration WHERE version = 1").fetchall()
    return f"{as_float(rows[0][0]):.6f}" if rows else ""


def _oldest_age(conn: apsw.Connection, rank: int, now: float) -> float | None:
    rows = conn.execute(
        "SELECT created FROM chunk WHERE id >= ? AND id < ? ORDER BY id LIMIT 1",
        (rank << LANE_SHIFT, (rank + 1) << LANE_SHIFT),
    ).fetchall()
    return max(0.0, now - as_float(rows[0][0])) if rows else None


def _require_current(conn: apsw.Connection, path: Path) -> int:
    version = check_version(conn, path)
    if version != SCHEMA_VERSION:
        raise OutboxMissing(f"{path} holds no initialised outbox (schema version {version})")
    return version


def read_stats(
    path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout_s: float = 5.0
) -> OutboxStats:
    """The figures of the outbox at `path`, read from any process without disturbing its owner.

    Raises:
        OutboxMissing: no outbox file at `path`.
        SchemaTooNew: the file was written by a newer tagway.
        OutboxError: any other failure, translated from SQLite.
    """
    path = Path(path)
    conn = open_reader(path, busy_timeout_s=busy_timeout_s, purpose="stats")
    try:
        conn.execute("BEGIN")
        version = _require_current(conn, path)
        result = collect(conn, path, load_totals(conn), clock(), version)
        conn.execute("COMMIT")
    except apsw.Error as exc:
        rollback_quietly(conn)
        raise translate(exc, f"stats of {path}") from exc
    except NotAnOutbox as exc:
        rollback_quietly(conn)
        raise StorageError(f"{path} is not an outbox: {exc}") from exc
    except BaseException:
        rollback_quietly(conn)
        raise
    finally:
        conn.close()
    return result


def read_schema_version(path: str | Path) -> int:
    """The schema version recorded in the outbox file at `path`, without checking, migrating
    or changing anything (for installers deciding whether a downgrade is safe). Compare it
    with `SCHEMA_VERSION`, the newest this code knows.

    Raises:
        OutboxMissing: no file at `path`.
        OutboxError: the file cannot be read as SQLite (translated from apsw).
    """
    path = Path(path)
    conn = open_reader(path, busy_timeout_s=5.0, purpose="its schema version")
    try:
        return scalar_int(conn, "PRAGMA user_version")
    except apsw.Error as exc:
        raise translate(exc, f"reading the schema version of {path}") from exc
    finally:
        conn.close()
