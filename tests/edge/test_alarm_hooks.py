"""Alarm shelving and notification hooks: an operator silences one alarm for a stated time (audited,
and it comes back by itself), and every alarm transition reaches a webhook or a command even when
the receiver is down for a while or the agent restarts in between."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import apsw
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edge.alarm_store import AlarmStore
from edge.alarms import UnknownAlarm
from edge.local_api import QuietServer
from edge.shelving import MAX_SHELVE_S, AlarmShelf, ShelveRefused
from firmware_sim.plant import Plant
from tests.edge.harness import RunningAgent, agent_config, modbus_devices, running_agent

S = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * S

    def __call__(self) -> int:
        return self.now


def test_a_shelf_is_time_limited_needs_a_reason_audits_everything_and_survives_restart(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = AlarmStore(tmp_path / "alarms.db")
    shelf = AlarmShelf(store, lambda: {"pump1.hot", "tank.low"}, clock=clock)
    with pytest.raises(ShelveRefused, match="at most 24 hours"):
        shelf.shelve("pump1.hot", duration_s=MAX_SHELVE_S + 1, by="ana", reason="x")
    with pytest.raises(ShelveRefused, match="more than 0"):
        shelf.shelve("pump1.hot", duration_s=0, by="ana", reason="x")
    with pytest.raises(ShelveRefused, match="reason"):
        shelf.shelve("pump1.hot", duration_s=60, by="ana", reason="  ")
    with pytest.raises(UnknownAlarm):
        shelf.shelve("nope", duration_s=60, by="ana", reason="x")

    shelf.shelve("pump1.hot", duration_s=600, by="ana", reason="sensor being replaced")
    assert shelf.is_shelved("pump1.hot")
    assert not shelf.is_shelved("tank.low")
    store.close()

    clock.now += 300 * S  # a restart half-way: the shelf is still there
    store = AlarmStore(tmp_path / "alarms.db")
    shelf = AlarmShelf(store, lambda: {"pump1.hot", "tank.low"}, clock=clock)
    kept = shelf.get("pump1.hot")
    assert kept is not None
    assert (kept.by, kept.reason) == ("ana", "sensor being replaced")
    assert shelf.expire() == []

    clock.now += 301 * S  # its time runs out: back by itself
    assert shelf.expire() == ["pump1.hot"]
    assert not shelf.is_shelved("pump1.hot")
    shelf.shelve("tank.low", duration_s=60, by="bo", reason="cleaning")
    assert shelf.unshelve("tank.low", by="cy") is True
    assert shelf.unshelve("tank.low", by="cy") is False
    audit = [(a.rule, a.action, a.by) for a in shelf.audit()]
    assert audit == [
        ("tank.low", "unshelved", "cy"),
        ("tank.low", "shelved", "bo"),
        ("pump1.hot", "expired", "tagway"),
        ("pump1.hot", "shelved", "ana"),
    ]
    store.close()


def test_an_alarm_state_file_of_the_previous_release_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "alarms.db"
    old = apsw.Connection(str(path))  # schema 1, as 0.1 wrote it
    old.execute(
        "CREATE TABLE alarm_state (rule TEXT PRIMARY KEY, state TEXT NOT NULL, raised_at INTEGER,"
        " acked_at INTEGER, cleared_at INTEGER, value TEXT) WITHOUT ROWID;"
        "INSERT INTO alarm_state VALUES ('pump1.hot', 'active', 5, NULL, NULL, '3.5');"
        "PRAGMA user_version = 1"
    )
    old.close()
    store = AlarmStore(path)
    assert store.load()["pump1.hot"].value == 3.5
    shelf = AlarmShelf(store, lambda: {"pump1.hot"})
    shelf.shelve("pump1.hot", duration_s=60, by="ana", reason="after the upgrade")
    assert store.load_shelves()["pump1.hot"].by == "ana"
    store.close()


class Receiver:
    """A webhook receiver on loopback that can be told to fail."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.failing = False
        self.refused = 0

        async def hook(request: Request) -> JSONResponse:
            if self.failing:
                self.refused += 1
                return JSONResponse({"error": "down for maintenance"}, status_code=503)
            self.bodies.append(await request.json())
            return JSONResponse({})

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def seen(self, alarm: str, transition: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["alarm"] == alarm and b["transition"] == transition]


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    server = QuietServer(uvicorn.Config(receiver.app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[receiver.sock]))
    try:
        yield receiver
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def alarms_on(*names: str) -> list[dict[str, Any]]:
    """High-limit alarms on pump1's flow that are raised by the first reading."""
    return [{"name": n, "device": "pump1", "tag": "flow", "kind": "high", "limit": -1e9,
             "severity": "high"} for n in names]  # fmt: skip


async def wait(running: RunningAgent, predicate: Any, within: float = 20.0) -> None:
    async def check() -> bool:
        return bool(predicate())

    await running.wait_for(check, within)


async def test_a_webhook_gets_every_raise_once_after_its_receiver_recovers(
    tmp_path: Path, plant: Plant
) -> None:
    async with receiving() as receiver:
        receiver.failing = True
        hooks = [{"name": "ops", "url": receiver.url, "on": ["raised", "acked"]}]
        config = agent_config(tmp_path, modbus_devices(plant), alarms=alarms_on("pump1.hot"),
                              notifications=hooks)  # fmt: skip
        async with running_agent(config) as running:

            async def failing() -> bool:
                status = (await running.get("/v1/notifications"))[0]
                return bool(status["failed_attempts"] >= 1)

            await running.wait_for(failing, 20)
            status = (await running.get("/v1/notifications"))[0]
            assert (status["name"], status["pending"]) == ("ops", 1)
            assert "answered 503" in status["last_error"]
            assert receiver.refused >= 3  # retried at once a few times, then later
            receiver.failing = False  # the receiver is back: the waiting raise arrives
            await wait(running, lambda: receiver.seen("pump1.hot", "raised"))
            ack = await running.api.post("/v1/alarms/pump1.hot/ack")
            assert ack.json()["acknowledged"] is True
            await wait(running, lambda: receiver.seen("pump1.hot", "acked"))
            status = (await running.get("/v1/notifications"))[0]
            assert (status["pending"], status["delivered"]) == (0, 2)
    raised = receiver.seen("pump1.hot", "raised")
    assert len(raised) == 1, receiver.bodies
    body = raised[0]
    assert (body["gateway"], body["severity"], body["device"], body["tag"]) == (
        "test-gw", "high", "pump1", "flow")  # fmt: skip


async def test_notifications_waiting_on_disk_are_delivered_after_a_restart(
    tmp_path: Path, plant: Plant
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"  # bound, never listening
    hooks = [{"name": "ops", "url": dead_url}]
    config = agent_config(tmp_path, modbus_devices(plant), alarms=alarms_on("pump1.hot"),
                          notifications=hooks)  # fmt: skip
    async with running_agent(config) as running:

        async def failed() -> bool:
            status = (await running.get("/v1/notifications"))[0]
            return bool(status["failed_attempts"] >= 1 and status["pending"] == 1)

        await running.wait_for(failed, 20)
    closed.close()
    async with receiving() as receiver:
        hooks = [{"name": "ops", "url": receiver.url}]
        config = agent_config(tmp_path, modbus_devices(plant), alarms=alarms_on("pump1.hot"),
                              notifications=hooks)  # fmt: skip
        async with running_agent(config) as running:
            await wait(running, lambda: receiver.seen("pump1.hot", "raised"), within=30)
    # The alarm stayed active across the restart (no new raise): the one from the first life.
    assert len(receiver.bodies) == 1


async def test_a_shelved_alarm_is_not_announced_and_comes_back_when_its_shelf_runs_out(
    tmp_path: Path, plant: Plant
) -> None:
    out = tmp_path / "announced.jsonl"
    script = ("import json, os, sys; body = json.load(sys.stdin); "
              f"open({str(out)!r}, 'a').write(json.dumps([body, "
              "os.environ['TAGWAY_ALARM_TRANSITION']]) + '\\n')")  # fmt: skip
    hooks = [{"name": "siren", "command": [sys.executable, "-c", script],
              "on": ["raised", "acked"]}]  # fmt: skip
    config = agent_config(tmp_path / "state", modbus_devices(plant),
                          alarms=alarms_on("pump1.hot", "pump1.very_hot"),
                          notifications=hooks)  # fmt: skip

    def announced() -> list[tuple[str, str, str]]:
        if not out.exists():
            return []
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        return [(b["alarm"], env, b.get("note", "")) for b, env in rows]

    async with running_agent(config) as running:
        await wait(running, lambda: len(announced()) == 2)
        shelved = await running.api.post("/v1/alarms/pump1.hot/shelve",
                                         json={"duration_s": 3600, "reason": "sensor swap",
                                               "by": "ana"})  # fmt: skip
        assert shelved.status_code == 200, shelved.text
        brief = {"duration_s": 1.5, "reason": "test", "by": "bo"}
        short = await running.api.post("/v1/alarms/pump1.very_hot/shelve", json=brief)
        assert short.status_code == 200, short.text
        listed = {a["name"]: a for a in await running.get("/v1/alarms")}
        assert listed["pump1.hot"]["shelved_by"] == "ana"
        assert listed["pump1.hot"]["shelve_reason"] == "sensor swap"
        assert listed["pump1.very_hot"]["shelved_until"] is not None
        # Acknowledging a shelved alarm is recorded but not announced.
        await running.api.post("/v1/alarms/pump1.hot/ack")
        # The short shelf runs out while its alarm is still active and unacknowledged.
        await wait(running, lambda: len(announced()) == 3)
        long = {"duration_s": 2 * MAX_SHELVE_S, "reason": "x"}
        too_long = await running.api.post("/v1/alarms/pump1.hot/shelve", json=long)
        stranger = await running.api.post("/v1/alarms/pump1.hot/shelve", json=brief,
                                          headers={"Authorization": "Bearer wrong"})  # fmt: skip
        assert stranger.status_code == 401  # shelving needs the local API token, as ack does
        assert too_long.status_code == 422
        assert "24 hours" in too_long.text
        audit = await running.get("/v1/alarms-shelving")
        assert [(a["alarm"], a["action"]) for a in audit][:3] == [
            ("pump1.very_hot", "expired"), ("pump1.very_hot", "shelved"),
            ("pump1.hot", "shelved")]  # fmt: skip
    got = announced()
    assert sorted(got[:2]) == [("pump1.hot", "raised", ""), ("pump1.very_hot", "raised", "")]
    assert got[2] == ("pump1.very_hot", "raised", "shelving ended; the alarm is still active")
    assert ("pump1.hot", "acked", "") not in got
