"""A bounded schemathesis run against the served OpenAPI schema: no request makes a 5xx.

The service runs in a real uvicorn process (SQLite by default; PostgreSQL, as the app role, under
`-m slow`) with a tenant, a gateway and data in place; every operation gets a few generated
requests (positive and negative), authenticated as the principal that operation is for.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cloud.conftest import PLATFORM_KEY, Cloud, app_dsn, make_batch, truncate
from tests.cloud.test_replicas import start_replica, wait_ready

schemathesis = pytest.importorskip("schemathesis")
pytestmark = pytest.mark.integration
EXAMPLES_PER_OPERATION = 4
STREAMS = frozenset({"/v1/stream", "/v1/gateway/channel"})


@pytest.fixture(
    params=[
        "sqlite",
        # The same run on PostgreSQL (as the app role) is longer: behind `slow`.
        pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow]),
    ]
)
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "postgres":
        owner = request.getfixturevalue("engine_databases").migrated("postgres")
        truncate(owner)
        database_url = app_dsn(owner)
    else:
        database_url = f"sqlite:///{tmp_path / 'cloud.db'}"
    settings_ = {"database_url": database_url, "platform_admin_key": PLATFORM_KEY}
    proc, url = start_replica(settings_)
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _seed(url: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        cloud = Cloud(client)
        tenant = await cloud.tenant("acme")
        gw = await cloud.gateway(tenant)
        assert (await cloud.send(gw, make_batch(gw[0], 1))).status_code == 200
        return {"admin": tenant.admin, "gateway": gw[1]}


def _token_for(path: str, tokens: dict[str, str]) -> str:
    if path.startswith("/v1/tenants"):
        return PLATFORM_KEY
    if path == "/v1/ingest":
        return tokens["gateway"]
    return tokens["admin"]


def _exercise(operation: object, server: str, headers: dict[str, str]) -> list[str]:
    """Send a few generated requests (positive and negative) to one operation; the 5xx seen."""
    failures: list[str] = []
    modes = st.sampled_from(list(schemathesis.GenerationMode))
    strategy = modes.flatmap(lambda mode: operation.as_strategy(generation_mode=mode))  # type: ignore[attr-defined]

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: object) -> None:
        response = case.call(base_url=server, headers=headers, timeout=10)  # type: ignore[attr-defined]
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")  # type: ignore[attr-defined]

    run()
    return failures


def test_no_generated_request_makes_a_server_error(server: str) -> None:
    tokens = asyncio.run(_seed(server))
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    # Event streams never end by design (tests/cloud/test_twoway.py covers them); a generated
    # request that opens one would only wait for the read timeout.
    operations = [op for op in operations if op.path not in STREAMS]
    failures: list[str] = []
    for operation in operations:
        token = _token_for(operation.path, tokens)
        failures += _exercise(operation, server, {"Authorization": f"Bearer {token}"})
    assert failures == []
