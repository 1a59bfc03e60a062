"""A real cloud service for edge tests: the FastAPI app under uvicorn on a free loopback port,
on the SQLite backend, with a switch in front of it that can make it fail like a real cloud does
(500s, 429 with Retry-After, 422 for a batch, or no answer at all)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from cloud.api.app import create_app
from cloud.settings import CloudSettings
from edge.local_api import QuietServer

PLATFORM_KEY = "edge-tests-platform-key"
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Faults:
    """What the next ingest requests get instead of the real answer."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    ingest_requests: int = 0
    answered: list[int] = field(default_factory=list)

    def fail_next(self, status: int, times: int = 1, **headers: str) -> None:
        """The next `times` ingest requests get `status` (with these headers)."""
        self.script.extend([(status, headers)] * times)


class FaultyIngest:
    """ASGI wrapper: ingest requests consult `faults` first; everything else passes through."""

    def __init__(self, app: Any, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/ingest":
            self.faults.ingest_requests += 1
            if self.faults.script:
                status, headers = self.faults.script.pop(0)
                self.faults.answered.append(status)
                body = b'{"error": {"code": "injected", "message": "injected by the test"}}'
                raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json"), *raw]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@dataclass
class RunningCloud:
    """A cloud on loopback: its URL, the database file, and a gateway token to post with."""

    url: str
    db_path: Path
    faults: Faults
    admin_key: str = ""
    gateway_id: str = ""
    gateway_token: str = ""

    def counts(self) -> dict[tuple[str, str], int]:
        """Stored readings per (device, tag), read straight from the database."""
        with contextlib.closing(sqlite3.connect(self.db_path)) as db:
            rows = db.execute(
                "SELECT d.name, s.tag, count(*) FROM telemetry t JOIN series s ON s.id = "
                "t.series_id JOIN devices d ON d.id = s.device_id GROUP BY d.name, s.tag"
            ).fetchall()
        return {(device, tag): n for device, tag, n in rows}

    def alarms(self) -> list[tuple[str, str, str]]:
        """(device, name, state) of the alarm records stored."""
        with contextlib.closing(sqlite3.connect(self.db_path)) as db:
            return db.execute("SELECT device, name, state FROM alarms ORDER BY id").fetchall()


@contextlib.asynccontextmanager
async def serve_cloud(
    db_path: Path,
    *,
    port: int = 0,
    wrap: Callable[[Any], Any] | None = None,
    **settings_overrides: Any,
) -> AsyncIterator[RunningCloud]:
    """Serve the cloud app until the block ends (restartable on the same file and port).

    On SQLite at `db_path` unless the settings name a `database_url` (PostgreSQL); `wrap`, if
    given, wraps the app in one more ASGI layer (a test's own fault injection).

    Gateway channels are short here (1 s): a stopping cloud waits for open channels to end, and
    every agent with a cloud holds one."""
    settings_overrides.setdefault("channel_max_s", 1.0)
    settings_overrides.setdefault("channel_keepalive_s", 0.5)
    settings_overrides.setdefault("database_url", f"sqlite:///{db_path}")
    settings = CloudSettings(platform_admin_key=PLATFORM_KEY, **settings_overrides)
    faults = Faults()
    app = FaultyIngest(create_app(settings), faults)
    if wrap is not None:
        app = wrap(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    server = QuietServer(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="test-cloud")
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield RunningCloud(f"http://127.0.0.1:{sock.getsockname()[1]}", db_path, faults)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def bootstrap(cloud: RunningCloud, tenant: str = "plant-a") -> None:
    """Create a tenant, its admin key and a gateway with an interim token."""
    platform = {"Authorization": f"Bearer {PLATFORM_KEY}"}
    async with httpx.AsyncClient(base_url=cloud.url) as client:
        r = await client.post("/v1/tenants", json={"name": tenant}, headers=platform)
        r.raise_for_status()
        tenant_id = r.json()["id"]
        admin = {"name": "admin", "role": "admin"}
        r = await client.post(f"/v1/tenants/{tenant_id}/api-keys", json=admin, headers=platform)
        r.raise_for_status()
        cloud.admin_key = r.json()["token"]
        r = await client.post("/v1/gateways", json={"name": "gw1"},
                              headers={"Authorization": f"Bearer {cloud.admin_key}"})  # fmt: skip
        r.raise_for_status()
        cloud.gateway_id = str(r.json()["gateway"]["id"])
        cloud.gateway_token = r.json()["token"]
