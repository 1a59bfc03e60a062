"""One tenant's ingest load cannot take the database from another tenant's reads (issue 15,
case 2): ingest holds at most its share of the pool and is told to come back (429
``ingest_busy``) when that share is busy, while reads keep the connections reserved for them."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from tests.cloud.conftest import Cloud, engine_param, make_batch

pytestmark = pytest.mark.integration


@pytest.fixture(params=[engine_param("postgres")])
def backend(request: pytest.FixtureRequest) -> str:
    """PostgreSQL only: the pool and statement timeouts are its (SQLite has one writer)."""
    return str(request.param)


async def test_a_tenant_hammering_ingest_leaves_another_tenants_reads_no_5xx(
    make_cloud: Any, owner_dsn: str
) -> None:
    cloud: Cloud = await make_cloud(
        pool_max_size=3, pool_reserved_for_reads=1, default_rate_limit=100_000,
        db_classes={"ingest": {"statement_timeout_ms": 30_000, "pool_timeout_s": 0.05}},
    )  # fmt: skip
    hammer = await cloud.tenant("hammer")
    gateways = [await cloud.gateway(hammer, f"gw{i}") for i in range(4)]
    reader = await cloud.tenant("reader")
    own = await cloud.gateway(reader)
    assert (await cloud.send(own, make_batch(own[0], 1))).status_code == 200
    stop = asyncio.Event()
    eight = asyncio.Event()  # the flood had eight answers (it is refused while its share is stuck)
    hammer_answers: list[tuple[int, str | None]] = []
    reader_answers: list[int] = []

    async def flood(gateway: tuple[int, str]) -> None:
        while not stop.is_set():
            seq = cloud.next_seq(gateway[0])
            # 100 series per batch, new ones each time: the work a flood of series makes.
            tags = [f"t{seq}_{i}" for i in range(100)]
            r = await cloud.send(gateway, make_batch(gateway[0], seq, tags=tags, n=2))
            code = r.json()["error"]["code"] if r.status_code >= 400 else None
            hammer_answers.append((r.status_code, code))
            if len(hammer_answers) >= 8:
                eight.set()

    async def read() -> None:
        for _ in range(10):
            for path in ("/v1/devices", "/v1/gateways", "/v1/usage"):
                r = await cloud.get(reader.admin, path)
                reader_answers.append(r.status_code)

    # The slowest ingest there is: its transactions stuck on a lock (a slow disk, a long
    # migration), each holding a pooled connection for as long as the lock lasts.
    async with await psycopg.AsyncConnection.connect(owner_dsn) as lock:
        await lock.execute("LOCK TABLE series IN EXCLUSIVE MODE")  # reads still pass
        floods = [asyncio.create_task(flood(gw)) for gw in gateways]
        try:
            await asyncio.wait_for(eight.wait(), 30)
            await read()
        finally:
            await lock.commit()
            stop.set()
            await asyncio.gather(*floods)
    assert set(reader_answers) == {200}
    assert all(status < 500 for status, _ in hammer_answers), hammer_answers
    assert (429, "ingest_busy") in hammer_answers
    assert (200, None) in hammer_answers  # once the lock is gone
