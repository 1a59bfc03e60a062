"""store_forward: the durable outbox, a crash-safe SQLite queue of encoded chunks.

A reading is *accepted* once the chunk that holds it is committed here. The outbox stores opaque
payloads with a reading count and a priority lane (alarm, event, telemetry), leases them to the
uplink, deletes them only on ack, enforces a disk quota with counted drops, and survives kill -9 and
damaged files. It knows nothing of readings or protocols and imports nothing else of tagway.

    from store_forward import Lane, Outbox, OutboxSettings

    with Outbox("outbox.db", OutboxSettings(quota_bytes=256 << 20)) as outbox:
        outbox.append(payload, count=500, lane=Lane.TELEMETRY)
        lease = outbox.lease(max_bytes=1 << 20)
        ...  # upload
        outbox.ack(lease)

Several consumers (the cloud uplink, the Sparkplug publisher) may read one outbox, each at its
own durable position: name them in ``OutboxSettings(consumers=...)`` and pass
``lease(consumer=...)``; see `store_forward.consumers`.

The agent uses `AsyncOutbox` (same calls, awaited, on a worker thread); the CLI uses
`read_stats()` from its own process. Errors: see `store_forward.errors`.
"""

from .aio import AsyncOutbox
from .errors import (
    DiskFull,
    InvalidChunk,
    OutboxBusy,
    OutboxClosed,
    OutboxDamaged,
    OutboxError,
    OutboxFull,
    OutboxMissing,
    SchemaTooNew,
    StorageError,
)
from .export import iter_chunks, read_refused
from .model import (
    DEFAULT_CONSUMER,
    Chunk,
    ChunkId,
    ConsumerStats,
    Lane,
    LaneStats,
    Lease,
    OutboxSettings,
    OutboxStats,
    QuarantinedChunk,
    QuotaPolicy,
    RecoveryEvent,
    RefusedReadings,
    StartupCheck,
    Synchronous,
)
from .outbox import Outbox
from .schema import SCHEMA_VERSION
from .stats import read_schema_version, read_stats

__all__ = [
    "DEFAULT_CONSUMER",
    "SCHEMA_VERSION",
    "AsyncOutbox",
    "Chunk",
    "ChunkId",
    "ConsumerStats",
    "DiskFull",
    "InvalidChunk",
    "Lane",
    "LaneStats",
    "Lease",
    "Outbox",
    "OutboxBusy",
    "OutboxClosed",
    "OutboxDamaged",
    "OutboxError",
    "OutboxFull",
    "OutboxMissing",
    "OutboxSettings",
    "OutboxStats",
    "QuarantinedChunk",
    "QuotaPolicy",
    "RecoveryEvent",
    "RefusedReadings",
    "SchemaTooNew",
    "StartupCheck",
    "StorageError",
    "Synchronous",
    "iter_chunks",
    "read_refused",
    "read_schema_version",
    "read_stats",
]
