"""How telemetry is stored on a PostgreSQL server, and why: native daily partitions, a
TimescaleDB hypertable, or native daily partitions distributed by series over a Citus cluster.

The choice is made once, by the first migration, from what the server offers; afterwards the
schema says what it is and nothing flips it. TimescaleDB is used only when its files are
installed *and* its library is preloaded: `CREATE EXTENSION timescaledb` on a server that does
not preload it ends the connection (``FATAL: extension "timescaledb" must be preloaded``).
``shared_preload_libraries`` is visible to superusers (and ``pg_read_all_settings``) only; for
other roles the loader's own settings (``timescaledb.max_background_workers``), which exist
only where the library is preloaded, answer the same question.

Citus is the operator's choice (`tagway cloud migrate --distribute`) or follows from the `citus`
extension in the database; it distributes an existing native schema too (Citus copies the rows
into its shards), never a hypertable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import psycopg

NATIVE: Final = "native"
TIMESCALEDB: Final = "timescaledb"
DISTRIBUTED: Final = "distributed"

_PROBE: Final = """
SELECT (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'),
       current_setting('timescaledb.max_background_workers', true) IS NOT NULL,
       (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
       (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
       to_regclass('telemetry') IS NOT NULL,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       (SELECT extversion FROM pg_extension WHERE extname = 'citus'),
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citus')
         AND current_setting('citus.shard_count', true) IS NOT NULL
"""
_CITUS: Final = """
SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass('telemetry')),
       (SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND shouldhaveshards)
"""
_IS_HYPERTABLE: Final = """
SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
               WHERE format('%I.%I', hypertable_schema, hypertable_name)::regclass
                     = 'telemetry'::regclass)
"""


@dataclass(frozen=True, slots=True)
class Layout:
    """The telemetry layout (`NATIVE`, `TIMESCALEDB` or `DISTRIBUTED`) and a sentence saying
    why."""

    kind: str
    reason: str

    @property
    def timescaledb(self) -> bool:
        """True when telemetry is (or will be) a TimescaleDB hypertable."""
        return self.kind == TIMESCALEDB

    @property
    def distributed(self) -> bool:
        """True when telemetry is (or will be) distributed by series over Citus nodes."""
        return self.kind == DISTRIBUTED


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
    citus: str | None = None
    citus_preloaded: bool = False
    distributed: bool = False
    shard_nodes: int = 0

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
    spl, loader, available, installed, exists, superuser, citus, citus_preloaded = row
    hypertable = False
    if installed and exists:
        cur = await conn.execute(_IS_HYPERTABLE)
        found = await cur.fetchone()
        hypertable = bool(found and found[0])
    distributed, nodes = False, 0
    if citus:
        cur = await conn.execute(_CITUS)
        found = await cur.fetchone()
        distributed, nodes = (bool(found[0]), int(found[1])) if found else (False, 0)
    return ServerFacts(
        spl, bool(loader), available, installed, bool(exists), hypertable, bool(superuser),
        citus, bool(citus_preloaded), distributed, nodes,
    )  # fmt: skip


class ExtensionNotCreatable(Exception):
    """The layout asked for or offered needs an extension this role or server cannot create."""


def _distributed(facts: ServerFacts, *, now: bool) -> Layout:
    nodes = f"{facts.shard_nodes} node{'s' if facts.shard_nodes != 1 else ''}"
    citus = f"Citus {facts.citus}" if facts.citus else "Citus"
    verb = "is" if now else "will be"
    return Layout(
        DISTRIBUTED,
        f"{citus}: telemetry {verb} distributed by series over {nodes} (native daily"
        " partitions in every shard); metadata stays on the coordinator",
    )


def target(facts: ServerFacts, *, distribute: bool = False) -> Layout:
    """The layout a migration brings the schema to: as it is, except that a native schema is
    distributed where the `citus` extension is in the database or `distribute` asks for it.

    Raises `ExtensionNotCreatable` when `distribute` asks for Citus where it is not preloaded,
    or for distributing a TimescaleDB hypertable.
    """
    if distribute and not facts.citus and not facts.citus_preloaded:
        raise ExtensionNotCreatable(
            "--distribute needs Citus: install it, add citus to shared_preload_libraries on the"
            " coordinator and every worker, restart them and add the workers (citus_add_node)"
        )
    if facts.distributed:
        return _distributed(facts, now=True)
    if facts.hypertable:
        if distribute:
            raise ExtensionNotCreatable("telemetry is a TimescaleDB hypertable; Citus cannot"
                                        " distribute it")  # fmt: skip
        return current(facts)
    if facts.citus or distribute:
        return _distributed(facts, now=False)
    return current(facts)


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
    if facts.distributed:
        return _distributed(facts, now=True)
    if facts.telemetry_exists and facts.citus:
        return Layout(
            NATIVE,
            f"Citus {facts.citus} is installed, but telemetry is not distributed yet: native daily"
            " partitions on the coordinator (run tagway cloud migrate to distribute it)",
        )
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
