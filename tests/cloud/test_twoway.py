"""Commands, the gateway's channel, the shadow and the live stream, on both backends, through a
real server (the channel and the stream are long-lived responses)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from cloud.contract import AlarmRecord, Batch, CommandResult, ShadowReport, WriteRecord
from tests.cloud.conftest import Cloud, Start, make_batch, now_us
from tests.cloud.live_support import batch_with_events, open_stream

pytestmark = pytest.mark.integration


async def _command(cloud: Cloud, token: str, gateway_id: int, body: dict[str, Any],
                   **headers: str) -> httpx.Response:  # fmt: skip
    return await cloud.client.post(
        f"/v1/gateways/{gateway_id}/commands", json=body, headers=cloud.auth(token) | headers
    )


WRITE = {"kind": "write", "args": {"device": "pump1", "tag": "speed", "value": 1200}}


async def test_a_command_reaches_the_gateway_channel_at_once_and_its_result_comes_back(
    live: Cloud,
) -> None:
    tenant = await live.tenant("acme")
    gw = await live.gateway(tenant)
    operator = await live.key(tenant, "operator")
    async with open_stream(live.client, "/v1/gateway/channel", gw[1]) as channel:
        hello = await channel.until("hello")
        assert hello.data["gateway_id"] == gw[0]
        assert (await channel.until("desired")).data["version"] == 0
        started = time.monotonic()
        created = await _command(live, operator, gw[0], WRITE)
        assert created.status_code == 201, created.text
        delivered = await channel.until("command", wait_s=2)
        assert time.monotonic() - started < 1.0
    command = delivered.data
    assert command["id"] == created.json()["id"]
    assert command["command"] == WRITE
    assert 590 < command["expires_in_s"] <= 600
    path = f"/v1/gateways/{gw[0]}/commands/{command['id']}"
    seen = (await live.get(tenant.admin, path)).json()
    keys = (await live.get(tenant.admin, "/v1/api-keys")).json()
    operator_id = next(k["id"] for k in keys if k["name"] == "operator")
    assert (seen["state"], seen["deliveries"], seen["created_by"]) == (
        "delivered", 1, f"key {operator_id}")  # fmt: skip
    result = CommandResult(
        type="command_result", command_id=command["id"], state="succeeded",
        result={"old": 1000, "read_back": 1200}, finished_at=now_us(),
    )  # fmt: skip
    for seq in (1, 1, 2):  # the same batch again, then the same result under a new seq
        assert (await live.post(gw[1], batch_with_events(gw[0], seq, [result]))).status_code == 200
    done = (await live.get(tenant.admin, path)).json()
    assert (done["state"], done["result"]) == ("succeeded", {"old": 1000, "read_back": 1200})
    assert done["finished_at"] == result.finished_at


async def test_pending_commands_survive_outages_and_are_delivered_until_answered(
    make_live: Start,
) -> None:
    cloud = await make_live()
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    # created while the gateway is offline
    first = (await _command(cloud, tenant.admin, gw[0], {"kind": "ping"})).json()
    async with open_stream(cloud.client, "/v1/gateway/channel", gw[1]) as channel:
        assert (await channel.until("command")).data["id"] == first["id"]
    # the gateway's answer was lost, or the cloud restarted: delivered again on reconnect
    restarted = await make_live()
    async with open_stream(restarted.client, "/v1/gateway/channel", gw[1]) as channel:
        again = await channel.until("command")
    assert again.data["id"] == first["id"]
    path = f"/v1/gateways/{gw[0]}/commands/{first['id']}"
    assert (await restarted.get(tenant.admin, path)).json()["deliveries"] == 2
    answer = CommandResult(type="command_result", command_id=first["id"], state="succeeded",
                           finished_at=now_us())  # fmt: skip
    await restarted.post(gw[1], batch_with_events(gw[0], 1, [answer]))
    second = (await _command(restarted, tenant.admin, gw[0], {"kind": "ping"})).json()
    async with open_stream(restarted.client, "/v1/gateway/channel", gw[1]) as channel:
        assert (await channel.until("command")).data["id"] == second["id"]  # not the first


async def test_ttl_idempotency_cancel_and_refusals(live: Cloud) -> None:
    tenant = await live.tenant("acme")
    gw = await live.gateway(tenant)
    short = (await _command(live, tenant.admin, gw[0], {"kind": "ping", "ttl_s": 1})).json()
    key = {"Idempotency-Key": "run-42"}
    one = await _command(live, tenant.admin, gw[0], WRITE, **key)
    two = await _command(live, tenant.admin, gw[0], WRITE, **key)
    assert (one.status_code, two.status_code) == (201, 200)
    assert one.json()["id"] == two.json()["id"]
    other = await _command(live, tenant.admin, gw[0], {"kind": "ping"}, **key)
    assert (other.status_code, other.json()["error"]["code"]) == (409, "idempotency_conflict")
    too_long = await _command(live, tenant.admin, gw[0], {"kind": "ping", "ttl_s": 10**6})
    assert too_long.status_code == 422
    assert too_long.json()["error"]["details"]["path"] == ["body", "ttl_s"]
    bad = await _command(live, tenant.admin, gw[0], {"kind": "write", "args": {"device": "p"}})
    assert bad.status_code == 422
    viewer = await live.key(tenant, "viewer")
    assert (await _command(live, viewer, gw[0], {"kind": "ping"})).status_code == 403
    assert (await _command(live, tenant.admin, 999_999, {"kind": "ping"})).status_code == 404
    # a queued command can be cancelled, once
    path = f"/v1/gateways/{gw[0]}/commands/{one.json()['id']}"
    cancelled = await live.client.delete(path, headers=live.auth(tenant.admin))
    assert cancelled.json()["state"] == "cancelled"
    again = await live.client.delete(path, headers=live.auth(tenant.admin))
    assert (again.status_code, again.json()["error"]["code"]) == (409, "command_not_queued")
    # the TTL runs out before the gateway connects: expired by the sweep, never delivered
    deadline = time.monotonic() + 6
    short_path = f"/v1/gateways/{gw[0]}/commands/{short['id']}"
    while (await live.get(tenant.admin, short_path)).json()["state"] != "expired":
        assert time.monotonic() < deadline, "the TTL sweep did not expire the command"
        await asyncio.sleep(0.2)
    fresh = (await _command(live, tenant.admin, gw[0], {"kind": "ping"})).json()
    async with open_stream(live.client, "/v1/gateway/channel", gw[1]) as channel:
        assert (await channel.until("command")).data["id"] == fresh["id"]
    listed = (await live.get(tenant.admin, f"/v1/gateways/{gw[0]}/commands")).json()
    assert [c["state"] for c in listed] == ["delivered", "cancelled", "expired"]
    assert [c["id"] for c in listed] == [fresh["id"], one.json()["id"], short["id"]]


async def test_shadow_desired_reaches_the_channel_with_versions_and_delta(live: Cloud) -> None:
    tenant = await live.tenant("acme")
    gw = await live.gateway(tenant)
    path = f"/v1/gateways/{gw[0]}/shadow"
    auth = live.auth(tenant.admin)
    empty = await live.client.get(path, headers=auth)
    assert (empty.headers["etag"], empty.json()["desired"]) == ('"0"', {})
    patch = {"desired": {"setpoints": {"pump1": {"speed": {"value": 1200},
                                                  "mode": {"value": "auto"}}}}}  # fmt: skip
    async with open_stream(live.client, "/v1/gateway/channel", gw[1]) as channel:
        assert (await channel.until("desired")).data["version"] == 0
        r = await live.client.patch(path, json=patch, headers=auth | {"If-Match": '"0"'})
        assert (r.status_code, r.headers["etag"]) == (200, '"1"')
        desired = (await channel.until("desired", wait_s=2)).data
    assert desired["version"] == 1
    speed = desired["setpoints"]["pump1"]["speed"]
    assert (speed["value"], speed["version"], speed["expires_at"]) == (1200, 1, None)
    stale = await live.client.patch(path, json=patch, headers=auth | {"If-Match": '"0"'})
    assert (stale.status_code, stale.json()["error"]["code"]) == (412, "precondition_failed")
    past = {"desired": {"setpoints": {"pump1": {"speed": {"value": 1, "expires_at": 5}}}}}
    assert (await live.client.patch(path, json=past, headers=auth)).status_code == 422
    # the gateway reports: speed holds 1200 (no delta), mode is still manual (delta)
    report = ShadowReport(
        type="reported", version=10, desired_version=1, agent_version="0.2.0",
        setpoints={"pump1": {"speed": {"value": 1200.0}, "mode": {"value": "manual"}}},
    )  # fmt: skip
    older = report.model_copy(update={"version": 9, "agent_version": "0.1.0"})
    await live.post(gw[1], batch_with_events(gw[0], 1, [report, older]))
    shadow = (await live.client.get(path, headers=auth)).json()
    assert shadow["reported"]["agent_version"] == "0.2.0"  # the late, older copy was ignored
    assert shadow["delta"] == {"setpoints": {"pump1": {"mode": {
        "desired": "auto", "reported": "manual", "version": 1, "applied": None}}}}  # fmt: skip
    removed = {"desired": {"setpoints": {"pump1": {"mode": None}}}}
    r = await live.client.patch(path, json=removed, headers=auth)
    assert list(r.json()["desired"]["setpoints"]["pump1"]) == ["speed"]
    assert r.json()["delta"] == {"setpoints": {}}


async def test_stream_serves_readings_alarms_and_commands_filtered(live: Cloud) -> None:
    tenant = await live.tenant("acme")
    gw = await live.gateway(tenant)
    viewer = await live.key(tenant, "viewer")
    async with (
        open_stream(live.client, "/v1/stream", viewer) as everything,
        open_stream(live.client, "/v1/stream", viewer, device="pump2", kinds="readings") as pump2,
    ):
        await everything.subscribed()
        await pump2.subscribed()
        batch = make_batch(gw[0], 1, devices=("pump1", "pump2"), n=3)
        sim = batch.series[2]
        series = [*batch.series[:2], type(sim)(sim.device, sim.tag, sim.ts, sim.values,
                                               sim.qualities, sim.unit, simulated=True),
                  batch.series[3]]  # fmt: skip
        alarm = AlarmRecord(device="pump1", name="flow_high", ts=now_us() - 5, severity="high")
        assert (await live.send(gw, Batch(batch.gateway_id, 1, batch.created_at, series,
                                          [alarm]))).status_code == 200  # fmt: skip
        readings = (await everything.until("readings")).data
        assert [(s["device"], s["tag"], s["simulated"]) for s in readings["series"]] == [
            ("pump1", "flow", False), ("pump1", "pressure", False),
            ("pump2", "flow", True), ("pump2", "pressure", False),
        ]  # fmt: skip
        assert readings["series"][0]["values"] == [0.5, 1.5, 2.5]
        assert readings["simulated"] is True
        transition = (await everything.until("alarm")).data
        assert (transition["name"], transition["state"], transition["severity"]) == (
            "flow_high", "active", "high")  # fmt: skip
        assert (transition["gateway_id"], transition["simulated"]) == (gw[0], False)
        alarm_id = (await live.get(viewer, "/v1/alarms")).json()[0]["id"]
        assert transition["alarm_id"] == alarm_id
        only = (await pump2.next()).data
        assert {s["device"] for s in only["series"]} == {"pump2"}
        await _command(live, tenant.admin, gw[0], {"kind": "ping"})
        command = (await everything.until("command")).data
        assert (command["kind"], command["state"]) == ("ping", "queued")


async def test_a_slow_stream_client_is_told_what_it_missed(make_live: Start) -> None:
    cloud = await make_live(stream_buffer_events=2)
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    alarms = [AlarmRecord(device="pump1", name=f"a{i}", ts=now_us() - 100 + i) for i in range(7)]
    async with open_stream(cloud.client, "/v1/stream", tenant.admin, kinds="alarms") as stream:
        await stream.subscribed()
        await cloud.send(gw, Batch(str(gw[0]), 1, now_us(), [], alarms))
        missed = await stream.next()
        assert (missed.name, missed.data) == ("missed", {"missed": 5})
        held = [(await stream.next()).data["name"] for _ in range(2)]
    assert held == ["a0", "a1"]


async def test_write_records_are_kept_once(live: Cloud) -> None:
    tenant = await live.tenant("acme")
    gw = await live.gateway(tenant)
    record = WriteRecord(
        type="write", id=1, ts=now_us(), device="pump1", tag="speed", value=1200, old=1000,
        read_back=1200, outcome="written", who="uid 1000 (operator)", source="cli",
    )  # fmt: skip
    refused = record.model_copy(update={"id": 2, "value": 9000, "outcome": "refused",
                                        "read_back": None, "reason": "above max 1500"})  # fmt: skip
    for seq in (1, 2):
        await live.post(gw[1], batch_with_events(gw[0], seq, [record, refused]))
    writes = (await live.get(tenant.admin, f"/v1/gateways/{gw[0]}/writes")).json()
    assert [(w["value"], w["outcome"], w["reason"]) for w in writes] == [
        (9000, "refused", "above max 1500"), (1200, "written", None)]  # fmt: skip
    assert (writes[1]["old"], writes[1]["read_back"], writes[1]["source"]) == (1000, 1200, "cli")
