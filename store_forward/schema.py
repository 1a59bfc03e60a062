"""The outbox's versioned schema. Migrations are applied in order, each recorded in
`schema_migration` and in ``PRAGMA user_version`` in the same transaction as its DDL, so a
crash leaves either the old or the new schema, never half of one.

A chunk's id is ``lane rank << 60 | sequence``: ordering the `chunk` table by its primary key
gives alarms first, then events, then telemetry, each first-in first-out, with no secondary
index to maintain on append. A lease is one row in `lease` holding its chunk ids as a JSON
array, so leasing never rewrites a payload and writes one small row per batch.

Schema 2 lets several consumers (the cloud uplink, the Sparkplug publisher) read one outbox,
each at its own durable position: a `pending` row per consumer and chunk it has not acked yet
(see `consumers`). A chunk stays until no consumer needs it. Upgrading a schema 1 file makes
its chunks pending for the one consumer it had, ``uplink``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import apsw

from ._sqlite import scalar_int
from .errors import SchemaTooNew

LANE_SHIFT = 60
SEQ_MASK = (1 << LANE_SHIFT) - 1


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: the version it produces, a name, and its DDL."""

    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "chunks, leases, lane counters, quarantine, recovery log",
        """
        CREATE TABLE chunk (
            id INTEGER PRIMARY KEY,
            count INTEGER NOT NULL,
            size INTEGER NOT NULL,
            created REAL NOT NULL,
            payload BLOB NOT NULL
        );
        CREATE TABLE lease (
            lease_id INTEGER PRIMARY KEY,
            deadline REAL NOT NULL,
            chunk_ids TEXT NOT NULL
        );
        CREATE TABLE lane_counter (
            lane INTEGER PRIMARY KEY,
            dropped_chunks INTEGER NOT NULL DEFAULT 0,
            dropped_readings INTEGER NOT NULL DEFAULT 0
        );
        INSERT INTO lane_counter(lane) VALUES (0), (1), (2);
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY,
            count INTEGER NOT NULL,
            size INTEGER NOT NULL,
            created REAL NOT NULL,
            quarantined_at REAL NOT NULL,
            reason TEXT NOT NULL,
            payload BLOB NOT NULL
        );
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta(key, value) VALUES ('seq_hwm', 0), ('quota_bytes', 0);
        CREATE TABLE recovery (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            moved_to TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE TABLE schema_migration (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at REAL NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "several consumers, each with its own pending chunks, leases and drop counters",
        """
        CREATE TABLE consumer (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            registered REAL NOT NULL
        );
        INSERT INTO consumer(id, name, registered) VALUES (0, 'uplink', 0);
        CREATE TABLE pending (
            consumer INTEGER NOT NULL,
            chunk_id INTEGER NOT NULL,
            PRIMARY KEY (consumer, chunk_id)
        ) WITHOUT ROWID;
        INSERT INTO pending(consumer, chunk_id) SELECT 0, id FROM chunk;
        ALTER TABLE lease ADD COLUMN consumer INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE quarantine ADD COLUMN consumer INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE consumer_counter (
            consumer INTEGER NOT NULL,
            lane INTEGER NOT NULL,
            dropped_chunks INTEGER NOT NULL DEFAULT 0,
            dropped_readings INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (consumer, lane)
        ) WITHOUT ROWID;
        INSERT INTO consumer_counter(consumer, lane, dropped_chunks, dropped_readings)
            SELECT 0, lane, dropped_chunks, dropped_readings FROM lane_counter;
        """,
    ),
    Migration(
        3,
        "readings the cloud refused one by one: the last ones, and totals per reason",
        """
        CREATE TABLE refused (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            device TEXT NOT NULL,
            tag TEXT NOT NULL,
            reason TEXT NOT NULL,
            count INTEGER NOT NULL,
            first_ts INTEGER NOT NULL
        );
        CREATE TABLE refused_counter (
            reason TEXT PRIMARY KEY,
            readings INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The newest schema this code reads and writes."""


class NotAnOutbox(Exception):
    """The file is a SQLite database, but not one of ours (tables, yet no schema version)."""


def schema_version(conn: apsw.Connection) -> int:
    """The schema version recorded in the file (0 for a new, empty database)."""
    return scalar_int(conn, "PRAGMA user_version")


def check_version(conn: apsw.Connection, path: Path) -> int:
    """The file's schema version; `SchemaTooNew` if newer than this code, `NotAnOutbox` if the
    file holds someone else's tables."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has outbox schema version {version}, but this tagway knows only up to "
            f"{SCHEMA_VERSION}: it was written by a newer tagway. Upgrade tagway, or move the "
            f"file away to start an empty outbox.",
            found=version,
            supported=SCHEMA_VERSION,
        )
    if version == 0 and scalar_int(conn, "SELECT count(*) FROM sqlite_schema"):
        raise NotAnOutbox(f"{path} is a SQLite database without an outbox schema version")
    return version


def migrate(conn: apsw.Connection, path: Path, clock: Callable[[], float]) -> int:
    """Bring the schema up to `SCHEMA_VERSION`; returns the version. Raises apsw errors."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = check_version(conn, path)
        for step in MIGRATIONS:
            if step.version <= current:
                continue
            conn.execute(step.sql)
            conn.execute(
                "INSERT INTO schema_migration(version, name, applied_at) VALUES (?, ?, ?)",
                (step.version, step.name, clock()),
            )
            conn.execute(f"PRAGMA user_version={step.version:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION
