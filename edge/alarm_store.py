"""Alarm states on disk, so an active or unacknowledged alarm survives a restart.

One small SQLite file (apsw) in the state directory. The schema carries a version in
`PRAGMA user_version`; a newer agent migrates an older file in place, and an older agent refuses a
file from a newer release with a clear message instead of corrupting it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import apsw

from edge.alarms import Alarm, AlarmState
from edge.errors import EdgeError

SCHEMA_VERSION: Final = 1

_MIGRATIONS: Final[dict[int, str]] = {
    1: """
        CREATE TABLE alarm_state (
            rule       TEXT PRIMARY KEY,
            state      TEXT NOT NULL,
            raised_at  INTEGER,
            acked_at   INTEGER,
            cleared_at INTEGER,
            value      TEXT          -- JSON: number, string or null
        ) WITHOUT ROWID;
    """,
}


class AlarmStoreError(EdgeError):
    """The alarm-state file cannot be used; the message names the file and why."""


class AlarmStateTooNew(AlarmStoreError):
    """The alarm-state file was written by a newer release; it is left untouched."""


class AlarmStore:
    """Persistent alarm states.

    Args:
        path: the SQLite file; created with its directory if missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = apsw.Connection(str(path))
            self._db.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL")
            self._migrate()
        except apsw.Error as exc:
            raise AlarmStoreError(f"alarm state file {path}: {exc}") from exc

    def _migrate(self) -> None:
        version = _int(self._db.execute("PRAGMA user_version").fetchall()[0][0]) or 0
        if version > SCHEMA_VERSION:
            raise AlarmStateTooNew(
                f"alarm state file {self.path} has schema version {version}, but this tagway "
                f"understands up to {SCHEMA_VERSION}: it was written by a newer release. "
                "Upgrade tagway, or move the file aside to start with no alarm history."
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._db:  # the migration and its version in one transaction
                self._db.execute(_MIGRATIONS[target])
                self._db.execute(f"PRAGMA user_version = {target}")

    def load(self) -> dict[str, Alarm]:
        """All stored alarm states by rule name."""
        rows = self._db.execute(
            "SELECT rule, state, raised_at, acked_at, cleared_at, value FROM alarm_state"
        ).fetchall()
        return {
            str(rule): Alarm(
                rule=str(rule), state=AlarmState(str(state)), raised_at=_int(raised),
                acked_at=_int(acked), cleared_at=_int(cleared),
                value=json.loads(str(value)) if value is not None else None,
            )
            for rule, state, raised, acked, cleared, value in rows
        }  # fmt: skip

    def save(self, alarms: Iterable[Alarm]) -> None:
        """Write the given states in one transaction."""
        rows = [
            (a.rule, a.state.value, a.raised_at, a.acked_at, a.cleared_at, json.dumps(a.value))
            for a in alarms
        ]
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO alarm_state VALUES (?, ?, ?, ?, ?, ?)", rows
            )

    def close(self) -> None:
        """Close the file."""
        self._db.close()


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))
