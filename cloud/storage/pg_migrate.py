"""PostgreSQL migrations as the schema owner: the versioned scripts of `pg_schema`, applied once
each under an advisory lock (several replicas may start at once), with the telemetry layout
(`pg_layout`) the schema has or gets, and telemetry distributed over Citus where that is the
layout."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from cloud.errors import StorageError
from cloud.settings import CloudSettings
from cloud.storage import citus
from cloud.storage.columnar import PREPARE_DISTRIBUTED
from cloud.storage.pg_layout import ExtensionNotCreatable, Layout, current, server_facts, target
from cloud.storage.pg_schema import MIGRATIONS

log = logging.getLogger("tagway.cloud.storage")


@dataclass(frozen=True, slots=True)
class Migrated:
    """The outcome of `apply_migrations`: the schema version and the telemetry layout."""

    version: int
    layout: Layout


async def apply_migrations(
    owner_dsn: str, settings: CloudSettings, *, distribute: bool = False
) -> Migrated:
    """Apply pending migrations as the schema owner; safe to run from several replicas at once.

    With `distribute` (or the `citus` extension in the database), telemetry ends up distributed
    by series over the Citus cluster; an existing native schema is distributed in place.
    """
    try:
        async with await psycopg.AsyncConnection.connect(owner_dsn, autocommit=True) as conn:
            await conn.execute("SELECT pg_advisory_lock(7360)")
            try:
                return await _migrate(conn, settings, distribute=distribute)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(7360)")
    except psycopg.Error as exc:
        raise StorageError(f"PostgreSQL migration failed: {exc}") from exc
    except ExtensionNotCreatable as exc:
        raise StorageError(f"PostgreSQL migration refused: {exc}") from exc


async def _migrate(
    conn: psycopg.AsyncConnection[Any], settings: CloudSettings, *, distribute: bool
) -> Migrated:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
        " name text NOT NULL, applied_at bigint NOT NULL)"
    )
    cur = await conn.execute("SELECT version FROM schema_migrations")
    done = {row[0] for row in await cur.fetchall()}
    # Decided from the schema once it exists (a migration never converts a hypertable), and
    # from what the server offers before that.
    facts = await server_facts(conn)
    layout = target(facts, distribute=distribute)
    if {v for v, _, _ in MIGRATIONS} - done or (layout.distributed and not facts.distributed):
        log.info("migrating: %s", layout.reason)
    for version, name, build in MIGRATIONS:
        if version in done:
            continue
        script = build(
            role=settings.app_role,
            timescaledb=layout.timescaledb,
            retention_days=settings.retention_days,
        )
        async with conn.transaction():
            await conn.execute(script.encode())
            await conn.execute(
                "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                [version, name, time.time_ns() // 1000],
            )
    if layout.distributed and not facts.distributed:
        await _distribute(conn, facts.citus)
        layout = current(await server_facts(conn))
    if layout.distributed:  # idempotent: also for a schema distributed by an older release
        async with conn.transaction():
            for statement in (*PREPARE_DISTRIBUTED, *citus.PREPARE_DISTRIBUTED):
                await conn.execute(statement.encode())
    return Migrated(max(v for v, _, _ in MIGRATIONS), layout)


async def _distribute(conn: psycopg.AsyncConnection[Any], citus: str | None) -> None:
    """Distribute telemetry by series. Its partitions, and those `tagway_ensure_partitions`
    makes later, are distributed with it; metadata stays in local tables on the coordinator,
    where row-level security and the SECURITY DEFINER functions work as they are."""
    if citus is None:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    await conn.execute("SELECT create_distributed_table('telemetry', 'series_id')")
