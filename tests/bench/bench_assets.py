"""Benchmark: reads by asset (`GET /v1/assets/{id}/latest` and `/aggregate`) on each backend.

A tenant with one gateway whose `--devices` devices (each `--tags` tags, a reading every
`--step-s` seconds over the last `--hours` hours) are placed by their gateway's ISA-95 paths in a
tree of one site, 4 areas, 4 lines per area and the devices as equipment. Timed through the API
(in process, httpx's ASGI transport), median of `--rounds`: the latest values of the whole site
and of one line, and 1-hour aggregates of the whole site over the `--hours`. Engines: SQLite,
plain PostgreSQL (``TAGWAY_TEST_PG_DSN``) and, with ``--engines``, TimescaleDB and Citus from
../shared (private clusters). Prints a row per engine; the last line is JSON.

    flock /work/locks/bench.lock python tests/bench/bench_assets.py [--devices 200] [--tags 10]
        [--hours 6] [--step-s 60] [--rounds 5] [--engines sqlite,postgres,timescaledb,citus]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cloud.api.app import create_app  # noqa: E402 - after sys.path
from cloud.contract import AssetPaths, Batch, SeriesColumns, encode_batch  # noqa: E402
from cloud.settings import CloudSettings  # noqa: E402
from cloud.storage.pg_migrate import apply_migrations  # noqa: E402
from tests.pg_engines import running  # noqa: E402

KEY = "bench-platform-key"
HOUR_US = 3_600_000_000


def _now() -> int:
    return time.time_ns() // 1000


async def _fill(client: httpx.AsyncClient, args: argparse.Namespace) -> tuple[str, int, int]:
    platform = {"Authorization": f"Bearer {KEY}"}
    r = await client.post("/v1/tenants", json={"name": "bench"}, headers=platform)
    tenant = r.json()["id"]
    r = await client.post(f"/v1/tenants/{tenant}/api-keys", json={"name": "a", "role": "admin"},
                          headers=platform)  # fmt: skip
    admin = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await client.post("/v1/gateways", json={"name": "gw"}, headers=admin)
    gw_id, token = r.json()["gateway"]["id"], r.json()["token"]
    gw = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    end = _now()
    n = args.hours * 3600 // args.step_s
    ts = [end - (n - i) * args.step_s * 1_000_000 for i in range(n)]
    names = [f"dev{d:04d}" for d in range(args.devices)]
    seq = 0
    per_batch = max(1, 60_000 // (n * args.tags))
    for first in range(0, len(names), per_batch):
        part = names[first : first + per_batch]
        series = [SeriesColumns(dev, f"tag{t:02d}", ts, [float(i % 97) for i in range(n)])
                  for dev in part for t in range(args.tags)]  # fmt: skip
        seq += 1
        body = encode_batch(Batch(str(gw_id), seq, _now(), series), content_type="application/json",
                            content_encoding="identity")  # fmt: skip
        r = await client.post("/v1/ingest", content=body, headers=gw)
        assert r.status_code == 200, r.text
    paths = {dev: f"ent/site/area{i % 4}/line{i // 4 % 4}/{dev}" for i, dev in enumerate(names)}
    seq += 1
    event = AssetPaths(type="asset_paths", seq=1, at=_now(), devices=paths)
    body = encode_batch(Batch(str(gw_id), seq, _now(), events=[event]),
                        content_type="application/json", content_encoding="identity")  # fmt: skip
    r = await client.post("/v1/ingest", content=body, headers=gw)
    assert r.status_code == 200, r.text
    assets = {a["path"]: a["id"] for a in (await client.get("/v1/assets", headers=admin)).json()}
    return admin["Authorization"], assets["site"], assets["site/area0/line0"]


async def _measure(settings: CloudSettings, args: argparse.Namespace) -> dict[str, Any]:
    app = create_app(settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600)
        )
        auth, site, line = await _fill(client, args)
        h = {"Authorization": auth}
        end = _now()
        calls = {
            "latest_site": (f"/v1/assets/{site}/latest", {}),
            "latest_line": (f"/v1/assets/{line}/latest", {}),
            "aggregate_site_1h": (f"/v1/assets/{site}/aggregate",
                                  {"bucket": "1h", "start": end - args.hours * HOUR_US,
                                   "end": end}),
        }  # fmt: skip
        out: dict[str, Any] = {}
        for name, (path, params) in calls.items():
            times, size = [], 0
            for _ in range(args.rounds):
                started = time.perf_counter()
                r = await client.get(path, params=params, headers=h)
                times.append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
                size = len(r.json())
            out[name] = {"s": round(statistics.median(times), 4), "items": size}
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--tags", type=int, default=10)
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--step-s", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engines", default="sqlite,postgres")
    args = parser.parse_args()
    results: dict[str, Any] = {"load": os.getloadavg()[0]}
    for engine in args.engines.split(","):
        with ExitStack() as stack:
            base: dict[str, Any] = {"platform_admin_key": KEY, "retention_interval_s": 0}
            if engine == "sqlite":
                folder = stack.enter_context(tempfile.TemporaryDirectory())
                settings = CloudSettings(database_url=f"sqlite:///{folder}/bench.db", **base)
            else:
                server = stack.enter_context(running(engine))
                name = f"bench_assets_{secrets.token_hex(4)}"
                owner = server.create_database(name)
                stack.callback(server.drop_database, name)
                asyncio.run(apply_migrations(owner, CloudSettings()))
                app = psycopg.conninfo.make_conninfo(owner, user="tagway_app")
                settings = CloudSettings(database_url=app, migrate_database_url=owner, **base)
            results[engine] = asyncio.run(_measure(settings, args))
            print(engine, json.dumps(results[engine]), flush=True)
    results["series"] = args.devices * args.tags
    print(json.dumps(results))


if __name__ == "__main__":
    main()
