"""The outbox's value objects: lanes, chunk ids, chunks, leases, figures and settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import NewType

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_CONSUMER = "uplink"
"""The consumer of an outbox opened without naming any: the cloud uplink."""

ChunkId = NewType("ChunkId", int)
"""Identifies a stored chunk for its whole life; never reused by the same outbox file."""


class Lane(Enum):
    """Priority lanes, highest first: leases hand out alarms before events before telemetry."""

    ALARM = "alarm"
    EVENT = "event"
    TELEMETRY = "telemetry"

    @property
    def rank(self) -> int:
        """0 for the highest priority; the order of the members."""
        return _RANK[self]


_RANK = {lane: rank for rank, lane in enumerate(Lane)}


class Synchronous(Enum):
    """SQLite's `synchronous` setting for commits of appended chunks and acks.

    ``full`` syncs the write-ahead log on every commit: an append that returned survives a power
    cut. ``normal`` syncs only at checkpoints: it survives a crash of the agent (kill -9) but a
    power cut may lose the last commits.
    """

    FULL = "full"
    NORMAL = "normal"


class QuotaPolicy(Enum):
    """What an append does when it would exceed the quota."""

    DROP_OLDEST = "drop_oldest"
    """Drop the oldest telemetry, then the oldest events (never alarms), counting each drop."""
    REJECT_NEW = "reject_new"
    """Refuse the append with `OutboxFull`."""


class StartupCheck(Enum):
    """How thoroughly an existing file is checked when it is opened."""

    QUICK = "quick"
    """``PRAGMA quick_check``: page and record structure, O(file size)."""
    FULL = "full"
    """``PRAGMA integrity_check``: also index consistency; slower."""
    NONE = "none"
    """Only what opening and counting the chunks touches."""


class OutboxSettings(BaseModel):
    """How an outbox behaves. Defaults suit a gateway with a few GiB of disk.

    Args:
        quota_bytes: the most payload bytes stored (chunks and quarantine); the file stays
            below this plus the slack documented in the README.
        synchronous: durability of each commit, see `Synchronous`.
        policy: what happens when an append would exceed the quota.
        lease_timeout_s: a lease not acked or released within this many seconds is handed out
            again (the uplink crashed mid-upload).
        startup_check: how an existing file is checked on open; a failure moves it aside.
        busy_timeout_s: how long to wait for another process's lock before `OutboxBusy`.
        consumers: who reads the outbox, each at its own durable position (the cloud uplink,
            the Sparkplug publisher); the first is the one calls without a consumer use. A
            consumer new to the file starts with the chunks appended from then on; one no
            longer named is forgotten with its position (chunks only it still needed go).
            None (the default) keeps the consumers the file already has (the uplink alone in a
            new file): a tool that opens the outbox on the side (``tagway buffer``, a test)
            must never forget the Sparkplug publisher's backlog.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    quota_bytes: int = Field(default=1024**3, gt=0)
    synchronous: Synchronous = Synchronous.FULL
    policy: QuotaPolicy = QuotaPolicy.DROP_OLDEST
    lease_timeout_s: float = Field(default=120.0, gt=0)
    startup_check: StartupCheck = StartupCheck.QUICK
    busy_timeout_s: float = Field(default=5.0, ge=0)
    consumers: tuple[str, ...] | None = None

    @field_validator("consumers")
    @classmethod
    def _named_once(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("an outbox needs at least one consumer")
        if len(set(value)) != len(value) or not all(name.strip() for name in value):
            raise ValueError(f"consumer names must be non-empty and distinct, got {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stored chunk: an opaque payload holding `count` readings."""

    id: ChunkId
    lane: Lane
    count: int
    payload: bytes
    created: float
    """When it was appended, seconds since the Unix epoch (the outbox clock)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """Chunks handed to one uploader until `deadline`; ack, release or quarantine them.

    An empty lease (nothing to send) is falsy.
    """

    lease_id: int
    chunks: tuple[Chunk, ...]
    deadline: float
    consumer: str = DEFAULT_CONSUMER
    """Whose lease it is: its ack moves only this consumer's position."""

    @property
    def chunk_ids(self) -> tuple[ChunkId, ...]:
        """The ids of the leased chunks, in hand-out order."""
        return tuple(chunk.id for chunk in self.chunks)

    @property
    def count(self) -> int:
        """Readings in the lease."""
        return sum(chunk.count for chunk in self.chunks)

    @property
    def nbytes(self) -> int:
        """Payload bytes in the lease."""
        return sum(len(chunk.payload) for chunk in self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __bool__(self) -> bool:
        return bool(self.chunks)


@dataclass(frozen=True, slots=True)
class QuarantinedChunk:
    """A chunk set aside because the cloud refused it (422/413); `requeue_quarantine()` puts
    it back."""

    id: ChunkId
    lane: Lane
    count: int
    nbytes: int
    reason: str
    quarantined_at: float


@dataclass(frozen=True, slots=True)
class RefusedReadings:
    """Readings of one series the receiver refused one by one for one reason (a clock far off),
    while it stored the rest of their chunk: kept for the record, never resent."""

    device: str
    tag: str
    reason: str
    count: int
    first_ts: int
    """The first refused reading's timestamp, µs since the Unix epoch."""
    at: float = 0.0
    """When the outbox recorded it, seconds since the Unix epoch (set by the outbox)."""


@dataclass(frozen=True, slots=True)
class RecoveryEvent:
    """A damaged outbox file was moved aside and a fresh one started."""

    at: float
    """When, seconds since the Unix epoch."""
    moved_to: Path
    reason: str


@dataclass(frozen=True, slots=True)
class LaneStats:
    """Figures of one lane. Dropped and quarantined totals count since the file was created."""

    chunks: int
    readings: int
    bytes: int
    oldest_age_s: float | None
    leased_chunks: int
    dropped_chunks: int
    dropped_readings: int
    quarantined_chunks: int
    quarantined_readings: int
    quarantined_bytes: int


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """Figures of one consumer: what it has still to send and what the quota took from it."""

    pending_chunks: int
    pending_readings: int
    leased_chunks: int
    dropped_readings: Mapping[Lane, int]
    """Readings dropped by the quota policy before this consumer had sent them, per lane."""

    @property
    def dropped_total(self) -> int:
        """Readings this consumer lost to the quota, all lanes."""
        return sum(self.dropped_readings.values())


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A consistent snapshot of the outbox, cheap enough to poll."""

    lanes: Mapping[Lane, LaneStats]
    leased_chunks: int
    used_bytes: int
    """Payload bytes counted against the quota (chunks and quarantine)."""
    quota_bytes: int
    file_bytes: int
    """The database file plus its write-ahead log, as on disk."""
    schema_version: int
    recoveries: tuple[RecoveryEvent, ...]
    consumers: Mapping[str, ConsumerStats] = field(default_factory=dict)
    """Per consumer, by name (empty from a fake outbox)."""
    life: str = ""
    """This outbox file's identity (when it was created): the drop counters count from zero in
    each life, so a report of them names it."""
    refused: Mapping[str, int] = field(default_factory=dict)
    """Readings the receiver refused one by one, per reason, since the file was created."""

    @property
    def dropped_readings(self) -> int:
        """Readings dropped by the quota policy, all lanes."""
        return sum(lane.dropped_readings for lane in self.lanes.values())

    @property
    def chunks(self) -> int:
        """Chunks waiting to be sent, all lanes."""
        return sum(lane.chunks for lane in self.lanes.values())
