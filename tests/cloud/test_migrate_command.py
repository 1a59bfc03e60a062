"""``python -m cloud migrate`` applies the schema, idempotently, on both backends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from cloud.storage import pg_schema, sqlite
from cloud.storage.pg_layout import (
    NATIVE,
    TIMESCALEDB,
    ExtensionNotCreatable,
    ServerFacts,
    choose,
    current,
)
from tests.cloud.conftest import engine_param
from tests.conftest import EngineDatabases
from tests.pg_engines import without_preload

SQLITE_LATEST = max(version for version, _, _ in sqlite.MIGRATIONS)
PG_LATEST = max(version for version, _, _ in pg_schema.MIGRATIONS)

ROOT = Path(__file__).resolve().parents[2]


def _migrate(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud", "migrate", "--database-url", url],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def test_migrate_sqlite_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    first, second = _migrate(url), _migrate(url)
    assert first.returncode == second.returncode == 0, first.stderr
    assert second.stdout.strip() == f"sqlite schema at version {SQLITE_LATEST}"


def test_migrate_postgres_twice(pg_engine: str, engine_databases: EngineDatabases) -> None:
    url = engine_databases.database(pg_engine, "tagway_migrate")
    first, second = _migrate(url), _migrate(url)
    assert first.returncode == second.returncode == 0, first.stderr
    assert f"version {PG_LATEST}" in second.stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (PG_LATEST,)


@pytest.mark.parametrize("pg_engine", [engine_param("timescaledb")])
def test_without_preload_the_migration_chooses_native_partitions_and_says_why(
    pg_engine: str, engine_databases: EngineDatabases
) -> None:
    # the extension's files are there, but the library is not preloaded: CREATE EXTENSION would
    # end the connection ("FATAL: extension "timescaledb" must be preloaded")
    with without_preload(engine_databases.server(pg_engine)) as admin:
        with psycopg.connect(admin, autocommit=True) as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone() == (1,)
            conn.execute("CREATE DATABASE tagway")
        url = psycopg.conninfo.make_conninfo(admin, dbname="tagway")
        result = _migrate(url)
        assert result.returncode == 0, result.stderr
        assert "not in shared_preload_libraries" in result.stdout
        assert "native daily partitions" in result.stdout
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "SELECT relkind FROM pg_class WHERE relname = 'telemetry'"
            ).fetchone() == ("p",)
            assert conn.execute(
                "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone() == (0,)


def test_the_layout_is_chosen_from_what_the_server_offers() -> None:
    facts = {"preload_setting": None, "loader_settings": False, "available": None,
             "installed": None, "telemetry_exists": False, "hypertable": False}  # fmt: skip
    assert choose(ServerFacts(**facts)).kind == NATIVE
    offered = facts | {"available": "2.28.3"}
    assert choose(ServerFacts(**offered)).kind == NATIVE  # not preloaded
    preloaded = offered | {"preload_setting": 'pg_stat_statements, "$libdir/timescaledb"'}
    assert choose(ServerFacts(**preloaded, superuser=True)).kind == TIMESCALEDB
    hidden = offered | {"loader_settings": True}  # shared_preload_libraries hidden from this role
    assert choose(ServerFacts(**hidden, superuser=True)).kind == TIMESCALEDB
    with pytest.raises(ExtensionNotCreatable, match="as a superuser"):
        choose(ServerFacts(**hidden))
    created = hidden | {"installed": "2.28.3"}
    assert choose(ServerFacts(**created)).kind == TIMESCALEDB
    # an existing schema keeps its layout, whatever the server offers now
    native_schema = created | {"telemetry_exists": True}
    layout = current(ServerFacts(**native_schema))
    assert (layout.kind, "created before TimescaleDB" in layout.reason) == (NATIVE, True)
    assert current(ServerFacts(**native_schema | {"hypertable": True})).kind == TIMESCALEDB


def test_migrate_reports_an_unreachable_database() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _migrate(f"postgresql://nobody@127.0.0.1:{port}/none?connect_timeout=2")
    assert result.returncode == 1
    assert result.stderr.startswith("error: PostgreSQL migration failed")
