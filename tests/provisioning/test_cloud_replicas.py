"""Two real uvicorn replicas against one PostgreSQL: a gateway enrolled through one is
authenticated by the other, and a revocation through one is refused by the other at once (the
state is in the database, not in either process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cloud.conftest import PLATFORM_KEY, Cloud, app_dsn, truncate
from tests.cloud.test_replicas import start_replica, wait_ready
from tests.provisioning.cloud_support import claim_token, enroll, error, ingest

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
PUBLIC_URL = "http://cloud.test"  # the audience both replicas expect, whatever port they use


@pytest.fixture
def replicas(migrated_pg: str, tmp_path: Path) -> Iterator[list[str]]:
    truncate(migrated_pg)
    settings = {
        "database_url": app_dsn(migrated_pg),
        "platform_admin_key": PLATFORM_KEY,
        "pool_min_size": 1,
        "pool_max_size": 2,
        "public_url": PUBLIC_URL,
        "master_key_file": str(tmp_path / "master.key"),
        "create_master_key": True,
    }
    started = [start_replica(settings) for _ in range(2)]
    try:
        for proc, url in started:
            wait_ready(url, proc)
        yield [url for _, url in started]
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            proc.wait(timeout=10)


async def test_revocation_through_one_replica_is_refused_by_the_other(
    replicas: list[str],
) -> None:
    async with (
        httpx.AsyncClient(base_url=replicas[0], timeout=30) as one,
        httpx.AsyncClient(base_url=replicas[1], timeout=30) as two,
    ):
        first, second = Cloud(one), Cloud(two)
        tenant = await first.tenant("acme")
        gw = await enroll(first, await claim_token(first, tenant))
        token = gw.token()
        assert (await ingest(second, token, gw.gateway_id, seq=1)).status_code == 200
        assert (await ingest(first, token, gw.gateway_id, seq=2)).status_code == 200
        r = await one.post(f"/v1/gateways/{gw.gateway_id}/revoke", headers=first.auth(tenant.admin))
        assert r.status_code == 200
        status, _, details = error(await ingest(second, token, gw.gateway_id, seq=3))
        assert (status, details["reason"]) == (401, "revoked")
        status, _, details = error(await ingest(first, token, gw.gateway_id, seq=3))
        assert (status, details["reason"]) == (401, "revoked")
