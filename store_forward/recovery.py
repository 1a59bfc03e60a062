"""Opening an outbox file, and starting afresh when it is damaged.

A file that is garbage, truncated, not an outbox, or fails the startup check is closed, moved
aside under a timestamped name (``outbox.db.damaged-20260101T120000123456Z``, with its -wal),
and a fresh outbox is created in its place. The move is recorded in the new file's `recovery`
table so the CLI, the local API and the cloud can report it. Recovery is attempted once per
open: if the fresh file fails too, the error is raised, so a supervisor restarting the agent
meets the same clear error instead of a loop that moves files forever.

A file from a *newer* schema is never treated as damage: it is refused with `SchemaTooNew`
and left exactly where it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import apsw

from ._sqlite import DAMAGE_ERRORS, configure, connect
from .errors import OutboxDamaged
from .model import OutboxSettings, RecoveryEvent, StartupCheck
from .schema import NotAnOutbox, check_version, migrate

_CHECK_PRAGMA = {StartupCheck.QUICK: "quick_check", StartupCheck.FULL: "integrity_check"}


class _FailedCheck(Exception):
    """The startup check reported problems."""


_DAMAGE: tuple[type[Exception], ...] = (*DAMAGE_ERRORS, _FailedCheck, NotAnOutbox)


def open_connection(
    path: Path, settings: OutboxSettings, clock: Callable[[], float]
) -> tuple[apsw.Connection, RecoveryEvent | None]:
    """A configured, migrated connection to the outbox at `path`, and the recovery event if a
    damaged file had to be moved aside. Raises apsw errors and `SchemaTooNew`."""
    reason: str | None = None
    if path.exists():
        try:
            return _open_existing(path, settings, clock), None
        except _DAMAGE as exc:
            reason = str(exc) if isinstance(exc, _FailedCheck) else f"{type(exc).__name__}: {exc}"
    event = _move_aside(path, reason, clock) if reason is not None else None
    conn = connect(path, create=True, busy_timeout_s=settings.busy_timeout_s)
    try:
        configure(conn, settings.synchronous)
        migrate(conn, path, clock)
        if event is not None:
            conn.execute(
                "INSERT INTO recovery(at, moved_to, reason) VALUES (?, ?, ?)",
                (event.at, str(event.moved_to), event.reason),
            )
    except BaseException:
        conn.close()
        raise
    return conn, event


def check_file(conn: apsw.Connection, startup_check: StartupCheck) -> None:
    """Run the configured integrity check; `_FailedCheck` with SQLite's findings if it fails."""
    pragma = _CHECK_PRAGMA.get(startup_check)
    if pragma is None:
        return
    findings = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}")]
    if findings != ["ok"]:
        raise _FailedCheck(f"{pragma} failed: " + "; ".join(findings[:5]))


def _open_existing(
    path: Path, settings: OutboxSettings, clock: Callable[[], float]
) -> apsw.Connection:
    conn = connect(path, create=False, busy_timeout_s=settings.busy_timeout_s)
    try:
        # Version first: a newer or a foreign file must not even be switched to WAL mode.
        check_version(conn, path)
        configure(conn, settings.synchronous)
        check_file(conn, settings.startup_check)
        migrate(conn, path, clock)
        # Reading every row's header proves the chunk table is readable even with the check
        # off, and is what counting the lanes at open does anyway.
        conn.execute("SELECT count(*), sum(size) FROM chunk").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


def _move_aside(path: Path, reason: str, clock: Callable[[], float]) -> RecoveryEvent:
    at = clock()
    stamp = dt.datetime.fromtimestamp(at, tz=dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    attempt = 0
    while target.exists():
        attempt += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{attempt}")
    try:
        path.rename(target)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            wal.rename(target.with_name(target.name + "-wal"))
        # The shared-memory index is rebuilt from the log; a stale one must not meet the new file.
        path.with_name(path.name + "-shm").unlink(missing_ok=True)
    except OSError as exc:
        raise OutboxDamaged(
            f"outbox {path} is damaged ({reason}) and could not be moved aside: {exc}"
        ) from exc
    return RecoveryEvent(at=at, moved_to=target, reason=reason)
