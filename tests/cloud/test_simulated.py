"""The cloud says which data is simulated: devices, series, latest values and raw pages carry
`simulated`, and every answer carrying simulated data has ``X-Data-Source: simulation``
(on SQLite and on each PostgreSQL engine, through migration 8)."""

from __future__ import annotations

import dataclasses

import pytest

from cloud.contract import Batch
from tests.cloud.conftest import Cloud, make_batch, now_us

pytestmark = pytest.mark.integration
HOUR_US = 3_600_000_000


def _mixed(gateway_id: int, seq: int, *, pump_simulated: bool = True) -> Batch:
    """pump1 (simulated unless told otherwise) and meter1 (a real device), two tags each."""
    batch = make_batch(gateway_id, seq, devices=("pump1", "meter1"))
    series = [
        dataclasses.replace(s, simulated=pump_simulated and s.device == "pump1")
        for s in batch.series
    ]
    return dataclasses.replace(batch, series=series)


async def test_devices_series_and_readings_say_they_are_simulated(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    r = await cloud.send(gw, _mixed(gw[0], 1))
    assert r.status_code == 200, r.text

    devices = await cloud.get(tenant.admin, "/v1/devices")
    assert devices.headers["X-Data-Source"] == "simulation"
    flags = {d["name"]: d["simulated"] for d in devices.json()}
    assert flags == {"pump1": True, "meter1": False}
    ids = {d["name"]: d["id"] for d in devices.json()}

    series = await cloud.get(tenant.admin, "/v1/series")
    assert series.headers["X-Data-Source"] == "simulation"
    assert {(s["device"], s["tag"]): s["simulated"] for s in series.json()} == {
        ("pump1", "flow"): True, ("pump1", "pressure"): True,
        ("meter1", "flow"): False, ("meter1", "pressure"): False,
    }  # fmt: skip

    pump = await cloud.get(tenant.admin, f"/v1/devices/{ids['pump1']}")
    assert pump.headers["X-Data-Source"] == "simulation"
    assert pump.json()["simulated"] is True
    latest = await cloud.get(tenant.admin, f"/v1/devices/{ids['pump1']}/latest")
    assert latest.headers["X-Data-Source"] == "simulation"
    assert [v["simulated"] for v in latest.json()] == [True, True]

    pump_series = next(s for s in series.json() if s["device"] == "pump1")
    raw = await cloud.get(
        tenant.admin, f"/v1/series/{pump_series['id']}/raw", start=0, end=now_us() + HOUR_US
    )
    assert raw.headers["X-Data-Source"] == "simulation"
    assert raw.json()["simulated"] is True
    assert len(raw.json()["points"]) == 10
    agg = await cloud.get(tenant.admin, f"/v1/series/{pump_series['id']}/aggregate", bucket="1h")
    assert agg.status_code == 200, agg.text
    assert agg.headers["X-Data-Source"] == "simulation"


async def test_answers_about_real_data_carry_no_simulation_mark(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    assert (await cloud.send(gw, _mixed(gw[0], 1))).status_code == 200

    devices = (await cloud.get(tenant.admin, "/v1/devices")).json()
    meter = next(d for d in devices if d["name"] == "meter1")
    for path in (f"/v1/devices/{meter['id']}", f"/v1/devices/{meter['id']}/latest"):
        answer = await cloud.get(tenant.admin, path)
        assert answer.status_code == 200, answer.text
        assert "X-Data-Source" not in answer.headers, path
    series = await cloud.get(tenant.admin, "/v1/series", device_id=meter["id"])
    assert "X-Data-Source" not in series.headers
    assert [s["simulated"] for s in series.json()] == [False, False]
    raw = await cloud.get(tenant.admin, f"/v1/series/{series.json()[0]['id']}/raw")
    assert "X-Data-Source" not in raw.headers
    assert raw.json()["simulated"] is False


async def test_a_device_that_stops_being_simulated_is_shown_as_real(cloud: Cloud) -> None:
    """The flag follows the newest batch: a simulated pump replaced by the real one under the
    same name is no longer shown as simulated."""
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    assert (await cloud.send(gw, _mixed(gw[0], 1))).status_code == 200
    assert (await cloud.send(gw, _mixed(gw[0], 2, pump_simulated=False))).status_code == 200

    devices = await cloud.get(tenant.admin, "/v1/devices")
    assert "X-Data-Source" not in devices.headers
    assert [d["simulated"] for d in devices.json()] == [False, False]

    assert (await cloud.send(gw, _mixed(gw[0], 3))).status_code == 200
    series = (await cloud.get(tenant.admin, "/v1/series")).json()
    assert sorted(s["device"] for s in series if s["simulated"]) == ["pump1", "pump1"]
