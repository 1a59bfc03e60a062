"""The durable outbox: append chunks, lease them to the uplink, ack or release them.

Every call is one SQLite transaction taken with ``BEGIN IMMEDIATE``: it either commits whole
or leaves the file as it was (kill -9, a full disk, a quota refusal). `append` and
`append_many` return only after their commit, at the configured `synchronous` level. Leases
and releases commit at ``synchronous=NORMAL`` even under FULL: losing one to a power cut only
means the chunks are handed out again, which a lease timeout does anyway, and it spares the
uplink a disk sync per batch.

A chunk's id orders it: ``lane rank << 60 | sequence`` (see `schema`), so the queue is the
table's primary key. A lease is one row holding its chunk ids; an ack deletes the lease's
chunks that are still there, even after the lease expired (the cloud has them either way).

The owner keeps per-lane totals in memory, so the quota check costs nothing. When another
connection commits to the file (SQLite's data version for it moves), they are recounted
inside the write transaction before they are used.

One `Outbox` belongs to one thread at a time; the agent uses `AsyncOutbox`, which gives it a
thread of its own.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import cast

import apsw

from ._sqlite import as_float, as_int, rollback_quietly, scalar_int, translate
from .consumers import json_ids, register, settle
from .errors import InvalidChunk, OutboxClosed, OutboxFull
from .model import (
    Chunk,
    ChunkId,
    Lane,
    Lease,
    OutboxSettings,
    OutboxStats,
    QuarantinedChunk,
    QuotaPolicy,
    RecoveryEvent,
    RefusedReadings,
    Synchronous,
)
from .quota import Dropped, drop_oldest, record_deleted
from .recovery import open_connection
from .refused import read as read_refused
from .refused import record as record_refused
from .schema import LANE_SHIFT, SCHEMA_VERSION, SEQ_MASK
from .stats import LANES, LaneTotals, collect, load_totals

_INSERT = "INSERT INTO chunk(id, count, size, created, payload) VALUES (?, ?, ?, ?, ?)"
# A consumer's queue is its range of the pending index (see `consumers`). One row per lease,
# its chunk ids a JSON array: leasing writes one small row, not one per chunk (measured: a row
# per chunk cost ~8 us per chunk to write and delete, this ~1 us).
_MINE_LEASED = (
    "SELECT j.value FROM lease, json_each(lease.chunk_ids) AS j "
    "WHERE lease.deadline > ?2 AND lease.consumer = ?1"
)
_FREE = (
    "SELECT c.id, c.count, c.created, c.payload FROM pending p JOIN chunk c ON c.id = p.chunk_id "  # noqa: S608 - literals only
    f"WHERE p.consumer = ?1 AND p.chunk_id NOT IN ({_MINE_LEASED}) ORDER BY p.chunk_id LIMIT ?3"
)
# Newest first, for live telemetry while a backlog drains: alarms and events (ids below the
# telemetry lane) still go oldest first; then telemetry from the newest, using the index
# backwards rather than sorting the backlog.
_FREE_PRIORITY = (
    "SELECT c.id, c.count, c.created, c.payload FROM pending p JOIN chunk c ON c.id = p.chunk_id "  # noqa: S608 - literals only
    f"WHERE p.consumer = ?1 AND p.chunk_id < ?4 AND p.chunk_id NOT IN ({_MINE_LEASED}) "
    "ORDER BY p.chunk_id LIMIT ?3"
)
_FREE_NEWEST_TELEMETRY = (
    "SELECT c.id, c.count, c.created, c.payload FROM pending p JOIN chunk c ON c.id = p.chunk_id "  # noqa: S608 - literals only
    f"WHERE p.consumer = ?1 AND p.chunk_id >= ?4 AND p.chunk_id NOT IN ({_MINE_LEASED}) "
    "ORDER BY p.chunk_id DESC LIMIT ?3"
)

_ChunkRow = tuple[int, int, float, bytes]
_RANKS = {lane: lane.rank for lane in Lane}

DEFAULT_LEASE_BYTES = 1024 * 1024
DEFAULT_LEASE_CHUNKS = 1000


class Outbox:
    """A crash-safe queue of encoded chunks in one SQLite file.

    Args:
        path: the database file; created with its schema if missing, moved aside and replaced
            if damaged (see `recovery`).
        settings: quota, policy, durability and lease timeout.
        clock: wall-clock seconds for chunk ages and lease deadlines. Leases are shared with
            other processes through the file, so this is ``time.time``, not a monotonic
            clock; tests inject their own to expire leases without sleeping.

    Raises:
        SchemaTooNew: the file was written by a newer tagway (it is left untouched).
        OutboxError: the file could not be opened or recovered.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: OutboxSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = Path(path)
        self._settings = settings if settings is not None else OutboxSettings()
        self._clock = clock
        self._quota = self._settings.quota_bytes
        self._totals = LaneTotals()
        self._next_seq = 1
        self._data_version: int | None = None
        self.reloads = 0
        """How often the totals were recounted because another process wrote (for tests)."""
        try:
            conn, self._recovery = open_connection(self._path, self._settings, clock)
        except apsw.Error as exc:
            raise translate(exc, f"open of {self._path}") from exc
        self._conn: apsw.Connection | None = conn
        try:
            with self._transaction("open") as tx:
                tx.execute(
                    "UPDATE meta SET value = ? WHERE key = 'quota_bytes'",
                    (self._settings.quota_bytes,),
                )
                self._consumers, retired = register(tx, self._settings.consumers, clock())
                if retired:
                    self._totals = load_totals(tx)
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def settings(self) -> OutboxSettings:
        """The settings this outbox was opened with."""
        return self._settings

    @property
    def recovery(self) -> RecoveryEvent | None:
        """Set when opening found a damaged file and moved it aside."""
        return self._recovery

    @property
    def consumers(self) -> tuple[str, ...]:
        """The consumers reading this outbox, the default one first."""
        return tuple(self._consumers.ids)

    def append(self, payload: bytes, *, count: int, lane: Lane) -> ChunkId:
        """Store one chunk of `count` readings; returns after the commit.

        Raises:
            OutboxFull: no room under the quota and the policy cannot make any.
            DiskFull: the disk is full; nothing was stored.
            InvalidChunk: an empty payload, a negative count or an unknown lane.
        """
        # The hot path of the agent, measured against raw SQLite by the benchmark: it spells
        # the transaction out instead of using _transaction() and append_many's lists.
        if type(payload) is not bytes or type(count) is not int or count < 0 or not payload:
            payload, count, _ = _validated(payload, count, lane)
        rank = _RANKS.get(lane)
        if rank is None:
            raise InvalidChunk(f"lane must be a Lane, not {lane!r}")
        size = len(payload)
        conn = self._conn
        if conn is None:
            raise OutboxClosed(f"outbox {self._path} is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
            if conn.data_version() != self._data_version:
                self._refresh(conn)
            dropped = self._make_room(conn, size) if self._totals.used + size > self._quota else []
            seq = self._next_seq
            chunk_id = (rank << LANE_SHIFT) | seq
            conn.execute(_INSERT, (chunk_id, count, size, self._clock(), payload))
            conn.execute(self._consumers.insert_pending, (chunk_id,))
            conn.execute("COMMIT")
            self._data_version = conn.data_version()
        except apsw.Error as exc:
            rollback_quietly(conn)
            raise translate(exc, "append") from exc
        except BaseException:
            rollback_quietly(conn)
            raise
        self._next_seq = seq + 1
        self._forget(dropped)
        self._totals.add(rank, 1, count, size)
        return ChunkId(chunk_id)

    def append_many(self, chunks: Iterable[tuple[bytes, int, Lane]]) -> list[ChunkId]:
        """Store several ``(payload, count, lane)`` chunks in one transaction: all or none.

        Raises the same errors as `append`.
        """
        items = [_validated(payload, count, lane) for payload, count, lane in chunks]
        if not items:
            return []
        needed = sum(len(payload) for payload, _, _ in items)
        with self._transaction("append") as tx:
            dropped = self._make_room(tx, needed)
            now = self._clock()
            seq = self._next_seq
            rows = [
                ((rank << LANE_SHIFT) | (seq + i), count, len(payload), now, payload)
                for i, (payload, count, rank) in enumerate(items)
            ]
            if len(rows) == 1:
                tx.execute(_INSERT, rows[0])
            else:
                tx.executemany(_INSERT, rows)
            tx.executemany(self._consumers.insert_pending, [(row[0],) for row in rows])
        self._next_seq = seq + len(rows)
        self._forget(dropped)
        for chunk_id, count, size, _, _ in rows:
            self._totals.add(chunk_id >> LANE_SHIFT, 1, count, size)
        return [ChunkId(row[0]) for row in rows]

    def lease(
        self,
        *,
        max_bytes: int = DEFAULT_LEASE_BYTES,
        max_chunks: int = DEFAULT_LEASE_CHUNKS,
        newest_first: bool = False,
        consumer: str | None = None,
    ) -> Lease:
        """Hand out the oldest chunks `consumer` (default: the first) has neither acked nor
        holds in a live lease: alarms first, then events, then telemetry,
        first-in first-out inside a lane, up to `max_chunks` and `max_bytes` of payload (the
        first chunk is always included, so an oversized chunk cannot block its lane).

        With `newest_first`, telemetry is handed out newest first (alarms and events still
        come first, oldest first): an uplink that alternates the two drains a backlog without
        starving live data.

        The lease is empty (falsy) when there is nothing to send. Chunks not acked or released
        within the lease timeout are handed out again. Other consumers' leases do not matter:
        each consumer moves at its own pace.
        """
        consumer_id = self._consumers.id_of(consumer)
        name = self._consumers.default if consumer is None else consumer
        if max_bytes < 1 or max_chunks < 1:
            raise InvalidChunk(f"lease limits must be >= 1 (got {max_bytes=}, {max_chunks=})")
        chunks: list[Chunk] = []
        with self._transaction("lease", soft=True) as tx:
            now = self._clock()
            total = 0
            for query, params in _lease_queries(consumer_id, now, max_chunks, newest_first):
                cursor = tx.execute(query, params)
                # The schema's NOT NULL INTEGER/REAL/BLOB columns fix the types: no checks.
                for chunk_id, count, created, payload in cast(Iterator[_ChunkRow], cursor):
                    if len(chunks) >= max_chunks or (chunks and total + len(payload) > max_bytes):
                        break
                    total += len(payload)
                    chunks.append(Chunk(ChunkId(chunk_id), LANES[chunk_id >> LANE_SHIFT], count,
                                        payload, created))  # fmt: skip
                cursor.close()
            # Expired leases are forgotten here: their chunks were free again anyway.
            tx.execute("DELETE FROM lease WHERE deadline <= ?", (now,))
            if not chunks:
                return Lease(0, (), now, name)
            lease_id = secrets.randbits(62) + 1
            deadline = now + self._settings.lease_timeout_s
            tx.execute(
                "INSERT INTO lease(lease_id, deadline, chunk_ids, consumer) VALUES (?, ?, ?, ?)",
                (lease_id, deadline, json_ids(chunk.id for chunk in chunks), consumer_id),
            )
        return Lease(lease_id, tuple(chunks), deadline, name)

    def forget_leases(self) -> int:
        """Forget every lease at once; returns how many there were.

        For the one process that owns the outbox, at start: leases left by its previous life
        (killed mid-upload) would otherwise hold their chunks until the lease timeout.
        """
        with self._transaction("forget leases") as tx:
            count = scalar_int(tx, "SELECT count(*) FROM lease")
            tx.execute("DELETE FROM lease")
        return count

    def ack(self, lease: Lease) -> int:
        """The lease's consumer has delivered its chunks: they leave its queue, and the store
        once no other consumer needs them. Returns how many chunks the store deleted.

        An ack counts even after the lease expired, and even if its chunks were handed to
        another lease since (the cloud has them either way: deleting them spares a duplicate
        upload). Acking the same lease twice changes nothing the second time.
        """
        if not lease:
            return 0
        with self._transaction("ack") as tx:
            gone = self._delete_leased(tx, lease)
        for chunk_id, count, size in gone:
            self._totals.add(chunk_id >> LANE_SHIFT, -1, -count, -size)
        return len(gone)

    def renew(self, lease: Lease) -> bool:
        """Extend the lease to the lease timeout from now: its consumer is still sending the
        chunks (a retry that outlasts the timeout must not let the quota policy drop chunks that
        are about to arrive, nor hand them out again). False if the lease was forgotten."""
        if not lease:
            return False
        with self._transaction("renew", soft=True) as tx:
            tx.execute(
                "UPDATE lease SET deadline = ? WHERE lease_id = ?",
                (self._clock() + self._settings.lease_timeout_s, lease.lease_id),
            )
            return bool(tx.changes())

    def release(self, lease: Lease) -> int:
        """Give the lease's chunks back at once (the upload failed). Returns how many chunks
        it gave back: 0 if the lease had expired and been forgotten already."""
        if not lease:
            return 0
        with self._transaction("release", soft=True) as tx:
            tx.execute("DELETE FROM lease WHERE lease_id = ?", (lease.lease_id,))
            if not tx.changes():
                return 0
            return scalar_int(
                tx,
                "SELECT count(*) FROM chunk WHERE id IN (SELECT value FROM json_each(?))",
                (json_ids(lease.chunk_ids),),
            )

    def quarantine(self, lease: Lease, reason: str) -> int:
        """Set the lease's chunks aside for its consumer with `reason` (the cloud refused them
        as invalid or too large); returns how many. They leave that consumer's queue (other
        consumers still get them) and stay counted against the quota until
        `requeue_quarantine()` puts them back."""
        if not lease:
            return 0
        consumer_id = self._consumers.id_of(lease.consumer)
        ids = json_ids(lease.chunk_ids)
        with self._transaction("quarantine") as tx:
            tx.execute(
                "INSERT OR IGNORE INTO quarantine(id, count, size, created, quarantined_at, "
                "reason, payload, consumer) SELECT id, count, size, created, ?1, ?2, payload, ?4 "
                "FROM chunk WHERE id IN (SELECT value FROM json_each(?3)) AND id IN ("
                "SELECT chunk_id FROM pending WHERE consumer = ?4)",
                (self._clock(), reason, ids, consumer_id),
            )
            moved = tx.changes()
            self._delete_leased(tx, lease)
            self._totals = load_totals(tx)
        return moved

    def requeue_quarantine(self) -> int:
        """Put every quarantined chunk back in its consumer's queue, at its original place;
        returns how many."""
        with self._transaction("requeue of the quarantine") as tx:
            tx.execute(
                "INSERT OR IGNORE INTO chunk(id, count, size, created, payload) "
                "SELECT id, count, size, created, payload FROM quarantine"
            )
            tx.execute(
                "INSERT OR IGNORE INTO pending(consumer, chunk_id) SELECT consumer, id "
                "FROM quarantine"
            )
            moved = scalar_int(tx, "SELECT count(*) FROM quarantine")
            tx.execute("DELETE FROM quarantine")
            self._totals = load_totals(tx)
        return moved

    def quarantined(self) -> list[QuarantinedChunk]:
        """The quarantined chunks, oldest first by lane, with their reasons."""
        conn = self._require_open()
        try:
            rows = conn.execute(
                "SELECT id, count, size, reason, quarantined_at FROM quarantine ORDER BY id"
            ).fetchall()
        except apsw.Error as exc:
            raise translate(exc, "listing of the quarantine") from exc
        return [
            QuarantinedChunk(
                id=ChunkId(as_int(i)),
                lane=LANES[as_int(i) >> LANE_SHIFT],
                count=as_int(count),
                nbytes=as_int(size),
                reason=str(reason),
                quarantined_at=as_float(at),
            )
            for i, count, size, reason, at in rows
        ]

    def record_refused(self, refused: Sequence[RefusedReadings]) -> None:
        """Keep what the receiver refused one by one out of chunks it otherwise stored (see
        `store_forward.refused`); the chunks themselves are acknowledged as usual."""
        if not refused:
            return
        with self._transaction("record of refused readings") as tx:
            record_refused(tx, refused, self._clock())

    def refused(self) -> list[RefusedReadings]:
        """The most recent refused readings (at most `refused.KEPT` entries), oldest first."""
        conn = self._require_open()
        try:
            return read_refused(conn)
        except apsw.Error as exc:
            raise translate(exc, "listing of refused readings") from exc

    def stats(self) -> OutboxStats:
        """A consistent snapshot of the figures (see `read_stats()` for other processes)."""
        conn = self._require_open()
        try:
            conn.execute("BEGIN")
            scalar_int(conn, "SELECT count(*) FROM lane_counter")  # opens the read snapshot
            self._refresh(conn)
            result = collect(conn, self._path, self._totals, self._clock(), SCHEMA_VERSION)
            conn.execute("COMMIT")
        except apsw.Error as exc:
            rollback_quietly(conn)
            raise translate(exc, "stats") from exc
        except BaseException:
            rollback_quietly(conn)
            raise
        return result

    def close(self) -> None:
        """Close the file. Idempotent; the outbox cannot be used afterwards."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except apsw.Error as exc:
                raise translate(exc, "close") from exc

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _require_open(self) -> apsw.Connection:
        if self._conn is None:
            raise OutboxClosed(f"outbox {self._path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self, operation: str, *, soft: bool = False) -> Iterator[apsw.Connection]:
        """One write transaction; `soft` commits it without a disk sync (leases)."""
        conn = self._require_open()
        relax = soft and self._settings.synchronous is Synchronous.FULL
        try:
            if relax:
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            self._refresh(conn)
            yield conn
            conn.execute("COMMIT")
            # Our own commit moves the file's data version too; remember it as seen.
            self._data_version = conn.data_version()
        except apsw.Error as exc:
            rollback_quietly(conn)
            raise translate(exc, operation) from exc
        except BaseException:
            rollback_quietly(conn)
            raise
        finally:
            if relax:
                _restore_full_sync(conn)

    def _refresh(self, conn: apsw.Connection) -> None:
        """Recount the totals if another connection committed since we last looked. Call
        inside a transaction that has read the file (the data version is the snapshot's)."""
        version = conn.data_version()
        if version == self._data_version:
            return
        self.reloads += 1
        self._totals = load_totals(conn)
        highest = [scalar_int(conn, "SELECT value FROM meta WHERE key = 'seq_hwm'")]
        for rank in range(len(LANES)):
            top = scalar_int(
                conn,
                "SELECT max(id) FROM chunk WHERE id >= ? AND id < ?",
                (rank << LANE_SHIFT, (rank + 1) << LANE_SHIFT),
            )
            highest.append(top & SEQ_MASK)
        highest.append(scalar_int(conn, "SELECT max(id & ?) FROM quarantine", (SEQ_MASK,)))
        self._next_seq = max(highest) + 1
        self._data_version = version

    def _forget(self, dropped: list[Dropped]) -> None:
        for lane in dropped:
            self._totals.add(lane.rank, -lane.chunks, -lane.readings, -lane.nbytes)

    def _make_room(self, conn: apsw.Connection, needed: int) -> list[Dropped]:
        quota = self._quota
        used = self._totals.used
        if used + needed <= quota:
            return []
        if needed > quota:
            raise OutboxFull(
                f"an append of {needed} bytes can never fit the quota of {quota} bytes",
                needed=needed,
                used=used,
                quota=quota,
            )
        if self._settings.policy is QuotaPolicy.REJECT_NEW:
            raise OutboxFull(
                f"outbox full ({used} of {quota} bytes used) and the policy is reject_new: "
                f"append of {needed} bytes refused",
                needed=needed,
                used=used,
                quota=quota,
            )
        dropped = drop_oldest(conn, used + needed - quota, self._clock(), self._consumers)
        if dropped is None:
            raise OutboxFull(
                f"outbox full ({used} of {quota} bytes used) and nothing left to drop: "
                f"{sum(self._totals.bytes[:1])} bytes are alarms, which are never dropped, "
                f"{sum(self._totals.q_bytes)} bytes are quarantined and the rest is being "
                f"uploaded; append of {needed} bytes refused",
                needed=needed,
                used=used,
                quota=quota,
            )
        return dropped

    def _delete_leased(self, conn: apsw.Connection, lease: Lease) -> list[tuple[int, int, int]]:
        """Settle the lease's chunks for its consumer, and delete the lease itself; returns
        the chunks the store deleted."""
        consumer_id = self._consumers.id_of(lease.consumer)
        gone = settle(conn, self._consumers, consumer_id, json_ids(lease.chunk_ids))
        conn.execute("DELETE FROM lease WHERE lease_id = ?", (lease.lease_id,))
        if gone:
            record_deleted(conn, (chunk_id for chunk_id, _, _ in gone))
        return gone


def _restore_full_sync(conn: apsw.Connection) -> None:
    try:
        conn.execute("PRAGMA synchronous=FULL")
    except apsw.Error as exc:
        raise translate(exc, "restoring synchronous=FULL") from exc


def _validated(payload: bytes, count: int, lane: Lane) -> tuple[bytes, int, int]:
    if not isinstance(lane, Lane):
        raise InvalidChunk(f"lane must be a Lane, not {lane!r}")
    if not isinstance(payload, bytes | bytearray | memoryview) or not payload:
        raise InvalidChunk("payload must be non-empty bytes")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidChunk(f"count must be an int >= 0, not {count!r}")
    return bytes(payload), count, lane.rank


def _lease_queries(
    consumer_id: int, now: float, max_chunks: int, newest_first: bool
) -> list[tuple[str, tuple[float | int, ...]]]:
    if not newest_first:
        return [(_FREE, (consumer_id, now, max_chunks))]
    telemetry = Lane.TELEMETRY.rank << LANE_SHIFT
    return [
        (_FREE_PRIORITY, (consumer_id, now, max_chunks, telemetry)),
        (_FREE_NEWEST_TELEMETRY, (consumer_id, now, max_chunks, telemetry)),
    ]
