"""Making room under the quota: the ``drop_oldest`` policy.

Victims are the oldest telemetry chunks, then the oldest events; alarms are never dropped,
and neither are chunks under a live lease (they are being uploaded right now: dropping them
would count as lost readings that are about to arrive), whichever consumer holds the lease.
Every victim is added to the persistent per-lane drop counters, and to the counters of each
consumer that had not sent it yet, in the same transaction as its deletion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import apsw

from .consumers import Consumers, count_drops, json_ids
from .model import Lane
from .schema import LANE_SHIFT, SEQ_MASK

DROP_ORDER = (Lane.TELEMETRY.rank, Lane.EVENT.rank)

_VICTIMS = (
    "SELECT id, count, size FROM chunk WHERE id >= ? AND id < ? "
    "AND id NOT IN (SELECT j.value FROM lease, json_each(lease.chunk_ids) AS j "
    "WHERE lease.deadline > ?) ORDER BY id"
)


@dataclass(frozen=True, slots=True)
class Dropped:
    """What one lane lost to make room."""

    rank: int
    chunks: int
    readings: int
    nbytes: int


def drop_oldest(
    conn: apsw.Connection, excess: int, now: float, consumers: Consumers
) -> list[Dropped] | None:
    """Delete the oldest droppable chunks until `excess` payload bytes are freed, inside the
    caller's write transaction. Returns what was dropped per lane, or None (and deletes
    nothing) when even every droppable chunk would not free enough."""
    victims: list[tuple[int, int, int]] = []
    freed = 0
    for rank in DROP_ORDER:
        cursor = conn.execute(_VICTIMS, (rank << LANE_SHIFT, (rank + 1) << LANE_SHIFT, now))
        for chunk_id, count, size in cursor:
            victims.append((int(chunk_id), int(count), int(size)))
            freed += int(size)
            if freed >= excess:
                break
        cursor.close()
        if freed >= excess:
            break
    if freed < excess:
        return None
    ids = [(chunk_id,) for chunk_id, _, _ in victims]
    count_drops(conn, consumers, json_ids(chunk_id for chunk_id, _, _ in victims))
    conn.executemany("DELETE FROM chunk WHERE id = ?", ids)
    dropped = _per_lane(victims)
    for lane in dropped:
        conn.execute(
            "UPDATE lane_counter SET dropped_chunks = dropped_chunks + ?, "
            "dropped_readings = dropped_readings + ? WHERE lane = ?",
            (lane.chunks, lane.readings, lane.rank),
        )
    record_deleted(conn, [chunk_id for chunk_id, _, _ in victims])
    return dropped


def record_deleted(conn: apsw.Connection, chunk_ids: Iterable[int]) -> None:
    """Remember the highest sequence number ever deleted, so ids are never reused."""
    highest = max((chunk_id & SEQ_MASK for chunk_id in chunk_ids), default=0)
    conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'seq_hwm'", (highest,))


def _per_lane(victims: list[tuple[int, int, int]]) -> list[Dropped]:
    sums: dict[int, list[int]] = {}
    for chunk_id, count, size in victims:
        lane = sums.setdefault(chunk_id >> LANE_SHIFT, [0, 0, 0])
        lane[0] += 1
        lane[1] += count
        lane[2] += size
    return [Dropped(rank, n, readings, nbytes) for rank, (n, readings, nbytes) in sums.items()]
