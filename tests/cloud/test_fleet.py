"""Remote configuration and fleet health in the cloud, on both backends: versions with secrets
redacted below admin, rollouts in waves that stop at the first failure, the gateway's channel
and documents, drift, status documents and the health derived from them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cloud.contract import ConfigProblem, config_digest
from tests.cloud.conftest import Cloud
from tests.cloud.fleet_support import CONFIG, Reporter, push, rollout
from tests.cloud.live_support import open_stream

pytestmark = pytest.mark.integration

SECRET = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"  # noqa: S105 - a test hash


async def test_versions_keep_their_text_and_hide_secrets_below_admin(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    viewer, operator = await cloud.key(tenant, "viewer"), await cloud.key(tenant, "operator")
    first = await push(cloud, tenant.admin, comment="first")
    changed = CONFIG.replace("probation: 10", "probation: 20")
    second = await push(cloud, tenant.admin, changed)
    as_admin = (await cloud.get(tenant.admin, f"/v1/configs/{first}")).json()
    assert (as_admin["document"], as_admin["redacted"]) == (CONFIG, False)
    assert as_admin["digest"] == config_digest(CONFIG)
    assert as_admin["comment"] == "first"
    for token in (viewer, operator):
        seen = (await cloud.get(token, f"/v1/configs/{first}")).json()
        assert seen["redacted"] is True
        assert SECRET not in seen["document"]
        assert 'password_hash: "<redacted>"' in seen["document"]
        assert "# plant A, line 2" in seen["document"]  # comments and layout kept
    diff = (await cloud.get(viewer, f"/v1/configs/{second}/diff", **{"from": first})).json()
    assert "-fleet: {managed_by: cloud, probation: 10}" in diff["diff"]
    assert "+fleet: {managed_by: cloud, probation: 20}" in diff["diff"]
    assert SECRET not in diff["diff"]
    listed = (await cloud.get(viewer, "/v1/configs")).json()
    assert [v["version"] for v in listed] == [second, first]
    assert all(v["document"] is None for v in listed)
    refused = await cloud.client.post(
        "/v1/configs", json={"document": CONFIG}, headers=cloud.auth(operator)
    )
    assert refused.status_code == 403
    for bad in ("- a list", "a: [unclosed"):
        r = await cloud.client.post(
            "/v1/configs", json={"document": bad}, headers=cloud.auth(tenant.admin)
        )
        assert r.status_code == 422, bad
        assert r.json()["error"]["details"]["path"] == ["body", "document"]


async def test_a_push_reaches_the_gateway_and_its_outcome_completes_the_rollout(
    live: Cloud,
) -> None:
    tenant = await live.tenant("acme")
    gw = await live.gateway(tenant)
    version = await push(live, tenant.admin)
    async with open_stream(live.client, "/v1/gateway/channel", gw[1]) as channel:
        assert (await channel.until("config")).data["version"] == 0
        started = await rollout(live, tenant.admin, version, gateway_id=gw[0])
        desired = (await channel.until("config", wait_s=2)).data
    assert (desired["version"], desired["digest"]) == (version, config_digest(CONFIG))
    assert desired["rollout_id"] == started["id"]
    assert started["state"] == "running"
    assert started["gateways"][0]["state"] == "sent"
    fetched = (await live.get(gw[1], "/v1/gateway/config")).json()
    assert (fetched["version"], fetched["document"]) == (version, CONFIG)  # secrets included
    gateway = Reporter(live, gw)
    await gateway.send(gateway.config("applying", version), gateway.config("probation", version))
    assert (await live.get(tenant.admin, f"/v1/rollouts/{started['id']}")).json()["state"] == (
        "running"
    )
    await gateway.send(gateway.config("applied", version))
    done = (await live.get(tenant.admin, f"/v1/rollouts/{started['id']}")).json()
    assert (done["state"], done["counts"]["passed"]) == ("completed", 1)
    state = (await live.get(tenant.admin, f"/v1/gateways/{gw[0]}/config")).json()
    assert state["desired"]["version"] == version
    assert state["pinned"] is True
    assert (state["running_version"], state["last_good_version"]) == (version, version)
    assert state["last"]["outcome"] == "applied"
    history = (await live.get(tenant.admin, f"/v1/gateways/{gw[0]}/config/history")).json()
    assert [e["kind"] for e in history] == ["applied", "probation", "applying", "assigned"]
    assert history[-1]["by"] == f"rollout {started['id']}"
    assert history[0]["by"] == f"gateway {gw[0]}"
    # the same reports again (a replayed batch) change nothing
    await gateway.send(gateway.config("applied", version, seq=1))
    again = (await live.get(tenant.admin, f"/v1/gateways/{gw[0]}/config/history")).json()
    assert len(again) == 4


async def test_a_refused_config_stops_its_rollout_with_the_validators_problems(
    cloud: Cloud,
) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    gateway = Reporter(cloud, gw)
    good = await push(cloud, tenant.admin)
    await rollout(cloud, tenant.admin, good, gateway_id=gw[0])
    await gateway.send(gateway.config("applied", good))
    bad_text = CONFIG.replace("probation: 10", "probation: -1")
    bad = await push(cloud, tenant.admin, bad_text)
    started = await rollout(cloud, tenant.admin, bad, gateway_id=gw[0])
    problem = ConfigProblem(line=3, path="fleet.probation", message="must be > 0")
    await gateway.send(gateway.config(
        "refused", bad, document=bad_text, reason="the config does not validate",
        problems=[problem], running_version=good, running_digest=config_digest(CONFIG),
    ))  # fmt: skip
    stopped = (await cloud.get(tenant.admin, f"/v1/rollouts/{started['id']}")).json()
    assert stopped["state"] == "stopped"
    assert "refused: the config does not validate" in stopped["reason"]
    state = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}/config")).json()
    assert state["desired"]["version"] == good  # back to what it runs
    assert state["running_version"] == good
    assert state["last"]["problems"] == [
        {"line": 3, "path": "fleet.probation", "message": "must be > 0"}
    ]


async def _labelled(cloud: Cloud, tenant: Any, names: list[str], label: dict[str, str]) -> list[
    tuple[int, str]
]:  # fmt: skip
    gateways = []
    for name in names:
        gw = await cloud.gateway(tenant, name)
        r = await cloud.client.put(
            f"/v1/gateways/{gw[0]}/labels", json={"labels": label}, headers=cloud.auth(tenant.admin)
        )
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == label
        gateways.append(gw)
    return gateways


async def test_a_label_rollout_goes_in_waves_and_stops_at_the_first_failure(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    fleet = await _labelled(cloud, tenant, [f"gw{i}" for i in range(1, 6)], {"site": "plant-a"})
    other = await _labelled(cloud, tenant, ["elsewhere"], {"site": "plant-b"})
    old = await push(cloud, tenant.admin)
    pinned = fleet[4]
    await rollout(cloud, tenant.admin, old, gateway_id=pinned[0])  # its own assignment
    new_text = CONFIG.replace("probation: 10", "probation: 11")
    new = await push(cloud, tenant.admin, new_text)
    started = await rollout(cloud, tenant.admin, new, label="site=plant-a", wave_size=1)
    by_id = {g["gateway_id"]: g for g in started["gateways"]}
    assert by_id[pinned[0]]["state"] == "skipped"
    assert [by_id[g[0]]["wave"] for g in fleet[:4]] == [1, 2, 3, 4]
    assert [by_id[g[0]]["state"] for g in fleet[:4]] == ["sent", "waiting", "waiting", "waiting"]
    path = f"/v1/rollouts/{started['id']}"
    for gw in fleet[:2]:
        reporter = Reporter(cloud, gw)
        await reporter.send(reporter.config("applied", new, document=new_text))
    third = Reporter(cloud, fleet[2])
    assert (await cloud.get(tenant.admin, path)).json()["current_wave"] == 3
    await third.send(third.config("rolled_back", new, document=new_text,
                                  reason="device boiler2 did not connect within 10 s"))  # fmt: skip
    final = (await cloud.get(tenant.admin, path)).json()
    assert final["state"] == "stopped"
    assert "boiler2 did not connect" in final["reason"]
    states = {g["gateway_id"]: g["state"] for g in final["gateways"]}
    assert [states[g[0]] for g in fleet] == ["passed", "passed", "failed", "cancelled", "skipped"]

    async def desired(gw: tuple[int, str]) -> int | None:
        found = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}/config")).json()["desired"]
        return None if found is None else int(found["version"])

    assert [await desired(gw) for gw in fleet] == [new, new, None, None, old]
    assert await desired(other[0]) is None
    listed = (await cloud.get(tenant.admin, "/v1/rollouts", state="stopped")).json()
    assert [r["id"] for r in listed] == [started["id"]]
    assert listed[0]["counts"]["passed"] == 2


async def test_a_gateway_that_reports_nothing_fails_its_wave_after_the_timeout(
    make_cloud: Any,
) -> None:
    cloud: Cloud = await make_cloud(fleet_sweep_s=0.1)
    tenant = await cloud.tenant("acme")
    fleet = await _labelled(cloud, tenant, ["gw1", "gw2"], {"line": "2"})
    version = await push(cloud, tenant.admin)
    started = await rollout(cloud, tenant.admin, version, label="line=2", wave_percent=50,
                            wave_timeout_s=1)  # fmt: skip
    assert started["waves"] == 2
    deadline = time.monotonic() + 10
    while (now := await cloud.get(tenant.admin, f"/v1/rollouts/{started['id']}")).json()[
        "state"
    ] == "running":
        assert time.monotonic() < deadline, now.json()
        await asyncio.sleep(0.1)
    stopped = now.json()
    assert stopped["state"] == "stopped"
    assert "no result within 1 s" in stopped["reason"]
    assert [g["state"] for g in stopped["gateways"]] == ["failed", "cancelled"]
    assert fleet


async def test_a_gateway_reads_only_versions_assigned_to_it(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    mine, theirs = await cloud.gateway(tenant, "mine"), await cloud.gateway(tenant, "theirs")
    assert (await cloud.get(mine[1], "/v1/gateway/config")).status_code == 404
    version = await push(cloud, tenant.admin)
    await rollout(cloud, tenant.admin, version, gateway_id=theirs[0])
    assert (await cloud.get(theirs[1], f"/v1/gateway/config/{version}")).status_code == 200
    assert (await cloud.get(mine[1], f"/v1/gateway/config/{version}")).status_code == 404
    assert (await cloud.get(tenant.admin, "/v1/gateway/config")).status_code == 403


async def test_a_gateway_joining_a_label_later_gets_the_labels_version(live: Cloud) -> None:
    tenant = await live.tenant("acme")
    (first,) = await _labelled(live, tenant, ["gw1"], {"site": "plant-a"})
    version = await push(live, tenant.admin)
    started = await rollout(live, tenant.admin, version, label="site=plant-a")
    reporter = Reporter(live, first)
    await reporter.send(reporter.config("applied", version))
    assert (await live.get(tenant.admin, f"/v1/rollouts/{started['id']}")).json()["state"] == (
        "completed"
    )
    (late,) = await _labelled(live, tenant, ["gw2"], {"site": "plant-a"})
    async with open_stream(live.client, "/v1/gateway/channel", late[1]) as channel:
        assert (await channel.until("config")).data["version"] == version
    state = (await live.get(tenant.admin, f"/v1/gateways/{late[0]}/config")).json()
    assert state["desired"]["via"] == "label site=plant-a"
    assert state["pinned"] is False


async def test_drift_shows_both_files_and_push_from_the_gateway_adopts_its_own(
    cloud: Cloud,
) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    viewer = await cloud.key(tenant, "viewer")
    gateway = Reporter(cloud, gw)
    version = await push(cloud, tenant.admin)
    await rollout(cloud, tenant.admin, version, gateway_id=gw[0])
    await gateway.send(gateway.config("applied", version))
    edited = CONFIG.replace("devices: []", "devices: []  # edited on site")
    await gateway.send(gateway.config("drift", None, document=edited))
    r = await cloud.client.put("/v1/gateway/config/local", json={"document": edited},
                               headers=cloud.auth(gw[1]))  # fmt: skip
    assert r.status_code == 204, r.text
    seen = (await cloud.get(viewer, f"/v1/gateways/{gw[0]}/config")).json()
    assert seen["desired"]["version"] == version
    assert seen["drift"]["digest"] == config_digest(edited)
    assert "+devices: []  # edited on site" in seen["drift"]["diff"]
    assert SECRET not in seen["drift"]["document"]
    adopted = await cloud.client.post("/v1/gateway/config", json={"document": edited},
                                      headers=cloud.auth(gw[1]))  # fmt: skip
    assert adopted.status_code == 201, adopted.text
    assert adopted.json()["source"] == "gateway"
    await gateway.send(gateway.config("applied", adopted.json()["version"], document=edited))
    after = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}/config")).json()
    assert after["desired"]["version"] == adopted.json()["version"]
    assert after["drift"] is None
    kinds = [e["kind"] for e in (await cloud.get(
        tenant.admin, f"/v1/gateways/{gw[0]}/config/history")).json()]  # fmt: skip
    assert kinds[:4] == ["applied", "assigned", "adopted", "drift"]


async def test_status_documents_make_a_gateway_degraded_with_the_reasons(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    quiet = await cloud.gateway(tenant, "quiet")
    gateway = Reporter(cloud, gw)
    assert (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}")).json()["health"]["state"] == (
        "offline"
    )  # never seen
    await gateway.send(gateway.status())
    health = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}/health")).json()
    assert health["health"]["state"] == "healthy"
    assert health["status"]["drivers"] == [{"name": "pump1", "state": "connected"}]
    down = gateway.status(
        drivers=[{"name": "pump1", "state": "backoff", "last_error": "connection refused"}],
        backlog_oldest_s=900.0, disk_free_bytes=10, disk_total_bytes=1_000,
        clock_synchronized=False,
    )  # fmt: skip
    older = gateway.status(seq=1)  # arrives late: ignored
    await gateway.send(down, older)
    degraded = (await cloud.get(tenant.admin, "/v1/gateways", health="degraded")).json()
    assert [g["id"] for g in degraded] == [gw[0]]
    reasons = degraded[0]["health"]["reasons"]
    assert reasons[0] == "driver pump1 is backoff: connection refused"
    assert any("backlog is 900 s old" in r for r in reasons)
    assert any("disk nearly full" in r for r in reasons)
    assert "clock not synchronized" in reasons
    await Reporter(cloud, quiet).send()  # contact, but no status document yet
    unknown = (await cloud.get(tenant.admin, "/v1/gateways", health="unknown")).json()
    assert [g["id"] for g in unknown] == [quiet[0]]
    detail = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}/health")).json()
    assert [e["state"] for e in detail["events"]] == ["degraded", "healthy"]
    counts = (await cloud.get(tenant.admin, "/v1/usage/fleet")).json()
    assert counts == [{"tenant_id": tenant.id, "gateways": 2, "healthy": 0, "degraded": 1,
                       "offline": 0, "unknown": 1}]  # fmt: skip
    # the same causes with other figures are not a new change of health
    later = {**down.model_dump(), "seq": 99, "backlog_oldest_s": 960.0}
    await gateway.send(gateway.status(**later))
    again = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}/health")).json()
    assert len(again["events"]) == 2
    assert any("960 s" in r for r in again["health"]["reasons"])


async def test_a_silent_gateway_turns_offline_and_the_gauges_say_so(make_cloud: Any) -> None:
    cloud: Cloud = await make_cloud(health_offline_after_s=0.5, fleet_sweep_s=0.1)
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    gateway = Reporter(cloud, gw)
    await gateway.send(gateway.status())
    assert (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}")).json()["health"]["state"] == (
        "healthy"
    )
    await asyncio.sleep(0.8)
    seen = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}")).json()["health"]
    assert seen["state"] == "offline"
    assert "no contact" in seen["reasons"][0]
    await asyncio.sleep(0.3)  # a sweep ran since
    metrics = (await cloud.client.get("/metrics")).text
    assert f'tagway_cloud_fleet_gateways{{health="offline",tenant="{tenant.id}"}} 1.0' in metrics


def test_the_fleet_gauges_name_only_the_largest_tenants() -> None:
    from cloud.fleet import publish_counts  # noqa: PLC0415 - a unit test of one function
    from cloud.metrics import CloudMetrics  # noqa: PLC0415
    from cloud.storage.fleet_records import FleetCounts  # noqa: PLC0415

    metrics = CloudMetrics()
    counts = [FleetCounts(tenant_id=t, gateways=t, healthy=t) for t in range(1, 8)]
    publish_counts(metrics, counts, max_tenants=3)
    samples = {
        (s.labels["tenant"], s.labels["health"]): s.value
        for family in metrics.registry.collect() if family.name == "tagway_cloud_fleet_gateways"
        for s in family.samples
    }  # fmt: skip
    assert {t for t, _ in samples} == {"7", "6", "5", "other"}
    assert samples[("other", "healthy")] == 1 + 2 + 3 + 4


async def test_rollout_requests_are_checked(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    version = await push(cloud, tenant.admin)
    h = cloud.auth(tenant.admin)
    cases = {
        "no target": {"version": version},
        "two targets": {"version": version, "gateway_id": gw[0], "label": "a=b"},
        "bad label": {"version": version, "label": "no equals sign"},
        "both wave sizes": {"version": version, "label": "a=b", "wave_size": 1, "wave_percent": 5},
    }
    for name, body in cases.items():
        r = await cloud.client.post("/v1/rollouts", json=body, headers=h)
        assert r.status_code == 422, name
    missing = await cloud.client.post("/v1/rollouts", json={"version": 999, "gateway_id": gw[0]},
                                      headers=h)  # fmt: skip
    assert missing.status_code == 404


async def test_documents_the_database_cannot_hold_are_refused_whole(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    h = cloud.auth(tenant.admin) | {"Content-Type": "application/json"}
    for body in (
        b'{"document": "a: \\u0000"}',
        b'{"document": "a: \\ud800"}',
        b'{"document": "a: 1", "comment": "\\ud800"}',
    ):
        r = await cloud.client.post("/v1/configs", content=body, headers=h)
        assert r.status_code == 422, body
    big = "a: " + "x" * (1_048_576 + 1)
    r = await cloud.client.post("/v1/configs", json={"document": big}, headers=h)
    assert r.status_code in (413, 422)
    quoted = "a: '" + '"' * 300_000 + "'"  # 300 kB, JSON-escaped to 600 kB: under the limit
    r = await cloud.client.post("/v1/configs", json={"document": quoted}, headers=h)
    assert r.status_code == 201, r.text
