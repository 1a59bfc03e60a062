"""The ISA-95 asset model in the cloud: the tree's rules, devices placed by API and by their
gateway's path, and telemetry read by asset. Every test runs on SQLite, PostgreSQL, TimescaleDB
and Citus (`backend`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.api import assets as asset_api
from cloud.contract import AssetPaths, Batch, SeriesColumns
from cloud.storage import asset_tree
from cloud.storage import telemetry as telemetry_storage
from cloud.storage.asset_tree import PATH_LEVELS, gateway_levels
from tests.cloud.conftest import ENGINE_PARAMS, PLATFORM_KEY, Cloud, Tenant, make_batch, now_us

pytestmark = pytest.mark.integration

MINUTE_US = 60_000_000


async def _asset(cloud: Cloud, token: str, name: str, level: str, parent: int | None = None,
                 *, expect: int = 201) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {"name": name, "level": level}
    if parent is not None:
        body["parent_id"] = parent
    r = await cloud.client.post("/v1/assets", json=body, headers=cloud.auth(token))
    assert r.status_code == expect, r.text
    return dict(r.json())


def _code(r: Any) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


@given(st.text(alphabet=st.sampled_from("ab/ \x00+#é"), max_size=30) | st.text(max_size=300))
def test_a_gateway_path_places_only_what_the_tree_can_hold(path: str) -> None:
    levels = gateway_levels(path)
    if levels is None:
        return
    assert 1 <= len(levels) <= len(PATH_LEVELS)
    assert [level for level, _ in levels] == list(PATH_LEVELS[: len(levels)])
    for _, name in levels:
        assert name
        assert name == name.strip()
        assert len(name) <= 200
        assert "/" not in name
        assert "\x00" not in name


def test_a_gateway_path_drops_the_enterprise() -> None:
    assert gateway_levels("acme/plant-a/packaging/line2/filler1") == [
        ("site", "plant-a"),
        ("area", "packaging"),
        ("line", "line2"),
        ("equipment", "filler1"),
    ]
    assert gateway_levels(" /acme/ plant-a /") == [("site", "plant-a")]
    assert gateway_levels("acme") is None
    assert gateway_levels("acme//x") is None
    assert gateway_levels("a/b/c/d/e/f") is None
    assert gateway_levels("acme/" + "x" * 201) is None


async def test_the_tree_keeps_its_rules(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    op = await cloud.key(tenant, "operator")
    viewer = await cloud.key(tenant, "viewer")
    c, h = cloud.client, cloud.auth(op)
    site = await _asset(cloud, op, "plant-a", "site")
    area = await _asset(cloud, op, "packaging", "area", site["id"])
    line = await _asset(cloud, op, "line2", "line", area["id"])
    filler = await _asset(cloud, op, "filler1", "equipment", line["id"])
    assert (site["parent_id"], site["path"]) == (None, "plant-a")
    assert filler["path"] == "plant-a/packaging/line2/filler1"
    skipping = await _asset(cloud, op, "utilities", "equipment", site["id"])  # levels may skip
    assert skipping["path"] == "plant-a/utilities"

    # levels: a child strictly below its parent; names unique among siblings only
    r = await c.post("/v1/assets", json={"name": "x", "level": "area", "parent_id": line["id"]},
                     headers=h)  # fmt: skip
    assert _code(r) == (409, "asset_level")
    r = await c.post("/v1/assets", json={"name": "packaging", "level": "area",
                                         "parent_id": site["id"]}, headers=h)  # fmt: skip
    assert _code(r) == (409, "asset_name_taken")
    r = await c.post("/v1/assets", json={"name": "plant-a", "level": "site"}, headers=h)
    assert _code(r) == (409, "asset_name_taken")
    other = await _asset(cloud, op, "plant-b", "site")
    await _asset(cloud, op, "packaging", "area", other["id"])  # same name, other parent

    # rename: the subtree's paths follow
    r = await c.patch(f"/v1/assets/{area['id']}", json={"name": "pack"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "plant-a/pack"
    got = await cloud.get(viewer, f"/v1/assets/{filler['id']}")
    assert got.json()["path"] == "plant-a/pack/line2/filler1"
    r = await c.patch(f"/v1/assets/{area['id']}", json={"name": "utilities"}, headers=h)
    assert _code(r) == (409, "asset_name_taken")

    # move: with its subtree; never under itself, never against the levels
    r = await c.patch(f"/v1/assets/{line['id']}", json={"parent_id": line["id"]}, headers=h)
    assert _code(r) == (409, "asset_cycle")
    r = await c.patch(f"/v1/assets/{area['id']}", json={"parent_id": filler["id"]}, headers=h)
    assert _code(r) == (409, "asset_cycle")
    r = await c.patch(f"/v1/assets/{line['id']}", json={"parent_id": filler["id"]}, headers=h)
    assert r.status_code == 409  # a descendant: a cycle (and against the levels too)
    r = await c.patch(f"/v1/assets/{area['id']}", json={"parent_id": skipping["id"]}, headers=h)
    assert _code(r) == (409, "asset_level")
    b_area = (await cloud.get(viewer, "/v1/assets", parent_id=other["id"])).json()[0]
    r = await c.patch(f"/v1/assets/{line['id']}", json={"parent_id": b_area["id"]}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "plant-b/packaging/line2"
    got = await cloud.get(viewer, f"/v1/assets/{filler['id']}")
    assert got.json()["path"] == "plant-b/packaging/line2/filler1"
    r = await c.patch(f"/v1/assets/{filler['id']}", json={"parent_id": None, "name": "lone"},
                      headers=h)  # fmt: skip
    assert (r.json()["parent_id"], r.json()["path"]) == (None, "lone")
    listed = (await cloud.get(viewer, "/v1/assets")).json()
    assert [a["path"] for a in listed] == [
        "lone", "plant-a", "plant-a/pack", "plant-a/utilities", "plant-b", "plant-b/packaging",
        "plant-b/packaging/line2",
    ]  # fmt: skip

    # roles: viewers read only
    r = await c.post("/v1/assets", json={"name": "v", "level": "site"},
                     headers=cloud.auth(viewer))  # fmt: skip
    assert _code(r) == (403, "forbidden")
    r = await c.delete(f"/v1/assets/{site['id']}", headers=cloud.auth(viewer))
    assert _code(r) == (403, "forbidden")

    # delete: refused while not empty, unless cascading
    r = await c.delete(f"/v1/assets/{site['id']}", headers=h)
    assert _code(r) == (409, "asset_not_empty")
    assert r.json()["error"]["details"] == {"children": 2, "devices": 0}
    r = await c.delete(f"/v1/assets/{skipping['id']}", headers=h)
    assert r.status_code == 204
    r = await c.delete(f"/v1/assets/{other['id']}", headers=h, params={"cascade": "true"})
    assert r.status_code == 204
    left = [a["path"] for a in (await cloud.get(viewer, "/v1/assets")).json()]
    assert left == ["lone", "plant-a", "plant-a/pack"]
    assert (await cloud.get(viewer, f"/v1/assets/{line['id']}")).status_code == 404


async def test_hostile_input_is_a_4xx(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    c, h = cloud.client, cloud.auth(tenant.admin)
    site = await _asset(cloud, tenant.admin, "s", "site")
    bad_bodies = [
        {"name": "a\x00b", "level": "site"},
        {"name": "a/b", "level": "site"},
        {"name": "x" * 201, "level": "site"},
        {"name": "", "level": "site"},
        {"name": "n", "level": "enterprise"},
        {"name": "n", "level": "area", "parent_id": 2**63},
        {"name": "n", "level": "area", "parent_id": -1},
        {"name": "n", "level": "area", "parent_id": 1.5},
        {"name": "n", "level": "area", "extra": 1},
        {"name": {"deep": [[[[[[[[[[[]]]]]]]]]]]}, "level": "site"},
    ]
    for body in bad_bodies:
        r = await c.post("/v1/assets", json=body, headers=h)
        assert _code(r) == (422, "invalid_request"), body
    r = await c.post("/v1/assets", json={"name": "n", "level": "area", "parent_id": 2**63 - 1},
                     headers=h)  # fmt: skip
    assert _code(r) == (404, "not_found")
    for path in (f"/v1/assets/{2**63}", "/v1/assets/0", f"/v1/assets/{2**70}/latest",
                 "/v1/assets/abc/aggregate"):  # fmt: skip
        r = await cloud.get(tenant.admin, path)
        assert _code(r) == (422, "invalid_request"), path
    r = await c.patch(f"/v1/assets/{site['id']}", json={"parent_id": 2**64}, headers=h)
    assert _code(r) == (422, "invalid_request")
    r = await c.put("/v1/devices/1/asset", json={"asset_id": 2**63}, headers=h)
    assert _code(r) == (422, "invalid_request")
    r = await cloud.get(tenant.admin, f"/v1/assets/{site['id']}/aggregate", tag="a\x00")
    assert r.status_code == 422


async def _send_paths(cloud: Cloud, gw: tuple[int, str], seq: int, paths: dict[str, str],
                      report_seq: int) -> None:  # fmt: skip
    event = AssetPaths(type="asset_paths", seq=report_seq, at=now_us(), devices=paths)
    r = await cloud.send(gw, Batch(str(gw[0]), seq, now_us(), events=[event]))
    assert r.status_code == 200, r.text


async def _devices(cloud: Cloud, tenant: Tenant) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in (await cloud.get(tenant.admin, "/v1/devices")).json()}


async def test_devices_placed_by_api_and_by_their_gateways_path(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    h = cloud.auth(tenant.admin)
    await cloud.send(gw, make_batch(gw[0], 1, devices=("pump1", "pump2", "pump3"), n=2))
    # the gateway reports its paths: pump4 has no reading yet; pump3's path names only the
    # enterprise (nothing to place); a bad path is skipped, not the batch
    await _send_paths(cloud, gw, 2, {
        "pump1": "acme/plant-a/packaging/line2/filler1", "pump2": "acme/plant-a/packaging",
        "pump3": "acme", "pump4": "acme/plant-a/utilities", "pump5": "acme/a/b/c/d/e/f",
    }, report_seq=1)  # fmt: skip
    devices = await _devices(cloud, tenant)
    assert devices["pump1"]["asset_path"] == "plant-a/packaging/line2/filler1"
    assert devices["pump1"]["asset_source"] == "gateway"
    assert devices["pump2"]["asset_path"] == "plant-a/packaging"
    assert devices["pump3"]["asset_id"] is None
    assets = {a["path"]: a for a in (await cloud.get(tenant.admin, "/v1/assets")).json()}
    assert [(p, a["level"]) for p, a in assets.items()] == [
        ("plant-a", "site"), ("plant-a/packaging", "area"), ("plant-a/packaging/line2", "line"),
        ("plant-a/packaging/line2/filler1", "equipment"), ("plant-a/utilities", "area"),
    ]  # fmt: skip
    # pump4 appears: placed as ingest creates it
    await cloud.send(gw, make_batch(gw[0], 3, devices=("pump4",), n=2))
    assert (await _devices(cloud, tenant))["pump4"]["asset_path"] == "plant-a/utilities"

    # the series and latest answers carry the path
    series = (await cloud.get(tenant.admin, "/v1/series")).json()
    assert {(s["device"], s["asset_path"]) for s in series} == {
        ("pump1", "plant-a/packaging/line2/filler1"), ("pump2", "plant-a/packaging"),
        ("pump3", None), ("pump4", "plant-a/utilities"),
    }  # fmt: skip
    latest = (await cloud.get(tenant.admin, f"/v1/devices/{devices['pump2']['id']}/latest")).json()
    assert {v["asset_path"] for v in latest} == {"plant-a/packaging"}

    # a user's placement is pinned: the gateway's next report does not move it
    site_b = await _asset(cloud, tenant.admin, "plant-b", "site")
    r = await cloud.client.put(f"/v1/devices/{devices['pump1']['id']}/asset",
                               json={"asset_id": site_b["id"]}, headers=h)  # fmt: skip
    assert r.status_code == 200, r.text
    assert (r.json()["asset_path"], r.json()["asset_source"]) == ("plant-b", "api")
    r = await cloud.client.put(f"/v1/devices/{devices['pump3']['id']}/asset",
                               json={"asset_id": None}, headers=h)  # fmt: skip
    assert (r.json()["asset_id"], r.json()["asset_source"]) == (None, "api")
    await _send_paths(cloud, gw, 4, {
        "pump1": "acme/plant-a/packaging", "pump3": "acme/plant-a",
        "pump4": "acme/plant-a/utilities",
    }, report_seq=2)  # fmt: skip
    devices = await _devices(cloud, tenant)
    assert devices["pump1"]["asset_path"] == "plant-b"
    assert devices["pump3"]["asset_id"] is None
    assert devices["pump2"]["asset_id"] is None  # path withdrawn: the gateway's placement undone
    # an older report arriving late changes nothing
    await _send_paths(cloud, gw, 5, {"pump4": "acme/x"}, report_seq=1)
    assert (await _devices(cloud, tenant))["pump4"]["asset_path"] == "plant-a/utilities"
    # unpinned: the gateway's path places it again
    r = await cloud.client.delete(f"/v1/devices/{devices['pump1']['id']}/asset", headers=h)
    assert (r.json()["asset_path"], r.json()["asset_source"]) == ("plant-a/packaging", "gateway")
    # a placed device keeps an asset from being deleted; cascading leaves it unassigned, pinned
    area = next(a for a in (await cloud.get(tenant.admin, "/v1/assets")).json()
                if a["path"] == "plant-a/packaging")  # fmt: skip
    r = await cloud.client.delete(f"/v1/assets/{area['id']}", headers=h)
    assert _code(r) == (409, "asset_not_empty")
    assert r.json()["error"]["details"]["devices"] == 1
    r = await cloud.client.delete(f"/v1/assets/{area['id']}?cascade=true", headers=h)
    assert r.status_code == 204
    pump1 = (await _devices(cloud, tenant))["pump1"]
    assert (pump1["asset_id"], pump1["asset_source"]) == (None, "api")
    # placing under another tenant's or a missing asset: 404
    r = await cloud.client.put(f"/v1/devices/{pump1['id']}/asset", json={"asset_id": 2**62},
                               headers=h)  # fmt: skip
    assert _code(r) == (404, "not_found")
    viewer = await cloud.key(tenant, "viewer")
    r = await cloud.client.put(f"/v1/devices/{pump1['id']}/asset", json={"asset_id": site_b["id"]},
                               headers=cloud.auth(viewer))  # fmt: skip
    assert _code(r) == (403, "forbidden")


async def test_a_renamed_or_moved_gateway_asset_stays_as_the_operator_left_it(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    h = cloud.auth(tenant.admin)
    await cloud.send(gw, make_batch(gw[0], 1, devices=("pump1", "pump2"), n=1))
    paths = {"pump1": "acme/plant-a/packaging/line2", "pump2": "acme/plant-a/packaging"}
    await _send_paths(cloud, gw, 2, paths, report_seq=1)
    assets = {a["path"]: a["id"] for a in (await cloud.get(tenant.admin, "/v1/assets")).json()}
    site_b = await _asset(cloud, tenant.admin, "plant-b", "site")
    r = await cloud.client.patch(f"/v1/assets/{assets['plant-a/packaging']}",
                                 json={"name": "pack"}, headers=h)  # fmt: skip
    assert r.status_code == 200, r.text
    r = await cloud.client.patch(f"/v1/assets/{assets['plant-a/packaging/line2']}",
                                 json={"parent_id": site_b["id"]}, headers=h)  # fmt: skip
    assert r.status_code == 200, r.text
    devices = await _devices(cloud, tenant)
    assert {n: (d["asset_path"], d["asset_source"]) for n, d in devices.items()} == {
        "pump1": ("plant-b/line2", "api"), "pump2": ("plant-a/pack", "api"),
    }  # fmt: skip
    # the agent restarts (the same paths again) and a batch brings a new tag and a new device
    await _send_paths(cloud, gw, 3, paths, report_seq=2)
    placed: list[list[str] | None] = []
    real = telemetry_storage.place_reported

    async def spy(*args: Any, **kwargs: Any) -> None:
        placed.append(kwargs.get("devices"))
        await real(*args, **kwargs)

    monkeypatch.setattr(telemetry_storage, "place_reported", spy)
    await cloud.send(gw, make_batch(gw[0], 4, devices=("pump1", "pump3"), tags=("new",), n=1))
    assert placed == [["pump3"]]  # only the new device, not every device of the batch
    devices = await _devices(cloud, tenant)
    assert {n: d["asset_path"] for n, d in devices.items()} == {
        "pump1": "plant-b/line2", "pump2": "plant-a/pack", "pump3": None}  # fmt: skip
    listed = [a["path"] for a in (await cloud.get(tenant.admin, "/v1/assets")).json()]
    assert listed == ["plant-a", "plant-a/pack", "plant-b", "plant-b/line2"]
    # handed back: the gateway's path places it again (and makes its assets again)
    r = await cloud.client.delete(f"/v1/devices/{devices['pump2']['id']}/asset", headers=h)
    assert (r.json()["asset_path"], r.json()["asset_source"]) == ("plant-a/packaging", "gateway")


async def test_asset_work_per_report_is_bounded(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    # two reports in one batch: only the newest is applied
    old = AssetPaths(type="asset_paths", seq=1, at=now_us(), devices={"d0": "acme/stale"})
    new = AssetPaths(type="asset_paths", seq=2, at=now_us(), devices={"d0": "acme/s/a"})
    r = await cloud.send(gw, Batch(str(gw[0]), 1, now_us(), events=[old, new]))
    assert r.status_code == 200, r.text
    listed = [a["path"] for a in (await cloud.get(tenant.admin, "/v1/assets")).json()]
    assert listed == ["s", "s/a"]
    # the tenant may hold 4 assets: a report needing more places what fits, and its batch's
    # readings are stored
    monkeypatch.setattr(asset_tree, "MAX_ASSETS", 4)
    paths = {"d0": "acme/s/a", "d1": "acme/s/a/l1", "d2": "acme/s/a/l1/c1", "d3": "acme/s/b",
             "d4": "acme/t"}  # fmt: skip
    event = AssetPaths(type="asset_paths", seq=3, at=now_us(), devices=paths)
    batch = make_batch(gw[0], 2, devices=tuple(paths), tags=("t",), n=2)
    r = await cloud.send(gw, Batch(str(gw[0]), 2, now_us(), batch.series, events=[event]))
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 10
    listed = [a["path"] for a in (await cloud.get(tenant.admin, "/v1/assets")).json()]
    assert listed == ["s", "s/a", "s/a/l1", "s/a/l1/c1"]
    devices = await _devices(cloud, tenant)
    assert {n: d["asset_path"] for n, d in devices.items()} == {
        "d0": "s/a", "d1": "s/a/l1", "d2": "s/a/l1/c1", "d3": None, "d4": None}  # fmt: skip
    # and per report: at most MAX_NEW_ASSETS new ones
    monkeypatch.setattr(asset_tree, "MAX_ASSETS", 100)
    monkeypatch.setattr(asset_tree, "MAX_NEW_ASSETS", 1)
    await _send_paths(cloud, gw, 3, paths, report_seq=4)
    listed = [a["path"] for a in (await cloud.get(tenant.admin, "/v1/assets")).json()]
    assert len(listed) == 5
    # the tenant's own limit wins over the service's
    monkeypatch.setattr(asset_tree, "MAX_NEW_ASSETS", 100)
    r = await cloud.client.put(f"/v1/tenants/{tenant.id}/limits", json={"max_assets": 5},
                               headers=cloud.auth(PLATFORM_KEY))  # fmt: skip
    assert r.json()["max_assets"] == 5
    await _send_paths(cloud, gw, 4, paths, report_seq=5)
    assert len((await cloud.get(tenant.admin, "/v1/assets")).json()) == 5
    r = await cloud.client.put(f"/v1/tenants/{tenant.id}/limits", json={"max_assets": 6},
                               headers=cloud.auth(PLATFORM_KEY))  # fmt: skip
    await _send_paths(cloud, gw, 5, paths, report_seq=6)
    assert len((await cloud.get(tenant.admin, "/v1/assets")).json()) == 6
    assert (await _devices(cloud, tenant))["d4"]["asset_path"] == "t"


async def test_latest_and_aggregates_by_asset(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    start = (now_us() // MINUTE_US - 10) * MINUTE_US
    ts = [start + i * 20_000_000 for i in range(6)]  # 3 per minute over 2 minutes
    old = now_us() - 3 * 86_400_000_000

    def series(device: str, tag: str, offset: float) -> SeriesColumns:
        return SeriesColumns(device, tag, ts, [offset + v for v in (1, 5, 3, 10, 20, 30)])

    batch = Batch(str(gw[0]), 1, now_us(), [
        series("filler", "flow", 0), series("filler", "level", 100),
        series("capper", "flow", 1000), series("boiler", "temp", 5000),
        # older than every window but the last: the latest values still find them
        SeriesColumns("boiler", "state", [old, old + 1], ["warm", "hot"]),
    ])  # fmt: skip
    assert (await cloud.send(gw, batch)).status_code == 200
    await _send_paths(cloud, gw, 2, {
        "filler": "acme/plant-a/packaging/line2/filler1",
        "capper": "acme/plant-a/packaging/line2/capper1", "boiler": "acme/plant-a/utilities",
    }, report_seq=1)  # fmt: skip
    assets = {a["path"]: a["id"] for a in (await cloud.get(tenant.admin, "/v1/assets")).json()}

    r = await cloud.get(tenant.admin, f"/v1/assets/{assets['plant-a/packaging']}/latest")
    assert r.status_code == 200, r.text
    assert [(v["device"], v["tag"], v["value"], v["ts"], v["asset_path"]) for v in r.json()] == [
        ("capper", "flow", 1030.0, ts[-1], "plant-a/packaging/line2/capper1"),
        ("filler", "flow", 30.0, ts[-1], "plant-a/packaging/line2/filler1"),
        ("filler", "level", 130.0, ts[-1], "plant-a/packaging/line2/filler1"),
    ]
    series_ids = {(s["device"], s["tag"]): s["id"]
                  for s in (await cloud.get(tenant.admin, "/v1/series")).json()}  # fmt: skip
    assert {v["series_id"] for v in r.json()} == {
        series_ids[("capper", "flow")], series_ids[("filler", "flow")],
        series_ids[("filler", "level")],
    }  # fmt: skip
    whole = (await cloud.get(tenant.admin, f"/v1/assets/{assets['plant-a']}/latest")).json()
    assert len(whole) == 5
    assert [(v["tag"], v["value"], v["ts"]) for v in whole if v["device"] == "boiler"] == [
        ("state", "hot", old + 1), ("temp", 5030.0, ts[-1])]  # fmt: skip
    packaging = assets["plant-a/packaging"]
    listed = (await cloud.get(tenant.admin, "/v1/series", asset_id=packaging)).json()
    assert {(s["device"], s["tag"]) for s in listed} == {
        ("capper", "flow"), ("filler", "flow"), ("filler", "level")}  # fmt: skip
    listed = (await cloud.get(tenant.admin, "/v1/devices", asset_id=packaging)).json()
    assert sorted(d["name"] for d in listed) == ["capper", "filler"]
    empty = await _asset(cloud, tenant.admin, "empty", "site")
    assert (await cloud.get(tenant.admin, f"/v1/assets/{empty['id']}/latest")).json() == []

    line = assets["plant-a/packaging/line2"]
    r = await cloud.get(tenant.admin, f"/v1/assets/{line}/aggregate", bucket="1m", start=start,
                        end=start + 2 * MINUTE_US, tag="flow")  # fmt: skip
    assert r.status_code == 200, r.text
    answer = {(s["device"], s["tag"]): s for s in r.json()}
    assert set(answer) == {("capper", "flow"), ("filler", "flow")}
    assert answer[("filler", "flow")]["buckets"] == [
        {"start": start, "min": 1.0, "max": 5.0, "avg": 3.0, "last": 3.0, "count": 3},
        {"start": start + MINUTE_US, "min": 10.0, "max": 30.0, "avg": 20.0, "last": 30.0,
         "count": 3},
    ]  # fmt: skip
    assert answer[("capper", "flow")]["buckets"][1]["max"] == 1030.0
    assert answer[("capper", "flow")]["asset_path"] == "plant-a/packaging/line2/capper1"
    r = await cloud.get(tenant.admin, f"/v1/assets/{assets['plant-a']}/aggregate", bucket="1d",
                        start=start - 86_400_000_000, end=now_us())  # fmt: skip
    assert sum(b["count"] for s in r.json() for b in s["buckets"]) == 24
    r = await cloud.get(tenant.admin, f"/v1/assets/{assets['plant-a']}/aggregate", bucket="1s",
                        start=start - 86_400_000_000, end=now_us())  # fmt: skip
    assert _code(r) == (422, "invalid_request")  # a day of seconds: too many buckets
    monkeypatch.setattr(asset_api, "MAX_ASSET_BUCKETS", 7)  # 4 series x 2 buckets
    r = await cloud.get(tenant.admin, f"/v1/assets/{assets['plant-a']}/aggregate", bucket="1m",
                        start=start, end=start + 2 * MINUTE_US)  # fmt: skip
    assert _code(r) == (422, "invalid_request")
    monkeypatch.setattr(asset_api, "MAX_ASSET_SERIES", 3)
    r = await cloud.get(tenant.admin, f"/v1/assets/{assets['plant-a']}/aggregate")
    assert r.json()["error"]["details"]["path"] == ["query", "tag"]
    # the latest values are bounded the same way (5 series under plant-a, 3 under packaging)
    r = await cloud.get(tenant.admin, f"/v1/assets/{assets['plant-a']}/latest")
    assert _code(r) == (422, "invalid_request")
    assert r.json()["error"]["details"]["path"] == ["query", "tag"]
    r = await cloud.get(tenant.admin, f"/v1/assets/{packaging}/latest")
    assert r.status_code == 200
    assert len(r.json()) == 3


# SQLite serves one process per file: replicas run against the PostgreSQL engines only
@pytest.mark.parametrize("backend", ENGINE_PARAMS, indirect=True)
async def test_gateways_on_two_replicas_build_one_tree(make_cloud: Any) -> None:
    first, second = await make_cloud(), await make_cloud()
    tenant = await first.tenant("acme")
    gateways = [await first.gateway(tenant, f"gw{i}") for i in range(6)]
    for i, gw in enumerate(gateways):
        r = await first.send(gw, make_batch(gw[0], 1, devices=(f"dev{i}",), tags=("t",), n=1))
        assert r.status_code == 200, r.text

    async def report(i: int, gw: tuple[int, str]) -> int:
        paths = {f"dev{i}": f"acme/site/area/line{i % 2}/cell{i % 3}"}
        event = AssetPaths(type="asset_paths", seq=1, at=now_us(), devices=paths)
        replica = (first, second)[i % 2]
        answer = await replica.send(gw, Batch(str(gw[0]), 2, now_us(), events=[event]))
        return answer.status_code

    assert await asyncio.gather(*(report(i, gw) for i, gw in enumerate(gateways))) == [200] * 6
    paths = [a["path"] for a in (await second.get(tenant.admin, "/v1/assets")).json()]
    assert paths == [
        "site", "site/area", "site/area/line0", "site/area/line0/cell0", "site/area/line0/cell1",
        "site/area/line0/cell2", "site/area/line1", "site/area/line1/cell0",
        "site/area/line1/cell1", "site/area/line1/cell2",
    ]  # fmt: skip
    devices = (await first.get(tenant.admin, "/v1/devices")).json()
    assert {d["name"]: d["asset_path"] for d in devices} == {
        f"dev{i}": f"site/area/line{i % 2}/cell{i % 3}" for i in range(6)
    }
