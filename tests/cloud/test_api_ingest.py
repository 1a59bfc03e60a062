"""POST /v1/ingest on both backends: storage, idempotency, limits and refusals."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import msgpack
import pytest
import zstandard

from cloud.contract import JSON, MSGPACK, AlarmRecord, Batch, SeriesColumns, encode_batch
from tests.cloud.conftest import Cloud, Tenant, make_batch, now_us

pytestmark = pytest.mark.integration
HOUR_US = 3_600_000_000


async def _stored(cloud: Cloud, tenant: Tenant) -> dict[str, Any]:
    """What a tenant user can see was stored: readings per series, devices, usage."""
    series = (await cloud.get(tenant.admin, "/v1/series")).json()
    counts = {}
    for s in series:
        page = await cloud.get(
            tenant.admin, f"/v1/series/{s['id']}/raw", start=0, end=now_us() + HOUR_US, limit=10_000
        )
        counts[(s["device"], s["tag"])] = len(page.json()["points"])
    usage = (await cloud.get(tenant.admin, "/v1/usage")).json()["days"]
    devices = (await cloud.get(tenant.admin, "/v1/devices")).json()
    return {
        "counts": counts,
        "devices": [d["name"] for d in devices],
        "readings": sum(u["readings"] for u in usage),
        "batches": sum(u["batches"] for u in usage),
        "dropped": sum(u["dropped"] for u in usage),
    }


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [(MSGPACK, "zstd"), ("application/x-msgpack", "gzip"), (JSON, "identity"), (JSON, "zstd")],
)
async def test_batch_is_stored_and_readable(cloud: Cloud, content_type: str, encoding: str) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    batch = make_batch(gw[0], 1, n=25, dropped={"telemetry": 7})
    r = await cloud.send(gw, batch, content_type=content_type, content_encoding=encoding)
    assert r.status_code == 200, r.text
    assert r.json()["duplicate"] is False
    assert r.json()["stored"] == 50
    stored = await _stored(cloud, tenant)
    assert stored["counts"] == {("pump1", "flow"): 25, ("pump1", "pressure"): 25}
    assert stored["devices"] == ["pump1"]
    assert stored["readings"] == 50
    assert stored["dropped"] == 7
    gateway = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}")).json()
    assert gateway["last_seq"] == 1
    assert gateway["dropped"] == {"telemetry": 7}
    assert gateway["last_seen_at"] is not None


async def test_same_batch_twice_stores_once(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    batch = make_batch(gw[0], 1, n=10)
    first = await cloud.send(gw, batch)
    again = await cloud.send(gw, batch)
    assert first.status_code == again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["received_at"] == first.json()["received_at"]
    stored = await _stored(cloud, tenant)
    assert stored["readings"] == 20
    assert stored["batches"] == 1
    assert set(stored["counts"].values()) == {10}


async def test_same_batch_concurrently_stores_once(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    batch = make_batch(gw[0], 1, n=200, devices=("p1", "p2", "p3"))
    answers = await asyncio.gather(*(cloud.send(gw, batch) for _ in range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 5
    stored = await _stored(cloud, tenant)
    assert stored["batches"] == 1
    assert set(stored["counts"].values()) == {200}
    assert len(stored["counts"]) == 6


async def test_same_readings_under_new_seq_write_no_duplicates(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    batch = make_batch(gw[0], 1, n=10)
    await cloud.send(gw, batch)
    replay = Batch(batch.gateway_id, 2, batch.created_at, batch.series)
    r = await cloud.send(gw, replay)
    assert r.json()["duplicate"] is False
    assert r.json()["stored"] == 0
    overlapping = make_batch(gw[0], 3, n=15, start=batch.series[0].ts[0])  # 10 old + 5 new
    r = await cloud.send(gw, overlapping)
    assert r.json()["stored"] == 10
    assert set((await _stored(cloud, tenant))["counts"].values()) == {15}


async def test_late_and_out_of_order_data_is_accepted(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    now = now_us()
    three_days_ago = now - 3 * 86_400_000_000
    ts = [now - 5, three_days_ago, now - 10]
    batch = Batch(str(gw[0]), 1, now, [SeriesColumns("pump1", "flow", ts, [1.0, 2.0, 3.0])])
    r = await cloud.send(gw, batch)
    assert r.status_code == 200, r.text
    series_id = (await cloud.get(tenant.admin, "/v1/series")).json()[0]["id"]
    page = await cloud.get(tenant.admin, f"/v1/series/{series_id}/raw", start=0)
    assert [p["ts"] for p in page.json()["points"]] == sorted(ts)


async def test_text_values_and_alarms(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    now = now_us()
    batch = Batch(
        str(gw[0]),
        1,
        now,
        [SeriesColumns("pump1", "mode", [now - 2, now - 1], ["auto", "manual"], [0, 1])],
        [AlarmRecord(device="pump1", name="flow_high", ts=now - 1, tag="flow", value=9.5)],
    )
    assert (await cloud.send(gw, batch)).status_code == 200
    device_id = (await cloud.get(tenant.admin, "/v1/devices")).json()[0]["id"]
    latest = (await cloud.get(tenant.admin, f"/v1/devices/{device_id}/latest")).json()
    assert [(v["tag"], v["value"], v["quality"]) for v in latest] == [("mode", "manual", 1)]
    alarms = (await cloud.get(tenant.admin, "/v1/alarms")).json()
    assert [(a["name"], a["state"], a["value"]) for a in alarms] == [("flow_high", "active", 9.5)]


# ----------------------------------------------------------------------------- refusals


def _nan_body(gateway_id: int) -> bytes:
    data = {
        "version": 1,
        "gateway_id": str(gateway_id),
        "seq": 1,
        "created_at": now_us(),
        "series": [
            {
                "device": "d",
                "tag": "t",
                "ts": [now_us() - 2, now_us() - 1],
                "values": [1.0, float("nan")],
            }
        ],
    }
    return msgpack.packb(data)


def _bomb() -> bytes:
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    chunk = b"\0" * (16 * 1024 * 1024)
    return b"".join(compressor.compress(chunk) for _ in range(16)) + compressor.flush()


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("malformed_json", 422, "invalid_batch"),
        ("wrong_types", 422, "invalid_batch"),
        ("nan", 422, "invalid_batch"),
        ("huge_body", 413, "payload_too_large"),
        ("zip_bomb", 413, "payload_too_large"),
        ("too_many_readings", 413, "payload_too_large"),
        ("unknown_content_type", 415, "unsupported_media_type"),
        ("unknown_content_encoding", 415, "unsupported_media_type"),
        ("corrupt_gzip", 422, "invalid_batch"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    make_cloud: Any, case: str, status: int, code: str
) -> None:
    cloud: Cloud = await make_cloud(
        limits={
            "max_body_bytes": 1_000_000,
            "max_decompressed_bytes": 4_000_000,
            "max_readings": 5_000,
        }
    )
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    good = json.loads(
        encode_batch(make_batch(gw[0], 1), content_type=JSON, content_encoding="identity")
    )
    kwargs: dict[str, str] = {"content_type": JSON, "content_encoding": "identity"}
    if case == "malformed_json":
        body = b'{"version": 1, "gateway_id": '
    elif case == "wrong_types":
        good["series"][1]["ts"][3] = "yesterday"
        body = json.dumps(good).encode()
    elif case == "nan":
        body, kwargs = _nan_body(gw[0]), {"content_type": MSGPACK, "content_encoding": "identity"}
    elif case == "huge_body":
        body = b" " * 2_000_000
    elif case == "zip_bomb":
        body, kwargs = _bomb(), {"content_type": JSON, "content_encoding": "zstd"}
    elif case == "too_many_readings":
        body = encode_batch(
            make_batch(gw[0], 1, n=3000), content_type=JSON, content_encoding="identity"
        )
    elif case == "unknown_content_type":
        body, kwargs = (
            json.dumps(good).encode(),
            {"content_type": "text/csv", "content_encoding": "identity"},
        )
    elif case == "unknown_content_encoding":
        body, kwargs = json.dumps(good).encode(), {"content_type": JSON, "content_encoding": "br"}
    else:
        body, kwargs = (
            gzip.compress(json.dumps(good).encode())[:-8],
            {"content_type": JSON, "content_encoding": "gzip"},
        )
    r = await cloud.post(gw[1], body, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    if case == "wrong_types":
        assert error["details"]["path"] == ["series", 1, "ts", 3]
    if case == "nan":
        assert error["details"]["path"] == ["series", 0, "values", 1]
    stored = await _stored(cloud, tenant)
    assert stored == {"counts": {}, "devices": [], "readings": 0, "batches": 0, "dropped": 0}
    # The refusal did not burn the seq: the good batch still goes through afterwards.
    ok = await cloud.send(gw, make_batch(gw[0], 1))
    assert ok.status_code == 200
    assert ok.json()["duplicate"] is False


async def test_only_the_gateway_itself_may_post_its_batches(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw1 = await cloud.gateway(tenant, "gw1")
    gw2 = await cloud.gateway(tenant, "gw2")
    r = await cloud.send(gw1, make_batch(gw2[0], 1))
    assert r.status_code == 403
    assert (await cloud.get(gw1[1], "/v1/devices")).status_code == 403  # gateways only ingest
    assert r.json()["error"]["code"] == "forbidden"
    r = await cloud.post(tenant.admin, encode_batch(make_batch(gw1[0], 1)))
    assert r.status_code == 403
    r = await cloud.post("tgw_gw_not-a-real-token", encode_batch(make_batch(gw1[0], 1)))
    assert r.status_code == 401
    assert (await _stored(cloud, tenant))["readings"] == 0


async def test_revoked_and_rotated_gateway_tokens_are_refused(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    r = await cloud.client.post(f"/v1/gateways/{gw[0]}/token", headers=cloud.auth(tenant.admin))
    new_token = r.json()["token"]
    assert (await cloud.send(gw, make_batch(gw[0], 1))).status_code == 401
    assert (await cloud.send((gw[0], new_token), make_batch(gw[0], 1))).status_code == 200
    await cloud.client.post(f"/v1/gateways/{gw[0]}/revoke", headers=cloud.auth(tenant.admin))
    assert (await cloud.send((gw[0], new_token), make_batch(gw[0], 2))).status_code == 401


async def test_daily_quota_answers_429_with_retry_after(make_cloud: Any) -> None:
    cloud: Cloud = await make_cloud()
    tenant = await cloud.tenant("acme", ingest_quota_per_day=50)
    gw = await cloud.gateway(tenant)
    assert (await cloud.send(gw, make_batch(gw[0], 1, n=20))).status_code == 200  # 40
    r = await cloud.send(gw, make_batch(gw[0], 2, n=10))  # 60 > 50
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "quota_exceeded"
    assert 0 < int(r.headers["Retry-After"]) <= 86_400
    assert (await cloud.send(gw, make_batch(gw[0], 3, n=5))).status_code == 200  # 50
    assert (await _stored(cloud, tenant))["readings"] == 50


async def test_rate_limit_answers_429_with_retry_after(make_cloud: Any) -> None:
    cloud: Cloud = await make_cloud(rate_window_s=3600)
    tenant = await cloud.tenant("acme", rate_limit=3)
    gw = await cloud.gateway(tenant)
    codes = [(await cloud.send(gw, make_batch(gw[0], seq, n=1))).status_code for seq in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    r = await cloud.send(gw, make_batch(gw[0], 9, n=1))
    assert r.json()["error"]["code"] == "rate_limited"
    assert 0 < int(r.headers["Retry-After"]) <= 3600


async def test_a_streamed_body_without_length_is_cut_off_at_the_limit(make_cloud: Any) -> None:
    cloud: Cloud = await make_cloud(limits={"max_body_bytes": 100_000})
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    sent = 0

    async def endless() -> Any:
        nonlocal sent
        for _ in range(1000):  # 64 MB if nobody stopped reading
            sent += 65_536
            yield b" " * 65_536

    headers = cloud.auth(gw[1]) | {"Content-Type": JSON}
    r = await cloud.client.post("/v1/ingest", content=endless(), headers=headers)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert sent < 1_000_000  # the service stopped reading soon after the limit
