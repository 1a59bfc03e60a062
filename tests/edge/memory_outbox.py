"""An in-memory outbox for unit tests of the pipeline and the uplink: the same lanes, leases and
quarantine as `store_forward.Outbox`, without SQLite (a fake of pure logic, as the house rules
allow for unit tests; the real outbox is tested in tests/store_forward)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from store_forward import (
    Chunk,
    ChunkId,
    Lane,
    LaneStats,
    Lease,
    OutboxError,
    OutboxStats,
    RefusedReadings,
)

_LANE_ORDER = (Lane.ALARM, Lane.EVENT, Lane.TELEMETRY)


@dataclass
class MemoryOutbox:
    """Chunks in lists per lane; `refuse` makes every append fail as a full disk would."""

    chunks: dict[Lane, list[Chunk]] = field(default_factory=lambda: {lane: [] for lane in Lane})
    leased: dict[int, Lease] = field(default_factory=dict)
    quarantined: list[tuple[Chunk, str]] = field(default_factory=list)
    acked: list[Chunk] = field(default_factory=list)
    dropped: dict[Lane, int] = field(default_factory=lambda: dict.fromkeys(Lane, 0))
    refuse: str | None = None
    refused: list[RefusedReadings] = field(default_factory=list)
    life: str = "memory-1"
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def append_many(self, items: Iterable[tuple[bytes, int, Lane]]) -> list[ChunkId]:
        if self.refuse is not None:
            raise OutboxError(self.refuse)
        return [self.put(payload, count, lane).id for payload, count, lane in items]

    def put(self, payload: bytes, count: int, lane: Lane = Lane.TELEMETRY) -> Chunk:
        """Append one chunk (a test setting up a backlog)."""
        chunk = Chunk(ChunkId(next(self._ids)), lane, count, payload, time.time())
        self.chunks[lane].append(chunk)
        return chunk

    def waiting(self, lane: Lane = Lane.TELEMETRY) -> list[Chunk]:
        """Chunks of `lane` neither leased nor gone."""
        out = {c.id for lease in self.leased.values() for c in lease.chunks}
        return [c for c in self.chunks[lane] if c.id not in out]

    async def lease(self, *, max_bytes: int, max_chunks: int, newest_first: bool) -> Lease:
        picked: list[Chunk] = []
        size = 0
        for lane in _LANE_ORDER:
            candidates = self.waiting(lane)
            if lane is Lane.TELEMETRY and newest_first:
                candidates = candidates[::-1]
            for chunk in candidates:
                if len(picked) == max_chunks or (picked and size + len(chunk.payload) > max_bytes):
                    break
                picked.append(chunk)
                size += len(chunk.payload)
        lease = Lease(len(self.leased) + 1, tuple(picked), time.time() + 60)
        if picked:
            self.leased[lease.lease_id] = lease
        return lease

    def _settle(self, lease: Lease) -> tuple[Chunk, ...]:
        self.leased.pop(lease.lease_id)
        return lease.chunks

    async def ack(self, lease: Lease) -> int:
        for chunk in self._settle(lease):
            self.chunks[chunk.lane].remove(chunk)
            self.acked.append(chunk)
        return len(lease)

    async def renew(self, lease: Lease) -> bool:
        return lease.lease_id in self.leased

    async def release(self, lease: Lease) -> int:
        return len(self._settle(lease))

    async def quarantine(self, lease: Lease, reason: str) -> int:
        for chunk in self._settle(lease):
            self.chunks[chunk.lane].remove(chunk)
            self.quarantined.append((chunk, reason))
        return len(lease)

    async def record_refused(self, refused: Sequence[RefusedReadings]) -> None:
        self.refused.extend(refused)

    async def stats(self) -> OutboxStats:
        lanes = {
            lane: LaneStats(
                chunks=len(self.chunks[lane]), readings=sum(c.count for c in self.chunks[lane]),
                bytes=sum(len(c.payload) for c in self.chunks[lane]), oldest_age_s=None,
                leased_chunks=0, dropped_chunks=0, dropped_readings=self.dropped[lane],
                quarantined_chunks=0, quarantined_readings=0, quarantined_bytes=0,
            )
            for lane in Lane
        }  # fmt: skip
        return OutboxStats(lanes=lanes, leased_chunks=len(self.leased), used_bytes=0,
                           quota_bytes=1 << 30, file_bytes=0, schema_version=0,
                           recoveries=(), life=self.life)  # fmt: skip
