"""Dead letters: MQTT messages that could not be turned into readings, kept with the reason.

A bounded SQLite table (the newest `keep` rows) in the state directory, plus a counter that is
never trimmed, so a plant engineer can see what a device sent wrong and how often.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import apsw

from protocols.mqtt.codec import DeadLetter

SCHEMA_VERSION: Final = 1


class DeadLetterStore:
    """Persists dead letters; use `put` as the MQTT driver's dead-letter sink.

    Args:
        path: the SQLite file.
        keep: how many of the newest dead letters to keep.
    """

    def __init__(self, path: Path, *, keep: int = 10_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = apsw.Connection(str(path))
        self._db.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS dead_letter (id INTEGER PRIMARY KEY, received_us "
                "INTEGER, topic TEXT, device TEXT, reason TEXT, size INTEGER, head BLOB);"
                "CREATE TABLE IF NOT EXISTS dead_letter_total (id INTEGER PRIMARY KEY CHECK (id=1),"
                " total INTEGER NOT NULL);"
                "INSERT OR IGNORE INTO dead_letter_total VALUES (1, 0);"
            )
            self._db.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")
        self.keep = keep

    async def put(self, letters: list[DeadLetter]) -> None:
        """Store a batch of dead letters (the `DeadLetterSink` of the MQTT driver)."""
        rows = [(d.received_us, d.topic, d.device, d.reason, d.size, d.head) for d in letters]
        with self._db:
            self._db.executemany(
                "INSERT INTO dead_letter (received_us, topic, device, reason, size, head) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute("UPDATE dead_letter_total SET total = total + ?", (len(rows),))
            self._db.execute(
                "DELETE FROM dead_letter WHERE id <= (SELECT MAX(id) FROM dead_letter) - ?",
                (self.keep,),
            )

    @property
    def total(self) -> int:
        """Dead letters ever stored."""
        return int(str(self._db.execute("SELECT total FROM dead_letter_total").fetchall()[0][0]))

    def recent(self, limit: int = 50) -> list[dict[str, object]]:
        """The newest dead letters, newest first."""
        rows = self._db.execute(
            "SELECT received_us, topic, device, reason, size, head FROM dead_letter "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            {"received_us": r[0], "topic": r[1], "device": r[2], "reason": r[3], "size": r[4],
             "head": r[5].decode("utf-8", "replace") if isinstance(r[5], bytes) else ""}
            for r in rows
        ]  # fmt: skip

    def close(self) -> None:
        """Close the file."""
        self._db.close()
