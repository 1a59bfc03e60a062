"""Tenant isolation. The API part runs on both backends; on PostgreSQL the app connects as the
production app role (not the owner), so row-level security is live under every request. The
database part talks to PostgreSQL directly as that role."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import psycopg
import pytest

from cloud.contract import AlarmRecord, AssetPaths, Batch, CommandResult
from cloud.settings import CloudSettings
from cloud.storage.asset_schema import TABLES as ASSET_TABLES
from cloud.storage.fleet_schema import TABLES as FLEET_TABLES
from cloud.storage.pg_schema import METADATA_TABLES
from cloud.storage.postgres import PostgresDatabase
from cloud.storage.twoway_schema import TABLES as TWO_WAY_TABLES
from tests.cloud.conftest import (
    APP_ROLE,
    Cloud,
    Start,
    Tenant,
    app_dsn,
    make_batch,
    now_us,
    truncate,
)
from tests.cloud.fleet_support import CONFIG, Reporter, push, rollout
from tests.cloud.live_support import batch_with_events, open_stream
from tests.cloud.test_retention import unused_day

pytestmark = pytest.mark.integration


async def _populate(cloud: Cloud, name: str) -> tuple[Tenant, dict[str, int]]:
    tenant = await cloud.tenant(name)
    gw = await cloud.gateway(tenant, f"{name}-gw")
    alarm = AlarmRecord(device=f"{name}-pump", name="high", ts=now_us() - 5)
    batch = make_batch(gw[0], 1, devices=(f"{name}-pump",), n=5)
    assert (
        await cloud.send(gw, Batch(batch.gateway_id, 1, batch.created_at, batch.series, [alarm]))
    ).status_code == 200
    device = (await cloud.get(tenant.admin, "/v1/devices")).json()[0]["id"]
    series = (await cloud.get(tenant.admin, "/v1/series")).json()[0]["id"]
    alarm_id = (await cloud.get(tenant.admin, "/v1/alarms")).json()[0]["id"]
    key_id = (await cloud.get(tenant.admin, "/v1/api-keys")).json()[0]["id"]
    h = cloud.auth(tenant.admin)
    command = await cloud.client.post(
        f"/v1/gateways/{gw[0]}/commands", json={"kind": "ping"}, headers=h
    )
    desired = {"desired": {"setpoints": {f"{name}-pump": {"speed": {"value": 5}}}}}
    await cloud.client.patch(f"/v1/gateways/{gw[0]}/shadow", json=desired, headers=h)
    await cloud.client.put(f"/v1/gateways/{gw[0]}/labels", json={"labels": {"site": "s1"}},
                           headers=h)  # fmt: skip
    version = await push(cloud, tenant.admin, CONFIG.replace("gw}", f"{name}}}"))
    started = await rollout(cloud, tenant.admin, version, label="site=s1")
    reporter = Reporter(cloud, gw)
    await reporter.send(reporter.status(), reporter.config("probation", version))
    return tenant, {
        "version": version,
        "rollout": started["id"],
        "gateway": gw[0],
        "device": device,
        "series": series,
        "alarm": alarm_id,
        "key": key_id,
        "command": command.json()["id"],
    }


async def _view(cloud: Cloud, tenant: Tenant) -> dict[str, Any]:
    paths = {p: p for p in ("/v1/gateways", "/v1/devices", "/v1/series", "/v1/alarms",
                            "/v1/api-keys")}  # fmt: skip
    gateway = next(iter(tenant.gateways.values()))[0]
    paths |= {what: f"/v1/gateways/{gateway}/{what}" for what in (
        "commands", "shadow", "writes", "config", "config/history", "health")}  # fmt: skip
    paths |= {p: p for p in ("/v1/configs", "/v1/rollouts", "/v1/usage/fleet")}
    view = {name: (await cloud.get(tenant.admin, path)).json() for name, path in paths.items()}
    for entry in view["/v1/gateways"]:
        entry.pop("last_seen_at")
    for entry in view["/v1/api-keys"]:
        entry.pop("last_used_at")
    return view


async def test_every_endpoint_hides_the_other_tenant(cloud: Cloud) -> None:
    a, _ = await _populate(cloud, "alpha")
    b, b_ids = await _populate(cloud, "beta")
    b_before = await _view(cloud, b)
    h = cloud.auth(a.admin)
    c = cloud.client
    answers = {
        "get gateway": await c.get(f"/v1/gateways/{b_ids['gateway']}", headers=h),
        "rename gateway": await c.patch(
            f"/v1/gateways/{b_ids['gateway']}", json={"name": "x"}, headers=h
        ),
        "rotate token": await c.post(f"/v1/gateways/{b_ids['gateway']}/token", headers=h),
        "revoke gateway": await c.post(f"/v1/gateways/{b_ids['gateway']}/revoke", headers=h),
        "delete gateway": await c.delete(f"/v1/gateways/{b_ids['gateway']}", headers=h),
        "get device": await c.get(f"/v1/devices/{b_ids['device']}", headers=h),
        "patch device": await c.patch(
            f"/v1/devices/{b_ids['device']}", json={"display_name": "x"}, headers=h
        ),
        "delete device": await c.delete(f"/v1/devices/{b_ids['device']}", headers=h),
        "latest": await c.get(f"/v1/devices/{b_ids['device']}/latest", headers=h),
        "raw": await c.get(f"/v1/series/{b_ids['series']}/raw", headers=h),
        "aggregate": await c.get(f"/v1/series/{b_ids['series']}/aggregate", headers=h),
        "ack alarm": await c.post(f"/v1/alarms/{b_ids['alarm']}/ack", headers=h),
        "get alarm": await c.get(f"/v1/alarms/{b_ids['alarm']}", headers=h),
        "alarm events": await c.get(f"/v1/alarms/{b_ids['alarm']}/events", headers=h),
        "command": await c.post(
            f"/v1/gateways/{b_ids['gateway']}/commands", json={"kind": "ping"}, headers=h
        ),
        "list commands": await c.get(f"/v1/gateways/{b_ids['gateway']}/commands", headers=h),
        "get command": await c.get(
            f"/v1/gateways/{b_ids['gateway']}/commands/{b_ids['command']}", headers=h
        ),
        "cancel command": await c.delete(
            f"/v1/gateways/{b_ids['gateway']}/commands/{b_ids['command']}", headers=h
        ),
        "shadow": await c.get(f"/v1/gateways/{b_ids['gateway']}/shadow", headers=h),
        "patch shadow": await c.patch(
            f"/v1/gateways/{b_ids['gateway']}/shadow",
            json={"desired": {"setpoints": {"x": {"y": {"value": 1}}}}},
            headers=h,
        ),
        "writes": await c.get(f"/v1/gateways/{b_ids['gateway']}/writes", headers=h),
        "revoke key": await c.delete(f"/v1/api-keys/{b_ids['key']}", headers=h),
        "config": await c.get(f"/v1/configs/{b_ids['version']}", headers=h),
        "config diff": await c.get(
            f"/v1/configs/{b_ids['version']}/diff", params={"from": b_ids["version"]}, headers=h
        ),
        "rollout": await c.get(f"/v1/rollouts/{b_ids['rollout']}", headers=h),
        "roll out b's version": await c.post(
            "/v1/rollouts", json={"version": b_ids["version"], "label": "site=s1"}, headers=h
        ),
        "roll out to b's gateway": await c.post(
            "/v1/rollouts", json={"version": 1, "gateway_id": b_ids["gateway"]}, headers=h
        ),
        "cancel rollout": await c.post(f"/v1/rollouts/{b_ids['rollout']}/cancel", headers=h),
        "gateway config": await c.get(f"/v1/gateways/{b_ids['gateway']}/config", headers=h),
        "config history": await c.get(f"/v1/gateways/{b_ids['gateway']}/config/history", headers=h),
        "unpin": await c.delete(f"/v1/gateways/{b_ids['gateway']}/config/pin", headers=h),
        "health": await c.get(f"/v1/gateways/{b_ids['gateway']}/health", headers=h),
        "labels": await c.put(
            f"/v1/gateways/{b_ids['gateway']}/labels", json={"labels": {"a": "b"}}, headers=h
        ),
    }
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 404)
    # A's command ids on B's gateway path, and B's ids on A's: not found either way
    a_gw = a.gateways["alpha-gw"][0]
    cross = await c.get(f"/v1/gateways/{a_gw}/commands/{b_ids['command']}", headers=h)
    assert cross.status_code == 404
    filtered = {
        "devices": await cloud.get(a.admin, "/v1/devices", gateway_id=b_ids["gateway"]),
        "series by device": await cloud.get(a.admin, "/v1/series", device_id=b_ids["device"]),
        "series by gateway": await cloud.get(a.admin, "/v1/series", gateway_id=b_ids["gateway"]),
        "alarms": await cloud.get(a.admin, "/v1/alarms", gateway_id=b_ids["gateway"]),
        "alarms by device": await cloud.get(a.admin, "/v1/alarms", device="beta-pump"),
    }
    assert {name: r.json() for name, r in filtered.items()} == {name: [] for name in filtered}
    # the same label in both tenants: A's rollout selects A's gateways only
    a_version = (await cloud.get(a.admin, "/v1/configs")).json()[0]["version"]
    mine = await rollout(cloud, a.admin, a_version, label="site=s1")
    assert [g["gateway_id"] for g in mine["gateways"]] == [a.gateways["alpha-gw"][0]]
    a_view = await _view(cloud, a)
    for path, rows in a_view.items():
        if path in ("shadow", "writes", "config", "config/history", "health", "/v1/usage/fleet"):
            continue  # per-gateway (or per-tenant) documents: B's is compared whole below
        assert rows, path
        ids = {r.get("id", r.get("version")) for r in rows}
        assert not ids & {r.get("id", r.get("version")) for r in b_before[path]}, path
    assert await _view(cloud, b) == b_before  # nothing of B changed
    assert (await cloud.get(b.admin, "/v1/tenant")).json()["name"] == "beta"


async def _placed(cloud: Cloud, name: str) -> tuple[Tenant, dict[str, int]]:
    """A tenant whose gateway placed its device under ``name-site/area/line/cell`` by path."""
    tenant = await cloud.tenant(name)
    gw = await cloud.gateway(tenant, f"{name}-gw")
    assert (await cloud.send(gw, make_batch(gw[0], 1, devices=("pump",), n=3))).status_code == 200
    paths = AssetPaths(type="asset_paths", seq=1, at=now_us(),
                       devices={"pump": f"ent/{name}-site/area/line/cell"})  # fmt: skip
    r = await cloud.send(gw, Batch(str(gw[0]), 2, now_us(), events=[paths]))
    assert r.status_code == 200, r.text
    assets = {a["level"]: a["id"] for a in (await cloud.get(tenant.admin, "/v1/assets")).json()}
    device = (await cloud.get(tenant.admin, "/v1/devices")).json()[0]
    assert device["asset_path"] == f"{name}-site/area/line/cell"
    return tenant, {**assets, "device": device["id"]}


async def test_assets_of_b_answer_as_if_they_did_not_exist(cloud: Cloud) -> None:
    a, a_ids = await _placed(cloud, "alpha")
    b, b_ids = await _placed(cloud, "beta")
    b_view = {p: (await cloud.get(b.admin, p)).json() for p in ("/v1/assets", "/v1/devices",
                                                               "/v1/series")}  # fmt: skip
    c, h = cloud.client, cloud.auth(a.admin)
    missing = 2**62

    async def attempts(site: int, equipment: int, device: int) -> dict[str, Any]:
        return {
            "get": await c.get(f"/v1/assets/{site}", headers=h),
            "children": await c.get("/v1/assets", params={"parent_id": site}, headers=h),
            "rename": await c.patch(f"/v1/assets/{site}", json={"name": "x"}, headers=h),
            "move": await c.patch(f"/v1/assets/{equipment}", json={"parent_id": a_ids["line"]},
                                  headers=h),
            "move under": await c.patch(f"/v1/assets/{a_ids['equipment']}",
                                        json={"parent_id": b_ids["line"] if site != missing
                                              else missing}, headers=h),
            "create under": await c.post("/v1/assets", json={"name": "x", "level": "area",
                                                             "parent_id": site}, headers=h),
            "delete": await c.delete(f"/v1/assets/{site}?cascade=true", headers=h),
            "latest": await c.get(f"/v1/assets/{site}/latest", headers=h),
            "aggregate": await c.get(f"/v1/assets/{site}/aggregate", headers=h),
            "place a's device there": await c.put(f"/v1/devices/{a_ids['device']}/asset",
                                                  json={"asset_id": equipment}, headers=h),
            "place the device": await c.put(f"/v1/devices/{device}/asset",
                                            json={"asset_id": a_ids["site"]}, headers=h),
            "unpin the device": await c.delete(f"/v1/devices/{device}/asset", headers=h),
            "devices under": await c.get("/v1/devices", params={"asset_id": site}, headers=h),
            "series under": await c.get("/v1/series", params={"asset_id": site}, headers=h),
        }  # fmt: skip

    foreign = await attempts(b_ids["site"], b_ids["equipment"], b_ids["device"])
    absent = await attempts(missing, missing, missing)
    assert {k: r.status_code for k, r in foreign.items()} == dict.fromkeys(foreign, 404)
    assert {k: r.json() for k, r in foreign.items()} == {k: r.json() for k, r in absent.items()}
    for path, before in b_view.items():
        assert (await cloud.get(b.admin, path)).json() == before, path
    mine = (await cloud.get(a.admin, "/v1/assets")).json()
    assert {x["id"] for x in mine} == {a_ids[k] for k in ("site", "area", "line", "equipment")}
    # the same path names in both tenants are separate trees
    await _asset_named(cloud, a, "beta-site")
    assert (await cloud.get(b.admin, "/v1/assets")).json() == b_view["/v1/assets"]


async def _asset_named(cloud: Cloud, tenant: Tenant, name: str) -> None:
    r = await cloud.client.post("/v1/assets", json={"name": name, "level": "site"},
                                headers=cloud.auth(tenant.admin))  # fmt: skip
    assert r.status_code == 201, r.text


async def test_a_gateway_of_a_can_never_write_into_b(cloud: Cloud) -> None:
    a, _ = await _populate(cloud, "alpha")
    b, b_ids = await _populate(cloud, "beta")
    a_gw = a.gateways["alpha-gw"]
    before = await _view(cloud, b)
    forged = make_batch(b_ids["gateway"], 99, devices=("intruder",))
    r = await cloud.send(a_gw, forged)
    assert r.status_code == 403
    assert (
        await cloud.send(a_gw, make_batch(a_gw[0], 2, devices=("intruder",)))
    ).status_code == 200
    assert await _view(cloud, b) == before
    assert "intruder" in {d["name"] for d in (await cloud.get(a.admin, "/v1/devices")).json()}
    # A's user keys cannot post batches at all, into any tenant
    assert (await cloud.send((0, a.admin), forged)).status_code == 403


async def test_streams_channels_and_results_keep_tenants_apart(make_live: Start) -> None:
    cloud = await make_live()
    a, a_ids = await _populate(cloud, "alpha")
    b, b_ids = await _populate(cloud, "beta")
    a_gw, b_gw = a.gateways["alpha-gw"], b.gateways["beta-gw"]
    async with (
        open_stream(cloud.client, "/v1/stream", a.admin) as a_stream,
        open_stream(cloud.client, "/v1/stream", a.admin, gateway_id=b_gw[0]) as a_spying,
        open_stream(cloud.client, "/v1/gateway/channel", b_gw[1]) as b_channel,
    ):
        await a_stream.subscribed()
        await a_spying.subscribed()
        # B's gateway sees B's pending command and B's desired setpoints, nothing of A's
        first = await b_channel.until("desired")
        assert list(first.data["setpoints"]) == ["beta-pump"]
        assert (await b_channel.until("command")).data["id"] == b_ids["command"]
        # A's gateway cannot finish B's command by naming its id
        forged = CommandResult(type="command_result", command_id=b_ids["command"],
                               state="failed", finished_at=now_us())  # fmt: skip
        assert (await cloud.post(a_gw[1], batch_with_events(a_gw[0], 9, [forged]))).status_code
        b_command = f"/v1/gateways/{b_gw[0]}/commands/{b_ids['command']}"
        assert (await cloud.get(b.admin, b_command)).json()["state"] == "delivered"
        # B's readings and commands reach no stream of A's, not even one filtered on B's gateway
        await cloud.send(b_gw, make_batch(b_gw[0], 2, devices=("beta-pump",), n=3))
        await cloud.client.post(f"/v1/gateways/{b_gw[0]}/commands", json={"kind": "ping"},
                                headers=cloud.auth(b.admin))  # fmt: skip
        await cloud.send(a_gw, make_batch(a_gw[0], 2, devices=("alpha-pump",), n=3))
        seen = (await a_stream.until("readings")).data
        assert {s["device"] for s in seen["series"]} == {"alpha-pump"}
        assert seen["gateway_id"] == a_gw[0]
        with pytest.raises(TimeoutError):
            await a_spying.next(wait_s=0.5)
    assert a_ids["gateway"] != b_ids["gateway"]


# ------------------------------------------------------------------ database, as the app role

pg = pytest.mark.postgres


@pytest.fixture
async def two_tenants_pg(
    migrated_pg: str, make_cloud_pg: Any
) -> tuple[Cloud, dict[str, int], dict[str, int]]:
    cloud = await make_cloud_pg()
    _, a_ids = await _populate(cloud, "alpha")
    _, b_ids = await _populate(cloud, "beta")
    tenants = (await cloud.get("platform-secret-for-tests-only", "/v1/tenants")).json()
    a_ids["tenant"], b_ids["tenant"] = tenants[0]["id"], tenants[1]["id"]
    return cloud, a_ids, b_ids


@pytest.fixture
async def make_cloud_pg(migrated_pg: str, tmp_path: Any) -> Any:
    from contextlib import AsyncExitStack  # noqa: PLC0415 - fixture plumbing

    import httpx  # noqa: PLC0415 - fixture plumbing

    from cloud.api.app import create_app  # noqa: PLC0415 - fixture plumbing

    truncate(migrated_pg)
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Cloud:
            settings = CloudSettings(
                database_url=app_dsn(migrated_pg),
                platform_admin_key="platform-secret-for-tests-only",
                **({"pool_min_size": 1, "pool_max_size": 2} | overrides),
            )
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            await stack.enter_async_context(client)
            return Cloud(client)

        yield start


@pg
def test_the_app_role_is_not_privileged(migrated_pg: str) -> None:
    with psycopg.connect(app_dsn(migrated_pg)) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles"
            " WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False, False)
        owned = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
            " WHERE r.rolname = %s",
            [APP_ROLE],
        ).fetchone()
        assert owned == (0,)
        forced = conn.execute(
            "SELECT relname FROM pg_class WHERE relname = ANY(%s)"
            " AND relrowsecurity AND relforcerowsecurity ORDER BY relname",
            [["tenants", "alarm_events", *METADATA_TABLES, *TWO_WAY_TABLES, *FLEET_TABLES,
              *ASSET_TABLES]],
        ).fetchall()  # fmt: skip
        assert {r[0] for r in forced} == {
            "tenants", "alarm_events", *METADATA_TABLES, *TWO_WAY_TABLES,
            *FLEET_TABLES, *ASSET_TABLES}  # fmt: skip


@pg
async def test_without_tenant_context_nothing_is_visible(
    two_tenants_pg: Any, migrated_pg: str
) -> None:
    with psycopg.connect(app_dsn(migrated_pg)) as conn:
        for table in ("tenants", "alarm_events", *METADATA_TABLES, *TWO_WAY_TABLES, *FLEET_TABLES,
                      *ASSET_TABLES):  # fmt: skip
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - constants
            assert count == (0,), table
        conn.rollback()
        conn.execute("SELECT set_config('app.tenant_id', '999999', false)")
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


@pg
async def test_rls_admits_only_the_current_tenant(two_tenants_pg: Any, migrated_pg: str) -> None:
    _, a_ids, b_ids = two_tenants_pg
    with psycopg.connect(app_dsn(migrated_pg)) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(a_ids["tenant"])])
        tenants = conn.execute("SELECT id FROM devices").fetchall()
        assert tenants == [(a_ids["device"],)]
        assert conn.execute("SELECT count(*) FROM tenants").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO devices (tenant_id, gateway_id, name, created_at)"
                " VALUES (%s, %s, 'sneak', 0)",
                [b_ids["tenant"], b_ids["gateway"]],
            )
        conn.rollback()
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(a_ids["tenant"])])
        changed = conn.execute(
            "UPDATE gateways SET name = 'stolen' WHERE id = %s", [b_ids["gateway"]]
        ).rowcount
        assert changed == 0
        conn.rollback()


@pg
async def test_the_app_role_cannot_touch_partitions(
    two_tenants_pg: Any, migrated_pg: str, pg_engine: str
) -> None:
    today = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%d")
    hidden, queried = [f"telemetry_p{today}"], [f"telemetry_p{today}"]
    if pg_engine == "timescaledb":
        hidden, queried = _timescaledb_storage(migrated_pg, two_tenants_pg[1]["tenant"])
    with psycopg.connect(app_dsn(migrated_pg)) as conn:
        for name in hidden:
            granted = conn.execute(
                "SELECT has_table_privilege(%s, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')", [name]
            ).fetchone()
            assert granted == (False,), name
        for name in queried:
            for sql in (f"SELECT count(*) FROM {name}", f"DROP TABLE {name}"):  # noqa: S608
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql)
                conn.rollback()
        # the parent is readable, and only through an explicit tenant filter does it make sense
        assert conn.execute("SELECT count(*) > 0 FROM telemetry").fetchone() == (True,)
        if pg_engine == "timescaledb":
            assert conn.execute("SELECT count(*) > 0 FROM telemetry_1m").fetchone() == (True,)


def _timescaledb_storage(owner_dsn: str, tenant: int) -> tuple[list[str], list[str]]:
    """Every table behind the hypertable and its aggregate, with compressed and materialized
    data in them; and those a statement may name (TimescaleDB itself refuses statements naming
    compressed data): the materialized hypertable and a chunk the app role's own insert made."""
    with psycopg.connect(owner_dsn, autocommit=True) as owner:
        owner.execute("SELECT compress_chunk(c) FROM show_chunks('telemetry') c")
        owner.execute("CALL refresh_continuous_aggregate('telemetry_1m', NULL, NULL)")
        owner.execute("SELECT compress_chunk(c) FROM show_chunks('telemetry_1m') c")
        late = unused_day(owner) * 86_400_000_000 + 1
        with psycopg.connect(app_dsn(owner_dsn), autocommit=True) as app:
            app.execute("INSERT INTO telemetry VALUES (%s, 1, %s, 1.0, NULL, 0)", [tenant, late])
        rows = owner.execute(
            "SELECT format('%%I.%%I', n.nspname, c.relname), c.relname ~ '^_materialized' OR"
            "  EXISTS (SELECT 1 FROM timescaledb_information.chunks k WHERE k.chunk_name ="
            "   c.relname AND NOT k.is_compressed AND k.range_start_integer <= %s"
            "   AND k.range_end_integer > %s)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = '_timescaledb_internal' AND c.relkind = 'r'"
            " AND c.relname ~ '^(_hyper|compress_hyper|_compressed_hypertable"
            "|_materialized_hypertable)_'",
            [late, late],
        ).fetchall()
    names = [str(r[0]) for r in rows]
    for kind in ("._hyper_", ".compress_hyper_", "._materialized_hypertable_"):
        assert any(kind in n for n in names), (kind, names)
    queried = [str(r[0]) for r in rows if r[1]]
    assert len(queried) == 2, rows  # the materialized hypertable and the app's new chunk
    return names, queried


@pg
async def test_a_pool_of_one_serving_a_then_b_leaks_nothing(
    two_tenants_pg: Any, migrated_pg: str
) -> None:
    _, a_ids, b_ids = two_tenants_pg
    settings = CloudSettings(database_url=app_dsn(migrated_pg), pool_min_size=1, pool_max_size=1)
    db = await PostgresDatabase.open(settings)
    try:
        for _ in range(3):
            async with db.transaction(a_ids["tenant"]) as tx:
                assert await tx.fetch("SELECT id FROM devices") == [(a_ids["device"],)]
            async with db.transaction(None) as tx:
                assert await tx.fetchone("SELECT current_setting('app.tenant_id', true)") == ("",)
                assert await tx.fetch("SELECT id FROM devices") == []
            async with db.transaction(b_ids["tenant"]) as tx:
                assert await tx.fetch("SELECT id FROM devices") == [(b_ids["device"],)]

        # concurrent users of the single connection queue up and still see only their own rows
        async def devices(tenant: int) -> list[Any]:
            async with db.transaction(tenant) as tx:
                await tx.fetch("SELECT pg_sleep(0.01)")
                return await tx.fetch("SELECT id FROM devices")

        results = await asyncio.gather(
            *(devices(t) for t in [a_ids["tenant"], b_ids["tenant"]] * 4)
        )
        assert results == [[(a_ids["device"],)], [(b_ids["device"],)]] * 4
    finally:
        await db.close()
