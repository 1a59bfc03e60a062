"""The distributed mode on a Citus coordinator with two workers: telemetry spread by series over
the workers, an existing single-node schema distributed in place by `migrate` without losing or
changing an answer, and `--distribute` refused with a reason where there is no Citus."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cloud.api.app import create_app
from cloud.contract import Batch, SeriesColumns
from cloud.errors import StorageError
from cloud.settings import CloudSettings
from cloud.storage.pg_migrate import apply_migrations
from cloud.storage.postgres import PostgresDatabase
from tests.cloud.conftest import PLATFORM_KEY, Cloud, app_dsn, engine_param, make_batch, now_us
from tests.conftest import EngineDatabases

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400_000_000


def _migrate(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud", "migrate", "--database-url", url, *flags],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=120,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def _rows_per_node(owner: str) -> dict[int, int]:
    with psycopg.connect(owner) as conn:
        rows = conn.execute(
            "SELECT nodeport, result::bigint FROM run_command_on_shards('telemetry',"
            " 'SELECT count(*) FROM %s') r JOIN citus_shards s USING (shardid)"
        ).fetchall()
    per_node: dict[int, int] = {}
    for port, count in rows:
        per_node[int(port)] = per_node.get(int(port), 0) + int(count)
    return per_node


@asynccontextmanager
async def _cloud(dsn: str) -> AsyncIterator[Cloud]:
    settings = CloudSettings(database_url=app_dsn(dsn), platform_admin_key=PLATFORM_KEY)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        yield Cloud(client)


async def _populate(dsn: str) -> str:
    """A tenant, a gateway and 30 readings of each of 40 series; the tenant's admin key."""
    async with _cloud(dsn) as cloud:
        tenant = await cloud.tenant("acme")
        gw = await cloud.gateway(tenant)
        devices = [f"pump{i}" for i in range(20)]
        batch = make_batch(gw[0], 1, devices=devices, n=30, start=now_us() - DAY // 2)
        assert (await cloud.send(gw, batch)).json()["stored"] == 20 * 2 * 30
        return tenant.admin


async def _answers(dsn: str, key: str, *, days: int = 1) -> dict[str, Any]:
    """Everything the tenant's user reads about its telemetry (the last `days`), through the
    API."""
    async with _cloud(dsn) as cloud:
        out: dict[str, Any] = {"series": (await cloud.get(key, "/v1/series")).json()}
        for device in (await cloud.get(key, "/v1/devices")).json():
            latest = await cloud.get(key, f"/v1/devices/{device['id']}/latest")
            out[f"latest {device['name']}"] = latest.json()
        window = {"start": now_us() - days * DAY, "end": now_us() + DAY}
        for s in out["series"]:
            path = f"/v1/series/{s['id']}"
            out[f"raw {s['id']}"] = (await cloud.get(key, f"{path}/raw", **window)).json()
            agg = await cloud.get(key, f"{path}/aggregate", bucket="1h", **window)
            out[f"agg {s['id']}"] = agg.json()
        out["usage"] = (await cloud.get(key, "/v1/usage")).json()
        for day in out["usage"]["days"]:
            day.pop("api_calls")  # reading the answers is itself an API call
        return out


@pytest.mark.parametrize("pg_engine", [engine_param("citus")])
async def test_migrate_distributes_an_existing_schema_and_every_answer_stays(
    pg_engine: str, engine_databases: EngineDatabases
) -> None:
    server = engine_databases.server(pg_engine)
    name = f"tagway_later_{os.getpid()}"
    owner = server.create_database(name, citus=False)  # a single-node schema, as before Citus
    try:
        assert (await apply_migrations(owner, CloudSettings())).layout.kind == "native"
        key = await _populate(owner)
        before = await _answers(owner, key)

        server.add_citus(name)  # the operator installs Citus and adds two workers
        done = _migrate(owner)
        assert done.returncode == 0, done.stderr
        assert "telemetry is distributed by series over 2 nodes" in done.stdout

        assert await _answers(owner, key) == before
        per_node = _rows_per_node(owner)
        assert len(per_node) == 2, per_node  # both workers hold readings
        assert sum(per_node.values()) == 20 * 2 * 30
        again = _migrate(owner)  # and once is enough
        assert (again.returncode, "is distributed" in again.stdout) == (0, True), again.stderr
    finally:
        server.drop_database(name)


@pytest.mark.parametrize("pg_engine", [engine_param("postgres")])
def test_distribute_without_citus_is_refused_with_the_reason(
    pg_engine: str, engine_databases: EngineDatabases
) -> None:
    owner = engine_databases.database(pg_engine, "tagway_nocitus")
    result = _migrate(owner, "--distribute")
    assert result.returncode == 1
    assert result.stderr.startswith("error: PostgreSQL migration refused: --distribute needs Citus")
    with psycopg.connect(owner) as conn:  # refused before anything was created
        assert conn.execute("SELECT to_regclass('telemetry')").fetchone() == (None,)


def _access_methods(owner: str) -> dict[str, str]:
    with psycopg.connect(owner) as conn:
        rows = conn.execute(
            "SELECT c.relname, a.amname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_am a ON a.oid = c.relam WHERE i.inhparent = 'telemetry'::regclass"
        ).fetchall()
    return dict(rows)


def _day_name(day: int) -> str:
    return "telemetry_p" + time.strftime("%Y%m%d", time.gmtime(day * 86_400))


def _count(owner: str) -> int:
    with psycopg.connect(owner) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("backend", [engine_param("citus")])
async def test_old_days_become_columnar_and_answers_dedup_and_retention_keep_working(
    backend: str, settings_for: Any
) -> None:
    settings = settings_for(retention_interval_s=0)
    owner = settings.migrate_database_url
    today = now_us() // DAY
    first = (today - 5) * DAY + 300_000_000
    devices = [f"pump{i}" for i in range(5)]

    def readings(seq: int, start: int, n: int, devices: list[str] = devices) -> Any:
        # every 10 minutes: 144 readings a day of each (device, tag)
        return make_batch(gw[0], seq, devices=devices, n=n, start=start, step=600_000_000)

    async with _cloud(owner) as cloud:
        tenant = await cloud.tenant("acme")
        gw = await cloud.gateway(tenant)
        stored = await cloud.send(gw, readings(1, first, 5 * 144))  # the five days before today
        assert stored.json()["stored"] == 10 * 720
    before = await _answers(owner, tenant.admin, days=6)

    db = await PostgresDatabase.open(settings)
    try:
        converted = await db.compress_telemetry(after_days=2)
        assert converted == [_day_name(d) for d in (today - 5, today - 4, today - 3)]
        assert await db.compress_telemetry(after_days=2) == []  # once is enough
        methods = _access_methods(owner)
        assert {methods[_day_name(d)] for d in (today - 5, today - 4, today - 3)} == {"columnar"}
        assert {methods[_day_name(d)] for d in (today - 2, today - 1, today)} == {"heap"}
        assert await _answers(owner, tenant.admin, days=6) == before

        async with _cloud(owner) as cloud:
            replay = await cloud.send(gw, readings(2, first, 5 * 144))  # the same, a new seq
            assert replay.json()["stored"] == 0
            late = (today - 4) * DAY + 1  # new readings of a columnar day: stored once each
            assert (await cloud.send(gw, readings(3, late, 2, ["pump0"]))).json()["stored"] == 4
            assert (await cloud.send(gw, readings(4, late, 3, ["pump0"]))).json()["stored"] == 2
            big = Batch(
                str(gw[0]), 5, now_us(), [SeriesColumns("plc", "counter", [late], [2**63 - 1])]
            )
            assert (await cloud.send(gw, big)).json()["stored"] == 1  # an exact integer, late
            assert (await cloud.send(gw, replace(big, seq=6))).json()["stored"] == 0
            assert _count(owner) == 10 * 720 + 7
            # a device deleted: its readings go from the row-stored days at once, and from the
            # columnar days (unreachable meanwhile) when retention drops them
            pump4 = next(d for d in (await cloud.get(tenant.admin, "/v1/devices")).json()
                         if d["name"] == "pump4")  # fmt: skip
            headers = cloud.auth(tenant.admin)
            gone = await cloud.client.delete(f"/v1/devices/{pump4['id']}", headers=headers)
            assert gone.status_code == 204, gone.text
            assert _count(owner) == 10 * 720 + 7 - 2 * 2 * 144
        with (
            psycopg.connect(app_dsn(owner)) as app,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            app.execute(f"SELECT count(*) FROM {_day_name(today - 4)}")  # noqa: S608

        dropped = await db.drop_telemetry(keep_days=4, now_us=now_us())
        assert dropped.partitions == [_day_name(today - 5)]
        assert _count(owner) == 10 * 720 + 7 - 2 * 2 * 144 - 10 * 144
    finally:  # columnar days refuse the DELETE that empties the tables before each test
        await db.drop_telemetry(keep_days=1, now_us=now_us())
        await db.close()


@pytest.mark.parametrize("pg_engine", [engine_param("citus")])
async def test_a_schema_distributed_before_columnar_upgrades_in_place(
    pg_engine: str, engine_databases: EngineDatabases, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud.storage import pg_migrate  # noqa: PLC0415 - the migration list is patched

    owner = engine_databases.database(pg_engine, "tagway_v7")
    newest = pg_migrate.MIGRATIONS[-1][0]
    # The release before: migrations 1-8, no key moved (and the later ones this code's queries
    # need, which do not touch the keys: the exact-integer column).
    without_columnar = [m for m in pg_migrate.MIGRATIONS if m[0] != 9]
    with monkeypatch.context() as before:
        before.setattr(pg_migrate, "MIGRATIONS", without_columnar)
        before.setattr(pg_migrate, "PREPARE_DISTRIBUTED", ())
        assert (await apply_migrations(owner, CloudSettings())).version == newest
    key = await _populate(owner)
    answers = await _answers(owner, key)
    assert (await apply_migrations(owner, CloudSettings())).version == newest
    with psycopg.connect(owner) as conn:
        keys = conn.execute(
            "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'p'"
            " AND conrelid IN (SELECT 'telemetry'::regclass UNION ALL"
            " SELECT inhrelid FROM pg_inherits WHERE inhparent = 'telemetry'::regclass)"
        ).fetchall()
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'telemetry'::regclass"
        ).fetchone()
    with psycopg.connect(owner) as conn:  # connections to the workers are kept
        cached = conn.execute("SHOW citus.max_cached_conns_per_worker").fetchone()
    assert cached == ("16",)
    assert "telemetry" not in {k for (k,) in keys}  # the parent has no key any more...
    assert (len(keys),) == partitions  # ...every partition has its own
    assert await _answers(owner, key) == answers
    async with _cloud(owner) as cloud:  # ingest, and a replay under a new seq stores nothing
        gw = await cloud.gateway(await cloud.tenant("later"))
        start = now_us() - 100 * 1_000_000
        first = make_batch(gw[0], 1, n=50, start=start)
        assert (await cloud.send(gw, first)).json()["stored"] == 2 * 50
        overlapping = make_batch(gw[0], 2, n=60, start=start)  # 50 of each series stored
        assert (await cloud.send(gw, overlapping)).json()["stored"] == 2 * 10


@pytest.mark.parametrize("pg_engine", [engine_param("postgres")])
async def test_a_telemetry_node_without_citus_is_refused_with_the_reason(
    pg_engine: str, migrated_pg: str
) -> None:
    owner = migrated_pg
    settings = CloudSettings(database_url=app_dsn(owner), telemetry_database_url=app_dsn(owner))
    with pytest.raises(StorageError, match="needs telemetry distributed over Citus"):
        await PostgresDatabase.open(settings)
