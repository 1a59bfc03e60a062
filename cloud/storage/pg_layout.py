"""How telemetry is stored on a PostgreSQL server, and why: native daily partitions or a
TimescaleDB hypertable.

The choice is made once, by the first migration, from what the server offers; afterwards the
schema says what it is and nothing flips it. TimescaleDB is used only when its files are
installed *and* its library is preloaded: `CREATE EXTENSION timescaledb` on a server that does
not preload it ends the connection (``FATAL: extension "timescaledb" must be preloaded``).
``shared_preload_libraries`` is visible to superusers (and ``pg_read_all_settings``) only; for
other roles the loader's own settings (``timescaledb.max_background_workers``), which exist
only where the library is preloaded, answer the same question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import psycopg

NATIVE: Final = "native"
TIMESCALEDB: Final = "timescaledb"

_PROBE: Final = """
SELECT (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'),
       current_setting('timescaledb.max_background_workers', true) IS NOT NULL,
       (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
       (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
       to_regclass('telemetry') IS NOT NULL,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
"""
_IS_HYPERTABLE: Final = """
SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
               WHERE format('%I.%I', hypertable_schema, hypertable_name)::regclass
                     = 'telemetry'::regclass)
"""


@dataclass(frozen=True, slots=True)
class Layout:
    """The telemetry layout (`NATIVE` or `TIMESCALEDB`) and a sentence saying why."""

    kind: str
    reason: str

    @property
    def timescaledb(self) -> bool:
        """True when telemetry is (or will be) a TimescaleDB hypertable."""
        return self.kind == TIMESCALEDB


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the server offers, as far as the connected role can see."""

    preload_setting: str | None
    loader_settings: bool
    available: str | None
    installed: str | None
    telemetry_exists: bool
    hypertable: bool
    superuser: bool = False

    @property
    def preloaded(self) -> bool:
        """True when the TimescaleDB library is in ``shared_preload_libraries``."""
        if self.preload_setting is None:  # hidden from this role: the loader's settings tell
            return self.loader_settings
        names = (p.strip().strip("\"'").rsplit("/", 1)[-1] for p in self.preload_setting.split(","))
        return "timescaledb" in names


async def server_facts(conn: psycopg.AsyncConnection[Any]) -> ServerFacts:
    """Ask the server what it offers (any role may ask)."""
    cur = await conn.execute(_PROBE)
    row = await cur.fetchone()
    assert row is not None  # noqa: S101 - a SELECT without FROM answers one row
    spl, loader, available, installed, exists, superuser = row
    hypertable = False
    if installed and exists:
        cur = await conn.execute(_IS_HYPERTABLE)
        found = await cur.fetchone()
        hypertable = bool(found and found[0])
    return ServerFacts(
        spl, bool(loader), available, installed, bool(exists), hypertable, bool(superuser)
    )


class ExtensionNotCreatable(Exception):
    """TimescaleDB is there to be used, but the migrating role may not create the extension."""


def choose(facts: ServerFacts) -> Layout:
    """The layout a new schema gets on this server.

    Raises `ExtensionNotCreatable` where TimescaleDB is preloaded but neither created in the
    database nor creatable by this role (a superuser's step): a layout is never converted later,
    so quietly choosing native partitions there would be the wrong default for good.
    """
    if facts.available and facts.preloaded and not facts.installed and not facts.superuser:
        raise ExtensionNotCreatable(
            f"TimescaleDB {facts.available} is preloaded on this server, but only a superuser may"
            " create the extension: run CREATE EXTENSION timescaledb in this database as a"
            " superuser, then migrate again"
        )
    if facts.available and facts.preloaded:
        return Layout(
            TIMESCALEDB,
            f"TimescaleDB {facts.installed or facts.available} is installed and preloaded"
            " (shared_preload_libraries): telemetry is a hypertable with compression, retention"
            " and a continuous aggregate",
        )
    if facts.available:
        return Layout(
            NATIVE,
            f"TimescaleDB {facts.available} is installed but not in shared_preload_libraries,"
            " where CREATE EXTENSION would end the connection: telemetry uses native daily"
            " partitions (preload it and restart the server before the first migration to use"
            " TimescaleDB)",
        )
    return Layout(
        NATIVE,
        "TimescaleDB is not installed on this server: telemetry uses native daily partitions",
    )


def current(facts: ServerFacts) -> Layout:
    """The layout of an existing schema (or, before the first migration, the one it will get)."""
    if facts.hypertable:
        return Layout(
            TIMESCALEDB,
            f"telemetry is a TimescaleDB {facts.installed} hypertable (compression, retention"
            " and the telemetry_1m continuous aggregate)",
        )
    if facts.telemetry_exists and facts.available and facts.preloaded:
        return Layout(
            NATIVE,
            "telemetry uses native daily partitions: the schema was created before TimescaleDB"
            " was available here, and no migration converts it",
        )
    return choose(facts)
