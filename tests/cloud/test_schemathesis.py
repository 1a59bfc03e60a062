"""A bounded schemathesis run against the served OpenAPI schema with every check schemathesis
has (`--checks all`): no 5xx, every status, header, content type and body as documented,
schema-valid data accepted and invalid data refused.

The service runs in a real uvicorn process (SQLite by default; PostgreSQL, as the app role, and a
longer SQLite run under `-m slow`) with a tenant, a gateway and data in place; every operation
gets a few generated requests (positive and negative), authenticated as the principal that
operation is for.

One exemption, stated here: `positive_data_acceptance` is not asked of `/v1/ingest` and
`/v1/provision`, whose bodies are valid only if their content is (a batch inside the time
window, a CSR whose signature verifies): no JSON Schema can say that, and their 422 names what
was wrong.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cloud.conftest import PLATFORM_KEY, Cloud, app_dsn, make_batch, truncate
from tests.cloud.test_replicas import start_replica, wait_ready

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import CHECKS, load_all_checks, positive_data_acceptance  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402

pytestmark = pytest.mark.integration
EXAMPLES_PER_OPERATION = 4
LONG_RUN_EXAMPLES = 25
STREAMS = frozenset({"/v1/stream", "/v1/gateway/channel"})
CONTENT_VALIDATED = frozenset({"/v1/ingest", "/v1/provision"})
load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())


@pytest.fixture(
    params=[
        pytest.param(("sqlite", EXAMPLES_PER_OPERATION), id="sqlite"),
        # The same run on PostgreSQL (as the app role), and a longer one: behind `slow`.
        pytest.param(("postgres", EXAMPLES_PER_OPERATION), id="postgres",
                     marks=[pytest.mark.postgres, pytest.mark.slow]),
        pytest.param(("sqlite", LONG_RUN_EXAMPLES), id="sqlite-long", marks=pytest.mark.slow),
    ]
)  # fmt: skip
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    backend, examples = request.param
    if backend == "postgres":
        owner = request.getfixturevalue("engine_databases").migrated("postgres")
        truncate(owner)
        database_url = app_dsn(owner)
    else:
        database_url = f"sqlite:///{tmp_path / 'cloud.db'}"
    settings_ = {"database_url": database_url, "platform_admin_key": PLATFORM_KEY}
    proc, url = start_replica(settings_)
    try:
        wait_ready(url, proc)
        yield url, examples
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


def _exercise(operation: Any, server: str, headers: dict[str, str], examples: int) -> list[str]:
    """Send generated requests (positive and negative) to one operation with every check; the
    failures, one line each."""
    failures: list[str] = []
    modes = st.sampled_from(list(schemathesis.GenerationMode))
    strategy = modes.flatmap(lambda mode: operation.as_strategy(generation_mode=mode))
    excluded = [positive_data_acceptance] if operation.path in CONTENT_VALIDATED else []

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        try:
            case.call_and_validate(base_url=server, headers=headers, timeout=10,
                                   checks=ALL_CHECKS, excluded_checks=excluded)  # fmt: skip
        except FailureGroup as group:
            for failure in group.exceptions:
                title = getattr(failure, "title", type(failure).__name__)
                failures.append(f"{case.method} {case.formatted_path}: {title}: {failure}"[:600])

    run()
    return failures


def test_no_generated_request_fails_any_check(server: tuple[str, int]) -> None:
    server, examples = server
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
        failures += _exercise(operation, server, {"Authorization": f"Bearer {token}"}, examples)
    assert failures == [], "\n".join(failures)
