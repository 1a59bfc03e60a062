"""Readings written through a Citus worker (`telemetry_database_url`): the coordinator keeps
the metadata, and a batch stays exactly once, with counts that are the rows stored, under
replays, overlaps, concurrent duplicates and attempts that stop between the transactions."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from cloud.contract import Batch
from cloud.errors import StorageError
from cloud.storage.postgres import PostgresDatabase
from tests.cloud.conftest import Cloud, app_dsn, engine_param, make_batch, now_us
from tests.conftest import EngineDatabases

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("backend", [engine_param("citus")])]
DAY = 86_400_000_000


def _worker(owner: str, engine_databases: EngineDatabases) -> str:
    """The app role's DSN of the same database on the first worker."""
    worker = engine_databases.server("citus").nodes[1]
    dbname = psycopg.conninfo.conninfo_to_dict(owner)["dbname"]
    return app_dsn(psycopg.conninfo.make_conninfo(worker, dbname=dbname))


def _stored(owner: str) -> tuple[int, int, int]:
    """(readings in telemetry, batches claimed through a worker, their stored counts)."""
    with psycopg.connect(owner) as conn:
        readings = conn.execute("SELECT count(*) FROM telemetry").fetchone()
        claims = conn.execute("SELECT count(*), coalesce(sum(stored), 0) FROM ingest_claim")
        row = claims.fetchone()
    assert readings is not None
    assert row is not None
    return int(readings[0]), int(row[0]), int(row[1])


def _app_sessions(worker: str) -> int:
    """Sessions of the app on the worker that are not Citus's own (the cloud's pool)."""
    with psycopg.connect(worker) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND usename = current_user AND application_name NOT LIKE 'citus%%'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _usage(cloud: Cloud, key: str) -> int:
    days = (await cloud.get(key, "/v1/usage")).json()["days"]
    return sum(int(d["readings"]) for d in days)


async def test_readings_through_a_worker_are_stored_once_and_counted(
    backend: str, owner_dsn: str, make_cloud: Any, engine_databases: EngineDatabases
) -> None:
    worker = _worker(owner_dsn, engine_databases)
    cloud = await make_cloud(telemetry_database_url=worker)
    assert _app_sessions(worker) >= 1  # the cloud holds connections to the worker
    ready = (await cloud.client.get("/readyz")).json()
    assert (ready["distributed"], ready["readings_through_worker"]) == (True, True)
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    start = now_us() - 200 * 1_000_000
    first = await cloud.send(gw, make_batch(gw[0], 1, n=50, start=start))
    assert first.status_code == 200, first.text
    assert (first.json()["stored"], first.json()["duplicate"]) == (100, False)
    again = (await cloud.send(gw, make_batch(gw[0], 1, n=50, start=start))).json()
    assert (again["duplicate"], again["stored"]) == (True, 100)
    assert (await cloud.send(gw, make_batch(gw[0], 2, n=50, start=start))).json()["stored"] == 0
    assert (await cloud.send(gw, make_batch(gw[0], 3, n=60, start=start))).json()["stored"] == 20
    late = make_batch(gw[0], 4, n=5, start=(now_us() // DAY - 3) * DAY)  # via the coordinator
    assert (await cloud.send(gw, late)).json()["stored"] == 10
    assert (await cloud.send(gw, make_batch(gw[0], 5, n=5, start=late.series[0].ts[0]))).json()[
        "stored"
    ] == 0
    nothing = Batch(str(gw[0]), 6, now_us(), [])  # no readings: no worker involved
    events = await cloud.send(gw, nothing)
    assert (events.status_code, events.json()["stored"], events.json()["duplicate"]) == (
        200, 0, False,
    )  # fmt: skip
    assert (await cloud.send(gw, nothing)).json()["duplicate"] is True
    assert _stored(owner_dsn) == (130, 5, 130)
    assert await _usage(cloud, tenant.admin) == 130
    assert len((await cloud.get(tenant.admin, "/v1/series")).json()) == 2


async def test_concurrent_duplicates_and_over_quota_batches_through_a_worker(
    backend: str, owner_dsn: str, make_cloud: Any, engine_databases: EngineDatabases
) -> None:
    cloud = await make_cloud(telemetry_database_url=_worker(owner_dsn, engine_databases))
    tenant = await cloud.tenant("acme", ingest_quota_per_day=150)
    gw = await cloud.gateway(tenant)
    batch = make_batch(gw[0], 1, devices=["a", "b"], n=25)
    answers = [r.json() for r in await asyncio.gather(*(cloud.send(gw, batch) for _ in range(3)))]
    assert sorted(a["duplicate"] for a in answers) == [False, True, True]
    assert {a["stored"] for a in answers} == {100}
    over = await cloud.send(gw, make_batch(gw[0], 2, n=30, start=now_us() - 10**9))
    assert (over.status_code, over.json()["error"]["code"]) == (429, "quota_exceeded")
    assert _stored(owner_dsn) == (100, 1, 100)  # the refused batch left nothing behind
    assert await _usage(cloud, tenant.admin) == 100


@pytest.mark.parametrize("stop", ["before the readings", "after the readings"])
async def test_an_attempt_that_stopped_halfway_is_finished_by_the_retry(  # noqa: PLR0917 - fixtures
    backend: str,
    owner_dsn: str,
    make_cloud: Any,
    engine_databases: EngineDatabases,
    monkeypatch: pytest.MonkeyPatch,
    stop: str,
) -> None:
    cloud = await make_cloud(telemetry_database_url=_worker(owner_dsn, engine_databases))
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    start = now_us() - 100 * 1_000_000
    assert (await cloud.send(gw, make_batch(gw[0], 1, n=20, start=start))).json()["stored"] == 40
    write = PostgresDatabase.write_batch_rows

    async def broken(self: PostgresDatabase, *args: Any) -> int:
        if stop == "after the readings":
            await write(self, *args)
        raise StorageError("postgresql: the link to the worker broke")

    batch = make_batch(gw[0], 2, n=30, start=start)  # 20 readings of each series stored already
    with monkeypatch.context() as patched:
        patched.setattr(PostgresDatabase, "write_batch_rows", broken)
        assert (await cloud.send(gw, batch)).status_code == 503
    assert _stored(owner_dsn)[0] == (60 if stop == "after the readings" else 40)
    retried = (await cloud.send(gw, batch)).json()
    assert (retried["duplicate"], retried["stored"]) == (False, 20)
    replayed = (await cloud.send(gw, batch)).json()
    assert (replayed["duplicate"], replayed["stored"]) == (True, 20)
    assert _stored(owner_dsn) == (60, 2, 60)
    assert await _usage(cloud, tenant.admin) == 60


async def test_a_retry_on_a_replica_without_the_worker_waits_for_one_with_it(
    backend: str,
    owner_dsn: str,
    make_cloud: Any,
    engine_databases: EngineDatabases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch begun through a worker and stopped halfway, retried on a replica that writes
    through the coordinator (a rolling upgrade, a replica not given the worker): that replica
    answers 503 `ingest_unfinished` instead of calling it a finished duplicate (the gateway would
    ack readings never stored); the retry that reaches a worker replica stores them."""
    split = await make_cloud(telemetry_database_url=_worker(owner_dsn, engine_databases))
    plain = await make_cloud()
    tenant = await split.tenant("acme")
    gw = await split.gateway(tenant)
    batch = make_batch(gw[0], 1, n=20, start=now_us() - 100 * 1_000_000)

    async def broken(self: PostgresDatabase, *args: Any) -> int:
        raise StorageError("postgresql: the link to the worker broke")

    with monkeypatch.context() as patched:
        patched.setattr(PostgresDatabase, "write_batch_rows", broken)
        assert (await split.send(gw, batch)).status_code == 503
    answer = await plain.send(gw, batch)
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "ingest_unfinished"
    assert _stored(owner_dsn)[0] == 0
    retried = (await split.send(gw, batch)).json()
    assert (retried["duplicate"], retried["stored"]) == (False, 40)
    assert _stored(owner_dsn) == (40, 1, 40)
