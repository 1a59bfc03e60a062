"""Fixtures of the cloud tests: the app on each backend, and helpers that act as its users.

Every API test runs on SQLite and on each PostgreSQL engine (`backend` is parametrized: plain
PostgreSQL, TimescaleDB and a Citus cluster, see `tests.pg_engines`); tests that talk to
PostgreSQL directly run on each engine too (`pg_engine`). Each engine gets one migrated database
per session, truncated before each test, and the app connects to it as the production app role
(`tagway_app`, not the owner), so every API test is also a row-level-security test. An engine
that cannot run here skips its tests with the reason (fails them under CI=true).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from cloud.api.app import create_app
from cloud.contract import MSGPACK, Batch, SeriesColumns, encode_batch
from cloud.settings import CloudSettings
from tests.conftest import EngineDatabases
from tests.pg_engines import ENGINES

PLATFORM_KEY = "platform-secret-for-tests-only"
APP_ROLE = "tagway_app"
_TABLES = (
    "telemetry, alarms, alarm_events, commands, shadows, write_records, stream_log, ingest_batch,"
    " ingest_claim,"
    " gateway_health_events, gateway_status, rollout_gateways, rollouts, config_events,"
    " gateway_configs, config_versions, gateway_labels,"
    " gateway_drops, gateway_drop_totals, usage_daily, rate_window, series, device_paths, devices,"
    " assets, gateways,"
    " api_keys, tenants"
)

_COLUMNAR_DAYS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " JOIN pg_am a ON a.oid = c.relam"
    " WHERE i.inhparent = 'telemetry'::regclass AND a.amname = 'columnar'"
)


def now_us() -> int:
    """Now in µs since the epoch."""
    return time.time_ns() // 1000


def app_dsn(owner_dsn: str) -> str:
    """The same database, as the production app role."""
    return psycopg.conninfo.make_conninfo(owner_dsn, user=APP_ROLE)


def _engine_marks(engine: str) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.postgres]
    if engine != "postgres":
        marks.append(getattr(pytest.mark, engine))
    return marks


def engine_param(engine: str) -> Any:
    """A parameter value of `backend` or `pg_engine` for one engine, with its marks."""
    return pytest.param(engine, marks=_engine_marks(engine), id=engine)


ENGINE_PARAMS = [engine_param(e) for e in ENGINES]


@pytest.fixture(params=ENGINE_PARAMS)
def pg_engine(request: pytest.FixtureRequest) -> str:
    """The PostgreSQL engine under test (of a test that talks to PostgreSQL directly)."""
    return str(request.param)


@pytest.fixture
def migrated_pg(pg_engine: str, engine_databases: EngineDatabases) -> str:
    """The engine's session database with the schema applied (as its owner)."""
    return engine_databases.migrated(pg_engine)


def truncate(owner_dsn: str) -> None:
    """Empty every table so each test starts from nothing (DELETE: cheaper than TRUNCATE here,
    where the tables hold a few rows and TRUNCATE pays for new files and exclusive locks)."""
    with psycopg.connect(owner_dsn) as conn:
        # Citus: columnar days refuse a DELETE; they go whole (made again on demand)
        for (day,) in conn.execute(_COLUMNAR_DAYS).fetchall():
            conn.execute(f'DROP TABLE "{day}"')
        for table in _TABLES.split(","):
            conn.execute(f"DELETE FROM {table.strip()}")  # noqa: S608 - constant table names


@pytest.fixture(params=["sqlite", *ENGINE_PARAMS])
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend under test: ``sqlite`` or a PostgreSQL engine (see `ENGINES`)."""
    return str(request.param)


@pytest.fixture
def owner_dsn(backend: str, engine_databases: EngineDatabases) -> str:
    """The schema owner's DSN of the backend under test (a PostgreSQL engine)."""
    assert backend != "sqlite", "owner_dsn is for the PostgreSQL engines"
    return engine_databases.migrated(backend)


@pytest.fixture
def settings_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """A factory of settings for the backend under test (fresh, empty storage)."""
    if backend != "sqlite":
        owner = request.getfixturevalue("owner_dsn")
        truncate(owner)

    def make(**overrides: Any) -> CloudSettings:
        if backend != "sqlite":
            base: dict[str, Any] = {
                "database_url": app_dsn(owner),
                "migrate_database_url": owner,
                "pool_min_size": 1,
                "pool_max_size": 4,
            }
        else:
            base = {"database_url": f"sqlite:///{tmp_path / 'cloud.db'}"}
        return CloudSettings(**(base | {"platform_admin_key": PLATFORM_KEY} | overrides))

    return make


@dataclass
class Tenant:
    """A tenant seen through its admin key."""

    id: int
    admin: str
    gateways: dict[str, tuple[int, str]] = field(default_factory=dict)


class Cloud:
    """A user of the API: bootstraps tenants, keys and gateways, posts batches."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._seq: dict[int, int] = {}

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        """The Authorization header for a token."""
        return {"Authorization": f"Bearer {token}"}

    async def tenant(self, name: str, **limits: Any) -> Tenant:
        """A new tenant with an admin key."""
        platform = self.auth(PLATFORM_KEY)
        r = await self.client.post("/v1/tenants", json={"name": name, **limits}, headers=platform)
        assert r.status_code == 201, r.text
        tenant_id = r.json()["id"]
        r = await self.client.post(
            f"/v1/tenants/{tenant_id}/api-keys",
            json={"name": "admin", "role": "admin"},
            headers=platform,
        )
        assert r.status_code == 201, r.text
        return Tenant(tenant_id, r.json()["token"])

    async def key(self, tenant: Tenant, role: str) -> str:
        """A new key with this role in the tenant."""
        r = await self.client.post(
            "/v1/api-keys", json={"name": role, "role": role}, headers=self.auth(tenant.admin)
        )
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    async def gateway(self, tenant: Tenant, name: str = "gw1") -> tuple[int, str]:
        """A new gateway of the tenant: (id, token)."""
        r = await self.client.post(
            "/v1/gateways", json={"name": name}, headers=self.auth(tenant.admin)
        )
        assert r.status_code == 201, r.text
        gw = (int(r.json()["gateway"]["id"]), str(r.json()["token"]))
        tenant.gateways[name] = gw
        return gw

    def next_seq(self, gateway_id: int) -> int:
        """The gateway's next seq."""
        self._seq[gateway_id] = self._seq.get(gateway_id, 0) + 1
        return self._seq[gateway_id]

    async def post(
        self,
        token: str,
        body: bytes,
        *,
        content_type: str = MSGPACK,
        content_encoding: str = "zstd",
    ) -> httpx.Response:
        """POST raw bytes to /v1/ingest."""
        headers = self.auth(token) | {"Content-Type": content_type}
        if content_encoding != "identity":
            headers["Content-Encoding"] = content_encoding
        return await self.client.post("/v1/ingest", content=body, headers=headers)

    async def send(self, gateway: tuple[int, str], batch: Batch, **encoding: str) -> httpx.Response:
        """Encode and post a batch."""
        content_type = encoding.get("content_type", MSGPACK)
        content_encoding = encoding.get("content_encoding", "zstd")
        body = encode_batch(batch, content_type=content_type, content_encoding=content_encoding)
        return await self.post(
            gateway[1], body, content_type=content_type, content_encoding=content_encoding
        )

    async def get(self, token: str, path: str, **params: Any) -> httpx.Response:
        """GET with a token."""
        return await self.client.get(path, headers=self.auth(token), params=params)


def make_batch(
    gateway_id: int,
    seq: int,
    *,
    devices: Sequence[str] = ("pump1",),
    tags: Sequence[str] = ("flow", "pressure"),
    n: int = 10,
    start: int | None = None,
    step: int = 1_000_000,
    **extra: Any,
) -> Batch:
    """A batch of `n` readings per (device, tag), ending now (or from `start`)."""
    first = start if start is not None else now_us() - n * step
    series = [
        SeriesColumns(
            device=d,
            tag=t,
            ts=[first + i * step for i in range(n)],
            values=[float(i) + 0.5 for i in range(n)],
            qualities=[0] * n,
            unit="m3/h",
        )
        for d in devices
        for t in tags
    ]
    return Batch(str(gateway_id), seq, now_us(), series, **extra)


@pytest.fixture
async def make_cloud(settings_for: Any) -> AsyncIterator[Any]:
    """A factory of running apps (lifespan entered) with a client each; all closed at the end."""
    from contextlib import AsyncExitStack  # noqa: PLC0415 - fixture plumbing

    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Cloud:
            app: FastAPI = create_app(settings_for(**overrides))
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            client = httpx.AsyncClient(transport=transport, base_url="http://cloud.test")
            await stack.enter_async_context(client)
            return Cloud(client)

        yield start


@pytest.fixture
async def cloud(make_cloud: Any) -> Cloud:
    """One running app with default settings on the backend under test."""
    started: Cloud = await make_cloud()
    return started


@pytest.fixture
def owner_conn(backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A direct connection for checking what was stored (owner on PG, None on SQLite)."""
    if backend == "sqlite":
        yield None
        return
    with psycopg.connect(request.getfixturevalue("owner_dsn"), autocommit=True) as conn:
        yield conn


Start = Callable[..., Any]


@pytest.fixture
async def make_live(settings_for: Any) -> AsyncIterator[Start]:
    """A factory of clouds served by a real uvicorn (for the long-lived channel and stream
    responses); each start uses the same storage, so a second start is a restart."""
    from tests.cloud.live_support import served  # noqa: PLC0415 - uvicorn for these tests only

    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Cloud:
            url = await stack.enter_async_context(served(create_app(settings_for(**overrides))))
            client = httpx.AsyncClient(base_url=url, timeout=10)
            await stack.enter_async_context(client)
            return Cloud(client)

        yield start


@pytest.fixture
async def live(make_live: Start) -> Cloud:
    """One served cloud on the backend under test."""
    started: Cloud = await make_live()
    return started
