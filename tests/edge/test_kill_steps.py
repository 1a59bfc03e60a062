"""kill -9 at every step of the batch exchange, against a cloud on PostgreSQL (issue 15).

For each step the real agent process (``python -m cli run``, reading the simulated plant, with a
16 KiB outbox quota) first meets a cloud that answers 503 until the outbox drops readings, so the
batches that follow report drops; then it dies by SIGKILL at exactly that step of its third
batch:

    leased      chunks leased from the outbox             (the agent kills itself: edge.kill_points)
    built       the batch built under its seq, unsent     (the agent)
    sent        the request in the cloud, not committed   (the cloud holds it; the test kills the
                                                           agent, then the cloud commits it)
    committed   committed, the answer not yet sent        (the cloud holds the answer; the test
                                                           kills the agent)
    answered    the 2xx received, the outbox not acked    (the agent)
    acked       after the ack                             (the agent)

Then the agent starts again on the same state (no devices: it only drains its outbox) and the
test checks that every accepted reading (stored before the kill, or still in the outbox) is
stored exactly once, nothing else is, the usage counters equal the rows stored, the drop counts
equal the outbox's own, and that a replay happened exactly at the steps where the cloud had the
batch and the gateway did not know it (so the test sees the case it claims to test).

Two representative steps run by default (a few seconds each); all six under ``-m slow``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgpack
import psycopg
import pytest
import yaml

from edge.kill_points import ENV
from firmware_sim.plant import Plant
from store_forward import OutboxError, read_stats
from tests.cloud.conftest import app_dsn, truncate
from tests.conftest import EngineDatabases
from tests.edge.cloud_harness import RunningCloud, bootstrap, serve_cloud
from tests.edge.test_durability import pending_readings
from tests.edge.test_uplink import with_cloud

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

NTH = 3  # the batch whose exchange is cut: two whole exchanges before it
QUOTA = 16_384  # bytes of outbox: a few seconds of the simulated plant
Message = MutableMapping[str, Any]


def carries_readings(body: bytes) -> bool:
    """Whether a chunk batch holds a telemetry chunk (the batches the agent's steps count)."""
    try:
        chunks = msgpack.unpackb(body)["chunks"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(c.get("lane") == "telemetry" for c in chunks)


class HeldIngest:
    """ASGI layer that holds the `NTH` ingest request carrying readings at one step until the
    test lets it go: ``sent`` before the app sees the request (its body already received),
    ``committed`` after the app committed it, before the answer leaves."""

    def __init__(self, app: Any, step: str) -> None:
        self.app = app
        self.step = step
        self.seen = 0
        self.reached = asyncio.Event()
        self.go = asyncio.Event()
        self.done = asyncio.Event()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/ingest":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:  # the whole request is in the cloud before anything else happens
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        given = False

        async def replay() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return {"type": "http.disconnect"}

        failing = bool(getattr(self.app, "faults", None) and self.app.faults.script)
        self.seen += carries_readings(bytes(body)) and not failing  # a 503 is no exchange
        if self.seen != NTH or self.reached.is_set() or failing:
            await self.app(scope, replay, send)
            return
        try:
            if self.step == "sent":
                self.reached.set()
                await self.go.wait()
                await self.app(scope, replay, send)  # the cloud commits after the gateway died
            else:
                await self.app(scope, replay, self._held(send))
        finally:
            self.done.set()

    def _held(self, send: Any) -> Any:
        async def held(message: Message) -> None:
            if message["type"] == "http.response.start":  # committed: the answer waits
                self.reached.set()
                await self.go.wait()
            await send(message)

        return held


@asynccontextmanager
async def agent_process(config: Path, env: dict[str, str]) -> AsyncIterator[Any]:
    """`tagway run` as a real process; SIGKILLed at the end if it is still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "run", "--config", str(config), "--log-format", "json",
        stderr=asyncio.subprocess.DEVNULL, env=os.environ | env,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def write_config(path: Path, config: Any, **outbox: Any) -> Path:
    data = config.model_dump(mode="json", exclude_none=True)
    data["outbox"] |= outbox
    path.write_text(yaml.safe_dump(data))
    return path


def stored(owner: str) -> tuple[list[tuple[str, str, int]], int, int]:
    """Every telemetry row (device, tag, ts), and the readings posted and stored per the batch
    log (a replay under a new seq posts readings and stores none)."""
    with psycopg.connect(owner) as conn:
        rows = conn.execute(
            "SELECT d.name, s.tag, t.ts FROM telemetry t JOIN series s ON s.id = t.series_id"
            " JOIN devices d ON d.id = s.device_id"
        ).fetchall()
        posted, kept = conn.execute(
            "SELECT coalesce(sum(readings), 0), coalesce(sum(stored), 0) FROM ingest_batch"
        ).fetchone() or (0, 0)
    return [(d, t, int(ts)) for d, t, ts in rows], int(posted), int(kept)


async def usage(cloud: RunningCloud) -> tuple[int, int]:
    """The tenant's readings and drops as `GET /v1/usage` counts them."""
    async with httpx.AsyncClient(base_url=cloud.url) as client:
        r = await client.get("/v1/usage", headers={"Authorization": f"Bearer {cloud.admin_key}"})
        r.raise_for_status()
        days = r.json()["days"]
    return sum(d["readings"] for d in days), sum(d["dropped"] for d in days)


async def until(predicate: Any, *, within: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)


async def kill_at(
    step: str, config: Path, held: HeldIngest | None, cloud: RunningCloud, outbox: Path
) -> None:
    """Run the agent while the cloud answers 503 until the outbox drops readings under its
    quota, then until it dies by SIGKILL at `step` of its `NTH` batch."""

    async def dropping() -> bool:
        try:
            return (await asyncio.to_thread(read_stats, outbox)).dropped_readings > 0
        except OutboxError:  # the agent is still creating it
            return False

    env = {} if held is not None else {ENV: f"{step}:{NTH}"}
    cloud.faults.fail_next(503, times=1_000_000)
    async with agent_process(config, env) as agent:
        await until(dropping, within=60, what="the outbox drops readings during the outage")
        cloud.faults.script.clear()
        if held is not None:
            try:
                await asyncio.wait_for(held.reached.wait(), 60)
            except TimeoutError:
                raise AssertionError(f"the cloud saw {held.seen} exchanges, not {NTH}") from None
            os.kill(agent.pid, signal.SIGKILL)
            await agent.wait()
            held.go.set()
            await asyncio.wait_for(held.done.wait(), 30)
        else:
            await asyncio.wait_for(agent.wait(), 60)
        assert agent.returncode == -signal.SIGKILL, f"the agent ended with {agent.returncode}"


async def drain(config: Path, outbox: Path) -> None:
    """Start the agent again (no devices) and stop it once its outbox is empty."""

    async def empty() -> bool:
        stats = await asyncio.to_thread(read_stats, outbox)
        return sum(lane.chunks for lane in stats.lanes.values()) == 0

    async def serving() -> bool:  # its signal handlers are in place: SIGTERM stops it cleanly
        return await asyncio.to_thread(discovery.exists)

    discovery = outbox.parent / "local_api.json"
    discovery.unlink(missing_ok=True)
    async with agent_process(config, {}) as agent:
        await until(serving, within=60, what="the restarted agent serves its local API")
        await until(empty, within=60, what="the restarted agent drains its outbox")
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 30) == 0


@pytest.fixture
def owner(engine_databases: EngineDatabases) -> str:
    """The session's migrated PostgreSQL database, emptied (its owner's DSN)."""
    dsn = engine_databases.migrated("postgres")
    truncate(dsn)
    return dsn


async def run_step(step: str, tmp_path: Path, plant: Plant, owner: str) -> None:
    held: HeldIngest | None = None

    def wrap(app: Any) -> Any:
        nonlocal held
        if step in ("sent", "committed"):
            held = HeldIngest(app, step)
            return held
        return app

    pg: dict[str, Any] = {"database_url": app_dsn(owner), "migrate_database_url": owner,
          "pool_min_size": 1, "pool_max_size": 4}  # fmt: skip
    async with serve_cloud(tmp_path / "unused.db", wrap=wrap, **pg) as cloud:
        await bootstrap(cloud)
        # The outbox's quota is small and the cloud answers 503 until it drops readings: the
        # batches around the exchange that is cut report drops, so their counts are tested too.
        running = write_config(tmp_path / "run.yaml", with_cloud(tmp_path, plant, cloud),
                               quota=QUOTA)  # fmt: skip
        draining = write_config(tmp_path / "drain.yaml", with_cloud(tmp_path, None, cloud))
        outbox = tmp_path / "state" / "outbox.db"
        await kill_at(step, running, held, cloud, outbox)
        accepted_but_unsent = pending_readings(outbox)
        before, _, _ = stored(owner)
        assert before, "the agent stored nothing before it was killed"
        await drain(draining, outbox)
        after, posted, kept = stored(owner)
        readings, dropped = await usage(cloud)
    assert len(after) == len(set(after))  # each reading stored once
    assert set(after) == set(before) | accepted_but_unsent  # every accepted reading, nothing else
    assert readings == len(after) == kept  # usage counts rows stored, not readings posted
    assert (
        dropped == read_stats(outbox).dropped_readings
    )  # each drop counted once, however the exchange was cut
    # The cloud had the batch and the gateway did not know: its chunks went again under a new
    # seq, posted and charged nothing. At the other steps nothing was posted twice.
    replayed = step in ("sent", "committed", "answered")
    assert (posted > kept) is replayed, (step, posted, kept)


DEFAULT_STEPS = ("committed", "answered")
ALL_STEPS = ("leased", "built", "sent", "committed", "answered", "acked")


@pytest.mark.parametrize("step", DEFAULT_STEPS)
async def test_kill_9_at_a_step_of_the_exchange_loses_and_duplicates_nothing(
    step: str, tmp_path: Path, plant: Plant, owner: str
) -> None:
    await run_step(step, tmp_path, plant, owner)


@pytest.mark.slow
@pytest.mark.parametrize("step", [s for s in ALL_STEPS if s not in DEFAULT_STEPS])
async def test_kill_9_at_every_other_step_of_the_exchange(
    step: str, tmp_path: Path, plant: Plant, owner: str
) -> None:
    await run_step(step, tmp_path, plant, owner)
