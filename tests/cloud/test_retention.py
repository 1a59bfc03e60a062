"""Telemetry retention: a pass removes what is older than the retention, keeps everything newer
(still served by the API), never touches today, and is safe to repeat and to run from two
replicas at once. On PostgreSQL the app role drops whole days only through the function: native
daily partitions, or TimescaleDB's daily chunks (of telemetry and of its continuous aggregate),
whose retention policies follow `retention_days`."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from typing import Any

import psycopg
import pytest

from cloud.contract import Batch, SeriesColumns
from cloud.settings import CloudSettings
from cloud.storage import open_database
from cloud.storage.postgres import PostgresDatabase
from cloud.storage.records import RetentionResult
from cloud.storage.sqlite import SqliteDatabase
from tests.cloud.conftest import APP_ROLE, Cloud, app_dsn, engine_param, now_us

pytestmark = pytest.mark.integration
pg = pytest.mark.postgres

DAY = 86_400_000_000
KEEP = 10
OLD_AGES = (30.0, 20.0, 15.0, 12.0)  # days before now: older than KEEP, whole days before it
NEW_AGES = (8.0, 5.0, 2.0, 0.5, 0.0)


def _partition(ts: int) -> str:
    return "telemetry_p" + dt.datetime.fromtimestamp(ts / 1e6, tz=dt.UTC).strftime("%Y%m%d")


def _iso_day(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts / 1e6, tz=dt.UTC).date().isoformat()


def day_label(backend: str, ts: int) -> str:
    """How a pass names the day holding `ts`: its partition, or (TimescaleDB) its date."""
    return _iso_day(ts) if backend == "timescaledb" else _partition(ts)


def stored_days(owner: Any, backend: str) -> set[int]:
    """The UTC days telemetry has a partition (or a TimescaleDB chunk) for."""
    if backend == "timescaledb":
        rows = owner.execute(
            "SELECT range_start_integer / %s FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'telemetry'",
            [DAY],
        ).fetchall()
        return {int(r[0]) for r in rows}
    rows = owner.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'telemetry'::regclass"
    ).fetchall()
    epoch = dt.date(1970, 1, 1)
    return {(dt.date.fromisoformat(r[0].removeprefix("telemetry_p")) - epoch).days for r in rows}


def unused_day(owner: Any) -> int:
    """A day of the last 100 (not the last 60) that has no TimescaleDB chunk yet."""
    used = {
        int(r[0])
        for r in owner.execute(
            "SELECT range_start_integer / %s FROM timescaledb_information.chunks", [DAY]
        ).fetchall()
    }
    today = now_us() // DAY
    return next(d for d in range(today - 60, today - 100, -1) if d not in used)


def make_days(owner: Any, backend: str, days: list[int]) -> None:
    """Give telemetry storage for these days, as the owner (TimescaleDB: one row makes a chunk)."""
    if backend == "timescaledb":
        for d in days:
            owner.execute("INSERT INTO telemetry VALUES (0, 0, %s, 1.0, NULL, 0)", [d * DAY])
    else:
        owner.execute("SELECT tagway_ensure_partitions(%s::bigint[])", [days])


def _batch(gateway_id: int, seq: int, stamps: list[int]) -> Batch:
    series = SeriesColumns(
        device="pump1", tag="flow", ts=sorted(stamps), values=[1.5] * len(stamps),
        qualities=[0] * len(stamps), unit="m3/h",
    )  # fmt: skip
    return Batch(str(gateway_id), seq, now_us(), [series])


async def _old_and_new(cloud: Cloud) -> tuple[str, tuple[int, str], int, dict[str, int]]:
    """A tenant with one series holding readings of OLD_AGES and NEW_AGES days ago."""
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    now = now_us()
    stamps = {"old": [now - int(a * DAY) for a in OLD_AGES]}
    stamps["new"] = [now - int(a * DAY) - 1000 for a in NEW_AGES]
    r = await cloud.send(gw, _batch(gw[0], 1, stamps["old"] + stamps["new"]))
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == len(OLD_AGES) + len(NEW_AGES)
    series = (await cloud.get(tenant.admin, "/v1/series")).json()[0]["id"]
    return tenant.admin, gw, series, {"old": min(stamps["old"]), "new": min(stamps["new"])}


async def _stored(cloud: Cloud, key: str, series: int) -> list[int]:
    r = await cloud.get(
        key, f"/v1/series/{series}/raw", start=now_us() - 60 * DAY, end=now_us() + DAY, limit=100
    )
    assert r.status_code == 200, r.text
    return [p["ts"] for p in r.json()["points"]]


async def _pass(settings: CloudSettings, keep_days: int, **kw: Any) -> RetentionResult:
    db = await open_database(settings)
    try:
        return await db.drop_telemetry(keep_days=keep_days, now_us=now_us(), **kw)
    finally:
        await db.close()


def _old_partitions(now: int) -> set[str]:
    return {_partition(now - int(a * DAY)) for a in OLD_AGES}


async def test_a_pass_removes_old_readings_and_keeps_the_rest(
    make_cloud: Any, settings_for: Any, backend: str, owner_conn: Any
) -> None:
    cloud = await make_cloud(max_age_days=60, retention_interval_s=0)
    key, _, series, _ = await _old_and_new(cloud)
    before = await _stored(cloud, key, series)
    settings = settings_for()

    first = await _pass(settings, KEEP)

    after = await _stored(cloud, key, series)
    assert after == before[len(OLD_AGES) :]  # exactly the new readings, all of them
    cutoff = now_us() - KEEP * DAY
    assert all(ts >= cutoff for ts in after)
    latest = (await cloud.get(key, "/v1/devices")).json()[0]["id"]
    assert (await cloud.get(key, f"/v1/devices/{latest}/latest")).json()[0]["ts"] == after[-1]
    if backend == "sqlite":
        assert (first.method, first.rows_deleted) == ("rows", len(OLD_AGES))
    else:
        old_days = {(now_us() - int(a * DAY)) // DAY for a in OLD_AGES}
        assert old_days <= set(first.days)
        assert now_us() // DAY not in first.days
        assert not old_days & stored_days(owner_conn, backend)
        assert len(first.partitions) == len(first.days)
        if backend == "timescaledb":
            assert first.method == "chunks"
            # the aggregate lost the same days: it answers what the raw rows answer
            r = await cloud.get(key, f"/v1/series/{series}/aggregate", bucket="1d",
                                start=now_us() - 60 * DAY, end=now_us() + DAY)  # fmt: skip
            assert sum(b["count"] for b in r.json()) == len(after)
        else:
            assert first.method == "partitions"
            assert _old_partitions(now_us()) <= set(first.partitions)

    second = await _pass(settings, KEEP)
    assert (second.partitions, second.rows_deleted) == ([], 0)
    assert await _stored(cloud, key, series) == after


async def test_today_survives_a_retention_of_one_day(
    make_cloud: Any, settings_for: Any, owner_conn: Any, backend: str
) -> None:
    cloud = await make_cloud(retention_interval_s=0)
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    just_now = now_us() - 1000
    assert (await cloud.send(gw, _batch(gw[0], 1, [just_now]))).status_code == 200
    series = (await cloud.get(tenant.admin, "/v1/series")).json()[0]["id"]

    result = await _pass(settings_for(), 1)

    assert just_now // DAY not in result.days
    assert result.rows_deleted == 0
    assert await _stored(cloud, tenant.admin, series) == [just_now]
    if owner_conn is not None:  # not even the owner can make the function drop today
        for keep in (0, -5):
            rows = owner_conn.execute("SELECT * FROM tagway_drop_partitions(%s, false)", [keep])
            assert now_us() // DAY not in {r[1] for r in rows.fetchall()}
        assert now_us() // DAY in stored_days(owner_conn, backend)


async def test_a_replica_ingests_into_a_day_another_replica_dropped(
    make_cloud: Any, settings_for: Any, backend: str
) -> None:
    cloud = await make_cloud(max_age_days=60, retention_interval_s=0)
    key, gw, series, stamps = await _old_and_new(cloud)
    await _pass(settings_for(), KEEP)  # another replica: this one still thinks the day exists

    late = _batch(gw[0], 2, [stamps["old"]])
    first = await cloud.send(gw, late)
    if backend in ("postgres", "citus"):  # refused once (the gateway retries 503), then made again
        assert (first.status_code, first.json()["error"]["code"]) == (503, "storage_unavailable")
        first = await cloud.send(gw, late)
    # TimescaleDB makes the chunk again by itself; SQLite has no days to make
    assert first.status_code == 200, first.text
    assert stamps["old"] in await _stored(cloud, key, series)


@pg
async def test_two_replicas_at_once_drop_each_partition_once(
    migrated_pg: str, pg_engine: str
) -> None:
    settings = CloudSettings(database_url=app_dsn(migrated_pg))
    dbs = [await PostgresDatabase.open(settings), await PostgresDatabase.open(settings)]
    try:
        today = now_us() // DAY
        old = [today - 40, today - 39, today - 38]
        with psycopg.connect(migrated_pg, autocommit=True) as owner:
            make_days(owner, pg_engine, old)
        results = await asyncio.gather(
            *(db.drop_telemetry(keep_days=KEEP, now_us=now_us()) for db in dbs)
        )
        dropped = [set(r.days) for r in results]
        assert set(old) <= dropped[0] | dropped[1]
        assert not dropped[0] & dropped[1]
        again = await dbs[1].drop_telemetry(keep_days=KEEP, now_us=now_us())
        assert again.partitions == []
    finally:
        for db in dbs:
            await db.close()


@pg
async def test_the_app_role_drops_days_only_through_the_function(
    migrated_pg: str, pg_engine: str
) -> None:
    old = now_us() // DAY - 50
    with psycopg.connect(migrated_pg, autocommit=True) as owner:
        make_days(owner, pg_engine, [old])
        definer, owned_by_app = owner.execute(
            "SELECT p.prosecdef, pg_get_userbyid(p.proowner) = %s FROM pg_proc p"
            " WHERE p.proname = 'tagway_drop_partitions'",
            [APP_ROLE],
        ).fetchone() or (None, None)
        assert (definer, owned_by_app) == (True, False)
        assert owner.execute(
            "SELECT has_function_privilege('public',"
            " 'tagway_drop_partitions(integer, boolean)', 'EXECUTE')"
        ).fetchone() == (False,)
        name = _storage_of_day(owner, pg_engine, old)
    with psycopg.connect(app_dsn(migrated_pg), autocommit=True) as app:
        attempts = [f"DROP TABLE {name}"]
        if pg_engine == "timescaledb":
            attempts.append(f"SELECT drop_chunks('telemetry', older_than => {(old + 1) * DAY})")
        else:
            attempts.append(f"ALTER TABLE telemetry DETACH PARTITION {name}")
        for sql in attempts:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(sql)
        rows = app.execute("SELECT day FROM tagway_drop_partitions(%s, false)", [KEEP])
        assert old in {r[0] for r in rows.fetchall()}
        assert app.execute("SELECT to_regclass(%s)", [name]).fetchone() == (None,)


def _storage_of_day(owner: Any, backend: str, day: int) -> str:
    if backend == "timescaledb":
        row = owner.execute(
            "SELECT format('%%I.%%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'telemetry' AND range_start_integer = %s",
            [day * DAY],
        ).fetchone()
        assert row is not None
        return str(row[0])
    return _partition(day * DAY)


@pytest.mark.parametrize("backend", [engine_param("timescaledb")], indirect=True)
async def test_timescaledb_policies_follow_retention_days(
    make_cloud: Any, owner_conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def policies() -> dict[str, int]:
        rows = owner_conn.execute(
            "SELECT hypertable_name, (config ->> 'drop_after')::bigint FROM"
            " timescaledb_information.jobs WHERE proc_name = 'policy_retention'"
        ).fetchall()
        return {str(r[0]): int(r[1]) // DAY for r in rows}

    caplog.set_level(logging.INFO, logger="tagway.cloud")
    await make_cloud(retention_days=90, retention_interval_s=0)
    assert policies() == {"telemetry": 90, "telemetry_1m": 90}
    assert any("retention policy: now 90 days (was " in r.getMessage() for r in caplog.records)
    await make_cloud(retention_days=30, retention_interval_s=0)
    assert policies() == {"telemetry": 30, "telemetry_1m": 30}


async def test_the_service_runs_retention_at_start_and_reports_it(
    make_cloud: Any, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = await make_cloud(max_age_days=60, retention_interval_s=0)
    key, _, series, _ = await _old_and_new(writer)
    caplog.set_level(logging.INFO, logger="tagway.cloud.retention")

    replica = await make_cloud(retention_days=KEEP, retention_interval_s=3600)
    for _ in range(200):
        metrics = (await replica.client.get("/metrics")).text
        if 'tagway_cloud_retention_runs_total{result="ok"} 1.0' in metrics:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"no retention pass reported: {metrics}")

    assert len(await _stored(replica, key, series)) == len(NEW_AGES)
    last_run = re.search(
        r"^tagway_cloud_retention_last_run_timestamp_seconds (\S+)$", metrics, re.M
    )
    assert last_run is not None
    assert abs(float(last_run.group(1)) - now_us() / 1e6) < 60
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    if backend != "sqlite":
        assert "tagway_cloud_retention_partitions_dropped_total 0.0" not in metrics
        label = day_label(backend, now_us() - 30 * DAY)
        assert any(label in m for m in messages), messages
    else:
        assert f"tagway_cloud_retention_rows_deleted_total {len(OLD_AGES)}.0" in metrics
        assert any(f"deleted {len(OLD_AGES)} readings" in m for m in messages), messages


async def test_sqlite_deletes_in_batches_and_leaves_the_rest(tmp_path: Any) -> None:
    db = SqliteDatabase.open(tmp_path / "c.db")
    try:
        now = now_us()
        async with db.transaction(None) as tx:
            await tx.execute("INSERT INTO tenants (name, created_at) VALUES ('t', 0)")
            await tx.execute(
                "INSERT INTO gateways (tenant_id, name, created_at) VALUES (1, 'g', 0)"
            )
            await tx.execute(
                "INSERT INTO devices (tenant_id, gateway_id, name, created_at)"
                " VALUES (1, 1, 'd', 0)"
            )
            for tag in ("a", "b", "c"):
                await tx.execute(
                    "INSERT INTO series (tenant_id, gateway_id, device_id, tag, created_at)"
                    " VALUES (1, 1, 1, %s, 0)",
                    [tag],
                )
        old = [(1, sid, now - 20 * DAY + i, 1.0, None, 0) for sid in (1, 2, 3) for i in range(7000)]
        new = [(1, sid, now - DAY + i, 1.0, None, 0) for sid in (1, 2, 3) for i in range(10)]
        async with db.transaction(None):
            # seeded directly: this test is about the storage layer, not about ingest
            db._conn.executemany(
                "INSERT INTO telemetry (tenant_id, series_id, ts, value_num, value_text, quality)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                old + new,
            )

        dry = await db.drop_telemetry(keep_days=KEEP, now_us=now, dry_run=True)
        assert (dry.dry_run, dry.rows_deleted) == (True, len(old))
        result = await db.drop_telemetry(keep_days=KEEP, now_us=now)

        assert result.rows_deleted == len(old)
        async with db.transaction(None) as tx:
            left = await tx.fetch("SELECT series_id, ts FROM telemetry ORDER BY series_id, ts")
            assert left == [(r[1], r[2]) for r in new]
            assert await tx.fetchone("SELECT count(*) FROM series") == (3,)
    finally:
        await db.close()
