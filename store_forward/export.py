"""Reading an outbox's chunks from another process, without leasing or changing anything.

For `tagway buffer export`: an engineer takes what the gateway still holds (after an outage, or
before replacing a failed uplink) to a spreadsheet, while the agent keeps running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw

from ._sqlite import open_reader, translate
from .model import Chunk, ChunkId, Lane, RefusedReadings
from .refused import read
from .schema import LANE_SHIFT
from .stats import LANES


def iter_chunks(
    path: str | Path, *, lanes: frozenset[Lane] = frozenset(Lane), busy_timeout_s: float = 5.0
) -> Iterator[Chunk]:
    """Every waiting chunk of the outbox at `path`, oldest first within each lane, alarms first.

    One read transaction: a consistent snapshot, while the owner goes on writing.

    Raises:
        OutboxMissing: no outbox file at `path`.
        OutboxError: any other failure, translated from SQLite.
    """
    path = Path(path)
    conn = open_reader(path, busy_timeout_s=busy_timeout_s, purpose="export")
    try:
        conn.execute("BEGIN")
        rows = conn.execute("SELECT id, count, created, payload FROM chunk ORDER BY id")
        for chunk_id, count, created, payload in rows:
            lane = LANES[int(chunk_id) >> LANE_SHIFT]
            if lane in lanes:
                yield Chunk(
                    ChunkId(int(chunk_id)), lane, int(count), bytes(payload), float(created)
                )
        conn.execute("COMMIT")
    except apsw.Error as exc:
        raise translate(exc, f"export of {path}") from exc
    finally:
        conn.close()


def read_refused(path: str | Path, *, busy_timeout_s: float = 5.0) -> list[RefusedReadings]:
    """The readings the receiver refused one by one, as the outbox at `path` keeps them (the
    most recent entries, oldest first); read from any process, changing nothing.

    Raises:
        OutboxMissing: no outbox file at `path`.
        OutboxError: any other failure, translated from SQLite.
    """
    path = Path(path)
    conn = open_reader(path, busy_timeout_s=busy_timeout_s, purpose="export")
    try:
        return read(conn)
    except apsw.Error as exc:
        raise translate(exc, f"export of {path}") from exc
    finally:
        conn.close()
