"""``python -m cloud migrate`` applies the schema, idempotently, on both backends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg

from cloud.storage import pg_schema, sqlite
from tests.cloud.conftest import EngineDatabases

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


def test_migrate_reports_an_unreachable_database() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _migrate(f"postgresql://nobody@127.0.0.1:{port}/none?connect_timeout=2")
    assert result.returncode == 1
    assert result.stderr.startswith("error: PostgreSQL migration failed")
