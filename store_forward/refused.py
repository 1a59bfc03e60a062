"""Readings the receiver refused one by one: the last `KEPT` entries, and totals per reason.

The receiver (the cloud) may store a chunk but refuse some of its readings, such as those of a
device whose clock is decades off. Those readings are not resent (they would be refused again)
and do not hold back the queue: the chunk is acknowledged like any other. What was refused is
written here, in the same file as the chunks, so `tagway buffer stats` and `tagway buffer export
--refused` show it after a restart: a small table of the most recent entries (one per series and
reason and batch), and a running total per reason that is never trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import apsw

from ._sqlite import as_float, as_int
from .model import RefusedReadings

KEPT: Final = 1_000
"""Entries kept in the `refused` table; older ones are deleted (their totals stay)."""


def record(tx: apsw.Connection, refused: Sequence[RefusedReadings], now: float) -> None:
    """Add entries and their totals inside the caller's transaction."""
    tx.executemany(
        "INSERT INTO refused(at, device, tag, reason, count, first_ts) VALUES (?, ?, ?, ?, ?, ?)",
        [(now, r.device, r.tag, r.reason, r.count, r.first_ts) for r in refused],
    )
    tx.executemany(
        "INSERT INTO refused_counter(reason, readings) VALUES (?, ?) "
        "ON CONFLICT(reason) DO UPDATE SET readings = readings + excluded.readings",
        [(r.reason, r.count) for r in refused],
    )
    tx.execute("DELETE FROM refused WHERE id <= (SELECT max(id) FROM refused) - ?", (KEPT,))


def read(conn: apsw.Connection) -> list[RefusedReadings]:
    """The kept entries, oldest first."""
    return [
        RefusedReadings(
            str(device), str(tag), str(reason), as_int(count), as_int(first), as_float(at)
        )
        for at, device, tag, reason, count, first in conn.execute(
            "SELECT at, device, tag, reason, count, first_ts FROM refused ORDER BY id"
        )
    ]
