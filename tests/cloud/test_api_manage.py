"""Tenants, keys, roles, gateways, devices, telemetry reads, alarms, usage and operations,
on both backends."""

from __future__ import annotations

import pytest

from cloud.contract import AlarmRecord, Batch, SeriesColumns
from tests.cloud.conftest import PLATFORM_KEY, Cloud, make_batch, now_us

pytestmark = pytest.mark.integration
MINUTE_US = 60_000_000


async def test_errors_have_one_shape(cloud: Cloud) -> None:
    r = await cloud.client.get("/v1/devices")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    r = await cloud.get("nonsense", "/v1/devices")
    assert r.status_code == 401
    tenant = await cloud.tenant("acme")
    r = await cloud.get(tenant.admin, "/v1/devices/999")
    assert r.status_code == 404
    assert r.json()["error"] == {"code": "not_found", "message": "device not found", "details": {}}
    r = await cloud.get(tenant.admin, "/v1/devices/not-a-number")
    assert r.status_code == 422
    assert r.json()["error"]["details"]["path"] == ["path", "device_id"]
    r = await cloud.client.post(
        "/v1/api-keys", json={"name": "x", "role": "god"}, headers=cloud.auth(tenant.admin)
    )
    assert r.status_code == 422
    assert r.json()["error"]["details"]["path"] == ["body", "role"]
    r = await cloud.get(tenant.admin, "/v1/nowhere")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_tenants_are_for_the_platform_admin(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    await cloud.tenant("globex")
    r = await cloud.get(PLATFORM_KEY, "/v1/tenants")
    assert [t["name"] for t in r.json()] == ["acme", "globex"]
    assert (await cloud.get(tenant.admin, "/v1/tenants")).status_code == 403
    r = await cloud.client.post(
        "/v1/tenants", json={"name": "acme"}, headers=cloud.auth(PLATFORM_KEY)
    )
    assert r.status_code == 409
    r = await cloud.client.put(
        f"/v1/tenants/{tenant.id}/limits",
        json={"ingest_quota_per_day": 10, "rate_limit": 5},
        headers=cloud.auth(PLATFORM_KEY),
    )
    assert r.json()["ingest_quota_per_day"] == 10
    own = (await cloud.get(tenant.admin, "/v1/tenant")).json()
    assert own["name"] == "acme"
    assert own["rate_limit"] == 5
    assert (await cloud.get(PLATFORM_KEY, "/v1/tenants/999")).status_code == 404
    assert (await cloud.get(PLATFORM_KEY, "/v1/devices")).status_code == 403


async def test_api_keys_shown_once_hashed_revocable_with_roles(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    viewer = await cloud.key(tenant, "viewer")
    operator = await cloud.key(tenant, "operator")
    keys = (await cloud.get(tenant.admin, "/v1/api-keys")).json()
    assert [k["role"] for k in keys] == ["admin", "viewer", "operator"]
    assert all("token" not in k and "key_hash" not in k for k in keys)
    assert keys[1]["prefix"] == viewer[:14]
    assert keys[0]["last_used_at"] is not None  # the admin key has been used
    # roles
    assert (await cloud.get(viewer, "/v1/devices")).status_code == 200
    r = await cloud.client.post(
        "/v1/api-keys", json={"name": "x", "role": "admin"}, headers=cloud.auth(viewer)
    )
    assert r.status_code == 403
    r = await cloud.client.post("/v1/gateways", json={"name": "g"}, headers=cloud.auth(operator))
    assert r.status_code == 403
    # revocation takes effect at once
    r = await cloud.client.delete(f"/v1/api-keys/{keys[1]['id']}", headers=cloud.auth(tenant.admin))
    assert r.json()["revoked_at"] is not None
    assert (await cloud.get(viewer, "/v1/devices")).status_code == 401


async def test_gateways_crud(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant, "north")
    r = await cloud.client.post(
        "/v1/gateways", json={"name": "north"}, headers=cloud.auth(tenant.admin)
    )
    assert r.status_code == 409
    r = await cloud.client.patch(
        f"/v1/gateways/{gw[0]}", json={"name": "south"}, headers=cloud.auth(tenant.admin)
    )
    assert r.json()["name"] == "south"
    assert r.json()["token_prefix"] == gw[1][:14]
    await cloud.send(gw, make_batch(gw[0], 1))
    r = await cloud.client.delete(f"/v1/gateways/{gw[0]}", headers=cloud.auth(tenant.admin))
    assert r.status_code == 204
    assert (await cloud.get(tenant.admin, "/v1/gateways")).json() == []
    assert (await cloud.get(tenant.admin, "/v1/series")).json() == []
    assert (await cloud.send(gw, make_batch(gw[0], 2))).status_code == 401


async def test_devices_rename_metadata_delete(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    await cloud.send(gw, make_batch(gw[0], 1, devices=("pump1", "pump2")))
    devices = (await cloud.get(tenant.admin, "/v1/devices", gateway_id=gw[0])).json()
    assert [d["name"] for d in devices] == ["pump1", "pump2"]
    operator = await cloud.key(tenant, "operator")
    r = await cloud.client.patch(
        f"/v1/devices/{devices[0]['id']}",
        json={"display_name": "Feed pump", "metadata": {"site": "north", "line": 2}},
        headers=cloud.auth(operator),
    )
    assert r.status_code == 200, r.text
    assert r.json()["display_name"] == "Feed pump"
    assert r.json()["metadata"] == {"site": "north", "line": 2}
    assert r.json()["name"] == "pump1"
    r = await cloud.client.delete(f"/v1/devices/{devices[1]['id']}", headers=cloud.auth(operator))
    assert r.status_code == 403
    r = await cloud.client.delete(
        f"/v1/devices/{devices[1]['id']}", headers=cloud.auth(tenant.admin)
    )
    assert r.status_code == 204
    series = (await cloud.get(tenant.admin, "/v1/series")).json()
    assert {s["device"] for s in series} == {"pump1"}
    # the renamed device keeps receiving under the gateway's own name
    await cloud.send(gw, make_batch(gw[0], 2, devices=("pump1",)))
    assert len((await cloud.get(tenant.admin, "/v1/devices")).json()) == 1


async def test_raw_pages_with_a_cursor(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    await cloud.send(gw, make_batch(gw[0], 1, tags=("flow",), n=25))
    series_id = (await cloud.get(tenant.admin, "/v1/series")).json()[0]["id"]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 10, "start": 0} | ({"cursor": cursor} if cursor else {})
        page = (await cloud.get(tenant.admin, f"/v1/series/{series_id}/raw", **params)).json()
        seen += [p["ts"] for p in page["points"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == 25
    assert seen == sorted(set(seen))
    r = await cloud.get(tenant.admin, f"/v1/series/{series_id}/raw", cursor="!!bad!!")
    assert r.status_code == 422
    assert r.json()["error"]["details"]["path"] == ["query", "cursor"]


async def test_bucketed_aggregates(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    start = (now_us() // MINUTE_US - 10) * MINUTE_US
    ts = [start + i * 20_000_000 for i in range(6)]  # 3 per minute over 2 minutes
    values = [1.0, 5.0, 3.0, 10.0, 20.0, 30.0]
    batch = Batch(str(gw[0]), 1, now_us(), [SeriesColumns("pump1", "flow", ts, values)])
    await cloud.send(gw, batch)
    series_id = (await cloud.get(tenant.admin, "/v1/series")).json()[0]["id"]
    r = await cloud.get(
        tenant.admin,
        f"/v1/series/{series_id}/aggregate",
        bucket="1m",
        start=start,
        end=start + 2 * MINUTE_US,
    )
    assert r.status_code == 200, r.text
    assert r.json() == [
        {"start": start, "min": 1.0, "max": 5.0, "avg": 3.0, "last": 3.0, "count": 3},
        {
            "start": start + MINUTE_US,
            "min": 10.0,
            "max": 30.0,
            "avg": 20.0,
            "last": 30.0,
            "count": 3,
        },
    ]
    day = await cloud.get(
        tenant.admin,
        f"/v1/series/{series_id}/aggregate",
        bucket="1d",
        start=start - 2 * 86_400_000_000,
        end=now_us(),
    )
    assert sum(b["count"] for b in day.json()) == 6
    for bad in ("0s", "2d", "10x", "500ms"):
        r = await cloud.get(tenant.admin, f"/v1/series/{series_id}/aggregate", bucket=bad)
        assert r.status_code == 422, bad
        assert r.json()["error"]["details"]["path"] == ["query", "bucket"]
    r = await cloud.get(tenant.admin, f"/v1/series/{series_id}/aggregate", bucket="1s", start=0)
    assert r.status_code == 422  # too many buckets


async def test_latest_per_device(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    await cloud.send(gw, make_batch(gw[0], 1, n=5))
    device_id = (await cloud.get(tenant.admin, "/v1/devices")).json()[0]["id"]
    latest = (await cloud.get(tenant.admin, f"/v1/devices/{device_id}/latest")).json()
    assert [(v["tag"], v["value"], v["unit"]) for v in latest] == [
        ("flow", 4.5, "m3/h"),
        ("pressure", 4.5, "m3/h"),
    ]


async def test_alarms_answer_current_state_and_transitions(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    now = now_us()
    alarms = [
        AlarmRecord(device="pump1", name="flow_high", ts=now - 30, state="active", severity=3),
        AlarmRecord(device="pump1", name="flow_high", ts=now - 20, state="cleared", severity=3),
        AlarmRecord(device="pump2", name="door", ts=now - 10, kind="event", state="event"),
        AlarmRecord(device="pump2", name="temp_high", ts=now - 5, severity="critical"),
    ]
    await cloud.send(gw, Batch(str(gw[0]), 1, now, [], alarms))
    everything = (await cloud.get(tenant.admin, "/v1/alarms")).json()
    # one row per alarm, in its current state; severity in the gateway's words
    assert [(a["name"], a["state"], a["severity"]) for a in everything] == [
        ("temp_high", "active", "critical"),
        ("door", "event", "medium"),
        ("flow_high", "cleared", "high"),
    ]
    active = (await cloud.get(tenant.admin, "/v1/alarms", state="active")).json()
    assert [a["name"] for a in active] == ["temp_high"]  # flow_high was active, is no longer
    flow = next(a for a in everything if a["name"] == "flow_high")
    assert (flow["raised_at"], flow["cleared_at"]) == (now - 30, now - 20)
    transitions = (await cloud.get(tenant.admin, f"/v1/alarms/{flow['id']}/events")).json()
    assert [(t["state"], t["transition"]) for t in transitions] == [
        ("cleared", "cleared"),
        ("active", "raised"),
    ]
    critical = (await cloud.get(tenant.admin, "/v1/alarms", severity="critical")).json()
    assert [a["name"] for a in critical] == ["temp_high"]
    events = (await cloud.get(tenant.admin, "/v1/alarms", kind="event", device="pump2")).json()
    assert [e["name"] for e in events] == ["door"]
    # a replayed batch changes nothing; an older transition arriving late never moves it back
    await cloud.send(gw, Batch(str(gw[0]), 2, now, [], alarms[:1]))
    assert (await cloud.get(tenant.admin, f"/v1/alarms/{flow['id']}")).json() == flow


async def test_acknowledging_asks_the_gateway(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    now = now_us()
    raised = AlarmRecord(device="pump1", name="flow_high", ts=now - 30, state="active")
    await cloud.send(gw, Batch(str(gw[0]), 1, now, [], [raised]))
    alarm = (await cloud.get(tenant.admin, "/v1/alarms")).json()[0]
    ack = f"/v1/alarms/{alarm['id']}/ack"
    viewer = await cloud.key(tenant, "viewer")
    assert (await cloud.client.post(ack, headers=cloud.auth(viewer))).status_code == 403
    operator = await cloud.key(tenant, "operator")
    r = await cloud.client.post(ack, json={"comment": "seen"}, headers=cloud.auth(operator))
    assert r.status_code == 202, r.text
    command = r.json()
    assert (command["kind"], command["state"]) == ("ack_alarm", "queued")
    assert command["args"] == {"name": "flow_high", "comment": "seen"}
    assert command["created_by"].startswith("key ")
    # nothing is acknowledged until the gateway says so
    assert (await cloud.get(tenant.admin, f"/v1/alarms/{alarm['id']}")).json()[
        "acknowledged_at"
    ] is None
    acked = AlarmRecord(
        device="pump1", name="flow_high", ts=now - 10, state="acknowledged",
        transition="acked", acknowledged_by="cloud key 3", comment="seen",
    )  # fmt: skip
    await cloud.send(gw, Batch(str(gw[0]), 2, now, [], [acked]))
    after = (await cloud.get(tenant.admin, f"/v1/alarms/{alarm['id']}")).json()
    assert (after["state"], after["acknowledged_at"], after["acknowledged_by"]) == (
        "acknowledged",
        now - 10,
        "cloud key 3",
    )
    assert after["comment"] == "seen"
    assert (
        await cloud.client.post("/v1/alarms/999/ack", headers=cloud.auth(operator))
    ).status_code == 404


async def test_usage_counts_api_calls_and_ingest(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    await cloud.send(gw, make_batch(gw[0], 1, n=5, dropped={"telemetry": 3, "alarms": 0}))
    await cloud.send(gw, make_batch(gw[0], 2, n=1, dropped={"telemetry": 2}))
    gateway = (await cloud.get(tenant.admin, "/v1/gateways")).json()[0]
    assert gateway["dropped"] == {"telemetry": 5}
    usage = (await cloud.get(tenant.admin, "/v1/usage")).json()["days"]
    assert len(usage) == 1
    day = usage[0]
    assert day["readings"] == 12
    assert day["batches"] == 2
    assert day["dropped"] == 5
    assert day["bytes"] > 0
    assert day["api_calls"] >= 2  # creating the gateway and this call
    r = await cloud.get(tenant.admin, "/v1/usage", start="2030-01-02", end="2030-01-01")
    assert r.status_code == 422


# What /readyz says about storage on each backend: (backend, timescaledb, partitioning, why).
_STORAGE = {
    "sqlite": ("sqlite", False, "none", ""),
    "postgres": ("postgresql", False, "native", "TimescaleDB is not installed on this server"),
    "timescaledb": ("postgresql", True, "timescaledb", "telemetry is a TimescaleDB 2."),
    "citus": ("postgresql", False, "native", "Citus 13."),
}
_TIMESCALEDB_JOBS = {
    "compression:telemetry",
    "retention:telemetry",
    "refresh:telemetry_1m",
    "compression:telemetry_1m",
    "retention:telemetry_1m",
}


async def test_health_ready_metrics_openapi(cloud: Cloud, backend: str) -> None:
    assert (await cloud.client.get("/healthz")).json() == {"status": "ok"}
    ready = (await cloud.client.get("/readyz")).json()
    assert ready["status"] == "ready"
    name, timescaledb, partitioning, why = _STORAGE[backend]
    assert (ready["backend"], ready["timescaledb"], ready["partitioning"]) == (
        name,
        timescaledb,
        partitioning,
    )
    assert ready["storage"].startswith(why), ready["storage"]
    assert ready["distributed"] is (backend == "citus")
    if backend == "citus":
        assert "distributed by series over 2 nodes" in ready["storage"], ready["storage"]
    jobs = {j["job"]: j for j in ready["db_jobs"]}
    assert set(jobs) >= _TIMESCALEDB_JOBS if timescaledb else jobs == {}
    failing = any(j["status"] == "failed" for j in jobs.values())
    assert ready["jobs"] == ("failing" if failing else "ok")
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    await cloud.send(gw, make_batch(gw[0], 1, n=5))
    text = (await cloud.client.get("/metrics")).text
    assert 'tagway_cloud_ingest_batches_total{result="stored"} 1.0' in text
    assert "tagway_cloud_ingest_readings_total 10.0" in text
    assert 'route="/v1/ingest"' in text
    for job in jobs.values():
        gauge = f'tagway_cloud_db_job_status{{job="{job["job"]}",status="{job["status"]}"}}'
        assert f"{gauge} 1.0" in text
    spec = (await cloud.client.get("/openapi.json")).json()
    assert "/v1/ingest" in spec["paths"]
    assert "/v1/series/{series_id}/aggregate" in spec["paths"]
