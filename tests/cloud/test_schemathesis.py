"""A bounded schemathesis run against the served OpenAPI schema with every check schemathesis
has (`--checks all`): no 5xx, every status, header, content type and body as documented,
schema-valid data accepted and invalid data refused.

The service runs in a real uvicorn process (SQLite by default; PostgreSQL, as the app role, and a
longer SQLite run under `-m slow`) with a tenant, a gateway and data in place; every operation
gets a few generated requests (positive and negative), authenticated as the principal that
operation is for.

Every check holds for every operation, `positive_data_acceptance` included. Two bodies are valid
only if their content is, which no JSON Schema can say, so schemathesis is given strategies that
generate valid content:

- a CSR (`/v1/provision`, the certificate rotation): the schema gives the field the format
  ``pkcs10-pem`` (`cloud.api.provision.CSR_FORMAT`) and the format's strategy
  (`schemathesis.openapi.format`) makes a P-256 key and a CSR signed by it, with a usable CN;
- a batch (`/v1/ingest`): columns of one length (a JSON Schema cannot tie two arrays' lengths),
  timestamps inside the time window (relative to now) and the gateway of the token, drawn from
  `valid_batches`. Its msgpack form comes from the media type's strategy
  (`schemathesis.openapi.media_type`); a positive case posted as JSON carries it in place of the
  object generated from the schema (``{"type": "object"}``); negative cases keep schemathesis's
  own bodies, which must be refused.

- a claim token (`/v1/provision`): the field has the format ``claim-token`` and its strategy
  gives the run's own token (100,000 uses), so a positive case enrolls a gateway (201).

Batches are not compressed here: a zstd body is bytes, which
schemathesis cannot check against the JSON media type's schema (tests/cloud/test_api_ingest.py
covers the encodings).
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.api.provision import CLAIM_TOKEN_FORMAT, CSR_FORMAT
from cloud.contract import JSON, MSGPACK, Batch, SeriesColumns, batch_to_dict, encode_data
from provisioning.csr import create_csr, csr_to_pem
from provisioning.keys import generate_private_key
from tests.cloud.conftest import PLATFORM_KEY, Cloud, app_dsn, make_batch, truncate
from tests.cloud.test_replicas import start_replica, wait_ready

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import CHECKS, load_all_checks  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402

pytestmark = pytest.mark.integration
EXAMPLES_PER_OPERATION = 4
LONG_RUN_EXAMPLES = 25
STREAMS = frozenset({"/v1/stream", "/v1/gateway/channel"})
load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())
# A gateway name a CN can carry: printable, no edge whitespace, at most 64 characters.
CN = st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=64)


# The gateway of the run's token and a claim token of the run's tenant (set once it is seeded).
SEEDED = {"gateway_id": "1", "claim_token": "twc_" + "A" * 43}


@st.composite
def pkcs10_pem(draw: st.DrawFn) -> str:
    """A CSR that verifies: a fresh P-256 key, signed by it, CN a usable gateway name."""
    return csr_to_pem(create_csr(generate_private_key(), draw(CN))).decode()


schemathesis.openapi.format(CSR_FORMAT, pkcs10_pem())
# The run's own claim token (100,000 uses): a positive /v1/provision case enrolls a gateway.
schemathesis.openapi.format(CLAIM_TOKEN_FORMAT, st.builds(lambda: SEEDED["claim_token"]))

NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\x00",
                              exclude_categories=["Cs"]), min_size=1, max_size=40)  # fmt: skip
VALUES = st.one_of(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1,
             max_size=20),
    st.lists(st.integers(-(2**53), 2**53), min_size=1, max_size=20),
    st.lists(st.booleans(), min_size=1, max_size=20),
    st.lists(NAMES, min_size=1, max_size=20),
)  # fmt: skip


_SEQS = itertools.count(1_000_000)  # a new seq per batch: a reused one is a 409 seq_conflict


@st.composite
def valid_batches(draw: st.DrawFn) -> dict[str, Any]:
    """A batch the gateway of the token could post, as plain data. Timestamps are the last
    hour's, so inside the time window; each series' columns have one length."""
    now = time.time_ns() // 1000
    series = []
    for device, tag in draw(st.lists(st.tuples(NAMES, NAMES), min_size=1, max_size=4,
                                     unique=True)):  # fmt: skip
        values = draw(VALUES)
        ages = draw(st.lists(st.integers(0, 3_600_000_000), min_size=len(values),
                             max_size=len(values), unique=True))  # fmt: skip
        qualities = draw(st.lists(st.integers(0, 2), min_size=len(values), max_size=len(values)))
        series.append(SeriesColumns(device, tag, [now - a for a in ages], values, qualities))
    return batch_to_dict(Batch(SEEDED["gateway_id"], next(_SEQS), now, series))


# A msgpack batch is bytes, which schemathesis takes from a media type strategy (a body set by
# hand as bytes would count as schema-invalid); a JSON batch replaces the generated object.
schemathesis.openapi.media_type(
    MSGPACK, valid_batches().map(lambda data: encode_data(data, content_type=MSGPACK,
                                                           content_encoding="identity"))
)  # fmt: skip


def _with_batch(case: Any, body: dict[str, Any]) -> Any:
    if case.media_type == JSON:
        case.body = body
    return case


def _cases(operation: Any, mode: Any) -> st.SearchStrategy[Any]:
    """Schemathesis's cases for the operation; a positive ingest case carries a valid batch."""
    cases = operation.as_strategy(generation_mode=mode)
    if operation.path != "/v1/ingest" or not mode.is_positive:
        return cases
    return st.tuples(cases, valid_batches()).map(lambda pair: _with_batch(*pair))


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
    settings_ = {"database_url": database_url, "platform_admin_key": PLATFORM_KEY,
                 "master_key_file": str(tmp_path / "master.key"),
                 "create_master_key": True}  # fmt: skip
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
        r = await client.post("/v1/claim-tokens", json={"max_uses": 100_000},
                              headers=cloud.auth(tenant.admin))  # fmt: skip
        assert r.status_code == 201, r.text
        return {"admin": tenant.admin, "gateway": gw[1], "gateway_id": str(gw[0]),
                "claim_token": r.json()["token"]}  # fmt: skip


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
    strategy = modes.flatmap(lambda mode: _cases(operation, mode))

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
                                   checks=ALL_CHECKS)  # fmt: skip
        except FailureGroup as group:
            for failure in group.exceptions:
                title = getattr(failure, "title", type(failure).__name__)
                failures.append(f"{case.method} {case.formatted_path}: {title}: {failure}"[:600])

    run()
    return failures


def test_no_generated_request_fails_any_check(server: tuple[str, int]) -> None:
    server, examples = server
    tokens = asyncio.run(_seed(server))
    SEEDED["gateway_id"], SEEDED["claim_token"] = tokens["gateway_id"], tokens["claim_token"]
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    # Event streams never end by design (tests/cloud/test_twoway.py covers them); a generated
    # request that opens one would only wait for the read timeout.
    operations = [op for op in operations if op.path not in STREAMS]
    failures: list[str] = []
    for operation in operations:
        token = _token_for(operation.path, tokens)
        auth = {"Authorization": f"Bearer {token}"}
        failures += _exercise(operation, server, auth, examples)
    assert failures == [], "\n".join(failures)
