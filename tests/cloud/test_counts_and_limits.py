"""Counts a replay cannot inflate, seq reuse as a conflict, and the per-tenant limits on new
devices and series (issue 15, cases 2, 4 and 7), on both backends."""

from __future__ import annotations

from typing import Any

import pytest

from cloud.contract import Batch, DroppedTotals
from tests.cloud.conftest import PLATFORM_KEY, Cloud, make_batch

pytestmark = pytest.mark.integration


async def _usage(cloud: Cloud, token: str) -> dict[str, Any]:
    r = await cloud.get(token, "/v1/usage")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _sum(usage: dict[str, Any], field: str) -> int:
    return sum(int(day[field]) for day in usage["days"])


async def test_a_reused_seq_with_other_content_is_a_409_seq_conflict(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    first = make_batch(gw[0], 7, n=5)
    assert (await cloud.send(gw, first)).status_code == 200
    again = await cloud.send(gw, first, content_type="application/json", content_encoding="gzip")
    assert (again.status_code, again.json()["duplicate"]) == (200, True)  # same content
    other = make_batch(gw[0], 7, n=5, tags=("level",))
    r = await cloud.send(gw, other)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "seq_conflict"
    series = (await cloud.get(tenant.admin, "/v1/series")).json()
    assert sorted(s["tag"] for s in series) == ["flow", "pressure"]  # nothing of it stored


async def test_usage_counts_rows_stored_not_readings_sent(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    batch = make_batch(gw[0], 1, n=10)
    await cloud.send(gw, batch)
    # the same readings under a new seq (a replay after kill -9): stored nothing, charged nothing
    replay = Batch(batch.gateway_id, 2, batch.created_at, batch.series)
    assert (await cloud.send(gw, replay)).json()["stored"] == 0
    usage = await _usage(cloud, tenant.admin)
    assert _sum(usage, "readings") == 20
    assert _sum(usage, "batches") == 2


async def test_the_daily_quota_charges_rows_stored(make_cloud: Any) -> None:
    cloud: Cloud = await make_cloud()
    tenant = await cloud.tenant("acme", ingest_quota_per_day=30)
    gw = await cloud.gateway(tenant)
    batch = make_batch(gw[0], 1, n=10)  # 20 readings
    assert (await cloud.send(gw, batch)).status_code == 200
    for seq in (2, 3, 4):  # replays: 20 readings sent each, 0 stored: never over the quota
        r = await cloud.send(gw, Batch(batch.gateway_id, seq, batch.created_at, batch.series))
        assert r.status_code == 200
    assert (await cloud.send(gw, make_batch(gw[0], 5, n=10, tags=("x",)))).status_code == 200
    r = await cloud.send(gw, make_batch(gw[0], 6, n=10, tags=("y",)))
    assert r.json()["error"]["code"] == "quota_exceeded"


async def test_drop_totals_count_once_however_often_they_are_sent(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)

    def reporting(seq: int, total: int, life: str = "life-1") -> Batch:
        return make_batch(gw[0], seq, n=1, dropped_totals=DroppedTotals(life, {"telemetry": total}))

    for seq, total in ((1, 100), (2, 100), (3, 100), (4, 150), (5, 120)):  # replays, growth, late
        assert (await cloud.send(gw, reporting(seq, total))).status_code == 200
    assert (await cloud.send(gw, reporting(6, 30, life="life-2"))).status_code == 200  # new outbox
    usage = await _usage(cloud, tenant.admin)
    assert _sum(usage, "dropped") == 180
    gateway = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}")).json()
    assert gateway["dropped"] == {"telemetry": 180}
    # the older delta form still adds up (gateways in the field)
    assert (await cloud.send(gw, make_batch(gw[0], 7, n=1, dropped={"telemetry": 5}))).is_success
    assert _sum(await _usage(cloud, tenant.admin), "dropped") == 185


async def test_new_devices_and_series_are_limited_per_batch_and_per_tenant(
    make_cloud: Any,
) -> None:
    cloud: Cloud = await make_cloud(max_new_series_per_batch=50)
    tenant = await cloud.tenant("acme", max_devices=5, max_series=60)
    other = await cloud.tenant("globex")
    gw = await cloud.gateway(tenant)
    flood = make_batch(gw[0], 1, n=1, devices=[f"d{i}" for i in range(3)],
                       tags=[f"t{i}" for i in range(30)])  # fmt: skip
    r = await cloud.send(gw, flood)  # 90 new series in one batch
    assert (r.status_code, r.json()["error"]["code"]) == (413, "too_many_new_series")
    ok = make_batch(gw[0], 2, n=1, devices=["d0"], tags=[f"t{i}" for i in range(40)])
    assert (await cloud.send(gw, ok)).status_code == 200
    more = make_batch(gw[0], 3, n=1, devices=["d1"], tags=[f"t{i}" for i in range(30)])
    r = await cloud.send(gw, more)  # 70 > 60 series
    assert (r.status_code, r.json()["error"]["code"]) == (429, "series_limit_reached")
    assert int(r.headers["Retry-After"]) > 0
    devices = make_batch(gw[0], 4, n=1, devices=[f"x{i}" for i in range(6)], tags=["t"])
    r = await cloud.send(gw, devices)  # 7 > 5 devices
    assert (r.status_code, r.json()["error"]["code"]) == (429, "device_limit_reached")
    usage = await _usage(cloud, tenant.admin)
    assert (usage["devices"], usage["series"]) == (1, 40)  # nothing of the refused was kept
    assert usage["limits"]["max_series"] == 60
    assert usage["limits"]["max_new_series_per_batch"] == 50
    assert (await _usage(cloud, other.admin))["limits"]["max_series"] == 100_000  # the default
    # an operator raises the tenant's limits; the refused batch goes through on its retry
    r = await cloud.client.put(
        f"/v1/tenants/{tenant.id}/limits", json={"max_devices": 10, "max_series": 200},
        headers=cloud.auth(PLATFORM_KEY),
    )  # fmt: skip
    assert r.json()["max_series"] == 200
    assert (await cloud.send(gw, more)).status_code == 200
