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

from edge.alarms import Alarm, AlarmState, Shelf, ShelfAction
from edge.errors import EdgeError

SCHEMA_VERSION: Final = 2

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
    2: """
        CREATE TABLE alarm_shelf (
            rule       TEXT PRIMARY KEY,
            until      INTEGER NOT NULL,  -- µs, UTC
            by_whom    TEXT NOT NULL,
            reason     TEXT NOT NULL,
            at         INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE alarm_shelf_audit (
            id         INTEGER PRIMARY KEY,
            at         INTEGER NOT NULL,
            rule       TEXT NOT NULL,
            action     TEXT NOT NULL,     -- shelved | unshelved | expired
            by_whom    TEXT NOT NULL,
            reason     TEXT NOT NULL,
            until      INTEGER
        );
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

    def load_shelves(self) -> dict[str, Shelf]:
        """The alarms shelved now (and those whose time ran out while the agent was down)."""
        rows = self._db.execute("SELECT rule, until, by_whom, reason, at FROM alarm_shelf")
        return {
            str(rule): Shelf(until=int(str(until)), by=str(by), reason=str(reason),
                             at=int(str(at)))
            for rule, until, by, reason, at in rows.fetchall()
        }  # fmt: skip

    def record_shelf(self, action: ShelfAction) -> None:
        """Store a shelving action and the shelf it leaves, in one transaction (the audit)."""
        with self._db:
            self._db.execute(
                "INSERT INTO alarm_shelf_audit (at, rule, action, by_whom, reason, until) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (action.at, action.rule, action.action, action.by, action.reason, action.until),
            )
            if action.action == "shelved" and action.until is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO alarm_shelf VALUES (?, ?, ?, ?, ?)",
                    (action.rule, action.until, action.by, action.reason, action.at),
                )
            else:
                self._db.execute("DELETE FROM alarm_shelf WHERE rule = ?", (action.rule,))

    def shelf_audit(self, limit: int = 100) -> list[ShelfAction]:
        """The newest shelving actions, newest first."""
        rows = self._db.execute(
            "SELECT at, rule, action, by_whom, reason, until FROM alarm_shelf_audit "
            "ORDER BY id DESC LIMIT ?", (limit,),
        ).fetchall()  # fmt: skip
        return [
            ShelfAction(at=int(str(at)), rule=str(rule), action=str(action), by=str(by),
                        reason=str(reason), until=_int(until))
            for at, rule, action, by, reason, until in rows
        ]  # fmt: skip

    def close(self) -> None:
        """Close the file."""
        self._db.close()


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))
