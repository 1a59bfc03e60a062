"""SQLite gets the protection PostgreSQL's request classes give (issue 15): one tenant flooding
ingest cannot keep another tenant's reads waiting behind its queue for the one connection (at
most `sqlite_ingest_writers` ingest transactions hold or wait for it; the others get 429
``ingest_busy``), and a statement past its class's timeout is interrupted, not waited for."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from cloud.errors import StorageError
from cloud.settings import DbClasses
from cloud.storage.base import request_class
from cloud.storage.sqlite import SqliteDatabase
from tests.cloud.conftest import Cloud, make_batch

pytestmark = pytest.mark.integration

FLOODERS = 12
N = 2000  # readings per series: 20,000 a batch, tens of milliseconds of the connection


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """SQLite only: PostgreSQL's classes are tested in test_request_classes.py."""
    return str(request.param)


Flood = tuple[list[float], list[int], list[tuple[int, Any]]]


async def flood_while_reading(cloud: Cloud, reads: int = 15) -> Flood:
    """Tenant A's gateways post batches of 20,000 readings as fast as they are answered while
    tenant B reads: B's read latencies (sorted) and statuses, A's (status, code) answers."""
    hammer = await cloud.tenant("hammer")
    gateways = [await cloud.gateway(hammer, f"gw{i}") for i in range(FLOODERS)]
    reader = await cloud.tenant("reader")
    own = await cloud.gateway(reader)
    assert (await cloud.send(own, make_batch(own[0], 1))).status_code == 200
    stop = asyncio.Event()
    flooding = asyncio.Event()
    answers: list[tuple[int, Any]] = []
    latencies: list[float] = []
    statuses: list[int] = []

    async def flood(gateway: tuple[int, str]) -> None:
        while not stop.is_set():
            seq = cloud.next_seq(gateway[0])
            batch = make_batch(gateway[0], seq, tags=[f"t{i}" for i in range(10)], n=N,
                               start=seq * 1_000_000_000, step=1000)  # fmt: skip
            r = await cloud.send(gateway, batch)
            answers.append((r.status_code, r.json()["error"]["code"] if r.status_code >= 400
                            else None))  # fmt: skip
            if len(answers) >= FLOODERS:
                flooding.set()

    floods = [asyncio.create_task(flood(gw)) for gw in gateways]
    try:
        await asyncio.wait_for(flooding.wait(), 60)
        for i in range(reads):
            path = ("/v1/devices", "/v1/gateways", "/v1/usage")[i % 3]
            started = time.perf_counter()
            r = await cloud.get(reader.admin, path)
            latencies.append(time.perf_counter() - started)
            statuses.append(r.status_code)
    finally:
        stop.set()
        await asyncio.gather(*floods)
    return sorted(latencies), statuses, answers


async def test_a_tenant_flooding_ingest_leaves_another_tenants_reads_answered(
    make_cloud: Any,
) -> None:
    cloud: Cloud = await make_cloud(
        default_rate_limit=1_000_000, max_age_days=400_000, sqlite_ingest_writers=2,
        db_classes={"ingest": {"statement_timeout_ms": 30_000, "pool_timeout_s": 0.2}},
    )  # fmt: skip
    latencies, statuses, answers = await flood_while_reading(cloud)
    assert set(statuses) == {200}
    assert all(status < 500 for status, _ in answers), answers
    assert (429, "ingest_busy") in answers  # the queue for the connection is bounded
    assert (200, None) in answers
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    assert p99 < 2.0, latencies  # README: a read waits behind at most two ingest transactions


async def test_a_statement_past_its_class_timeout_is_interrupted(tmp_path: Path) -> None:
    classes = DbClasses(read={"statement_timeout_ms": 100, "pool_timeout_s": 5})
    db = SqliteDatabase.open(tmp_path / "cloud.db", classes=classes)
    endless = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
               " SELECT count(*) FROM c")  # fmt: skip
    token = request_class.set("read")
    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match="100 ms statement timeout of read requests"):
            async with db.transaction(None) as tx:
                await tx.fetch(endless)
        assert time.monotonic() - started < 5
        async with db.transaction(None) as tx:  # the connection is fine afterwards
            assert await tx.fetch("SELECT 1") == [(1,)]
    finally:
        request_class.reset(token)
    request_class.set("background")  # background work has no statement timeout
    async with db.transaction(None) as tx:
        assert await tx.fetch("SELECT count(*) FROM tenants") == [(0,)]


async def test_the_timeout_bounds_each_statement_not_the_transaction(tmp_path: Path) -> None:
    classes = DbClasses(read={"statement_timeout_ms": 100, "pool_timeout_s": 5})
    db = SqliteDatabase.open(tmp_path / "cloud.db", classes=classes)
    short = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)"
             " SELECT count(*) FROM c")  # fmt: skip
    token = request_class.set("read")
    try:
        started = time.monotonic()
        async with db.transaction(None) as tx:  # 12 short statements, 300+ ms in all
            for _ in range(12):
                assert await tx.fetch(short) == [(20_000,)]
                await asyncio.sleep(0.025)
                await tx.execute(f"UPDATE tenants SET name = name WHERE id > ({short})")  # noqa: S608
        assert time.monotonic() - started > 0.3  # past the timeout in all, and not interrupted
        endless = short.replace(" WHERE x < 20000", "")

        async def short_then_endless() -> None:
            async with db.transaction(None) as tx:
                await tx.fetch("SELECT 1")
                await tx.fetch(endless)

        with pytest.raises(StorageError, match="100 ms statement timeout of read requests"):
            await short_then_endless()
    finally:
        request_class.reset(token)
