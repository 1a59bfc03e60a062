"""The SQLite boundary: opening connections with the outbox's pragmas, and translating apsw
errors into the outbox error tree. Nothing outside `store_forward` sees apsw."""

from __future__ import annotations

from pathlib import Path

import apsw

from .errors import DiskFull, OutboxBusy, OutboxDamaged, OutboxError, OutboxMissing, StorageError
from .model import Synchronous

# WAL frames are checkpointed into the main file every 1000 pages (4 MiB at the default page
# size), and the log is truncated back to that size afterwards, so the -wal file stays small.
WAL_AUTOCHECKPOINT_PAGES = 1000
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024

DAMAGE_ERRORS: tuple[type[apsw.Error], ...] = (apsw.CorruptError, apsw.NotADBError)


def connect(path: Path, *, create: bool, busy_timeout_s: float) -> apsw.Connection:
    """Open `path`; without `create`, a missing file is an error instead of a new database."""
    flags = apsw.SQLITE_OPEN_READWRITE
    if create:
        flags |= apsw.SQLITE_OPEN_CREATE
    conn = apsw.Connection(str(path), flags=flags)
    conn.set_busy_timeout(int(busy_timeout_s * 1000))
    return conn


def open_reader(path: Path, *, busy_timeout_s: float, purpose: str) -> apsw.Connection:
    """A read-only connection to an existing outbox, for a process that does not own it.

    Raises `OutboxMissing` when there is no file and a translated `OutboxError` when it cannot be
    opened; `purpose` ("stats", "export") names the attempt in that error.
    """
    if not path.is_file():
        raise OutboxMissing(f"no outbox at {path}")
    try:
        conn = connect(path, create=False, busy_timeout_s=busy_timeout_s)
    except apsw.Error as exc:
        raise translate(exc, f"open of {path} for {purpose}") from exc
    try:
        conn.execute("PRAGMA query_only=1")
    except apsw.Error as exc:
        conn.close()
        raise translate(exc, f"open of {path} for {purpose}") from exc
    return conn


def configure(conn: apsw.Connection, synchronous: Synchronous) -> None:
    """WAL mode and the durability the settings ask for. Raises apsw errors (a garbage file
    fails here with NotADBError)."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
    if str(mode).lower() != "wal":
        raise StorageError(f"could not put the outbox in WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous={synchronous.name}")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    conn.wal_autocheckpoint(WAL_AUTOCHECKPOINT_PAGES)
    # Deletes overwrite nothing: acked payloads need not be zeroed on disk, and zeroing would
    # double the write volume of every ack.
    conn.execute("PRAGMA secure_delete=OFF")


def translate(exc: apsw.Error, operation: str) -> OutboxError:
    """The outbox error for an apsw error raised during `operation`."""
    message = f"outbox {operation} failed: {exc}"
    if isinstance(exc, apsw.FullError):
        return DiskFull(message)
    if isinstance(exc, DAMAGE_ERRORS):
        return OutboxDamaged(message)
    if isinstance(exc, apsw.BusyError | apsw.LockedError):
        return OutboxBusy(message)
    return StorageError(message)


def rollback_quietly(conn: apsw.Connection) -> None:
    """Roll back an open transaction, if SQLite has not already done so.

    Called while another error propagates; a failing rollback must not hide it, and SQLite
    rolls the transaction back itself when the connection closes.
    """
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except apsw.Error:
        pass


def file_bytes(path: Path) -> int:
    """Size of the database file plus its write-ahead log."""
    total = 0
    for candidate in (path, path.with_name(path.name + "-wal")):
        try:
            total += candidate.stat().st_size
        except FileNotFoundError:
            continue
    return total


def as_int(value: object) -> int:
    """A SQLite integer from a row (NULL, as from an aggregate over no rows, is 0)."""
    if value is None:
        return 0
    if not isinstance(value, int):
        raise StorageError(f"expected an integer from the outbox file, got {value!r}")
    return value


def as_float(value: object) -> float:
    """A SQLite real (or integer) from a row."""
    if not isinstance(value, int | float):
        raise StorageError(f"expected a number from the outbox file, got {value!r}")
    return float(value)


def scalar_int(conn: apsw.Connection, sql: str, bindings: tuple[object, ...] = ()) -> int:
    """The single integer a query returns."""
    return as_int(conn.execute(sql, bindings).fetchall()[0][0])
