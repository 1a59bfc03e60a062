"""A value no chunk can carry, published by a device with a broker login, is a bad reading with
its reason: the agent, its embedded broker and every other device keep going."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiomqtt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from edge.chunk import decode_readings
from firmware_sim.plant import Plant
from protocols.reading import Quality
from store_forward import Lane, Outbox
from tests.edge.harness import agent_config, running_agent
from tests.mosquitto import free_port

HUGE = b"1" + b"0" * 400  # an integer no float (and no 64-bit register) holds
ROGUE = {"username": "rogue", "password": "pw-rogue"}  # a test broker's login


def _users() -> list[dict[str, Any]]:
    # Cheap Argon2 parameters keep connects fast; the broker verifies them as any other hash.
    cheap = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1),))
    return [
        {"username": "sim", "password_hash": cheap.hash("pw-sim"), "publish": ["plant/#"]},
        {"username": "rogue", "password_hash": cheap.hash("pw-rogue"),
         "publish": ["plant/rogue/#", "meters/rogue/#"]},
        {"username": "gateway", "password_hash": cheap.hash("pw-gateway"), "publish": [],
         "subscribe": ["plant/#", "meters/#"]},
    ]  # fmt: skip


async def test_an_integer_past_64_bits_is_a_bad_reading_and_stops_nothing(tmp_path: Path) -> None:
    port = free_port()
    source = {
        "protocol": "mqtt", "name": "plant-mqtt", "url": f"mqtt://127.0.0.1:{port}",
        "username": "gateway", "password": "pw-gateway", "simulated": True,
        "reconnect_base_s": 0.1, "reconnect_cap_s": 0.5,
        "subscriptions": [{"topic": "plant/{device}/telemetry"},
                          {"topic": "meters/{device}/{tag}", "decoder": {"kind": "raw"}}],
    }  # fmt: skip
    broker = {"host": "127.0.0.1", "port": port, "users": _users()}
    config = agent_config(tmp_path, [source], mqtt_broker=broker)
    async with (
        running_agent(config) as running,
        Plant(devices=1, seed=5, tick_s=0.05, modbus=False, opcua=False, control_port=None,
              mqtt_url=f"mqtt://sim:pw-sim@127.0.0.1:{port}", mqtt_interval_s=0.2),
    ):  # fmt: skip

        async def tag(device: str, name: str) -> dict[str, Any] | None:
            tags = await running.get(f"/v1/tags?device={device}")
            return next((t for t in tags if t["tag"] == name), None)

        async def plant_publishing() -> bool:
            return bool(await running.get("/v1/tags?device=pump1"))

        await running.wait_for(plant_publishing)
        now_ms = str(time.time_ns() // 1_000_000).encode()
        async with aiomqtt.Client("127.0.0.1", port, **ROGUE) as c:
            await c.publish("plant/rogue/telemetry",
                            b'{"ts": ' + now_ms + b', "values": {"big": ' + HUGE + b', "ok": 1}}',
                            qos=1)  # fmt: skip
            await c.publish("meters/rogue/count", HUGE, qos=1)

        async def both_bad() -> bool:
            big, count = await tag("rogue", "big"), await tag("rogue", "count")
            return big is not None and count is not None

        await running.wait_for(both_bad)
        for name in ("big", "count"):
            seen = await tag("rogue", name)
            assert seen is not None
            assert seen["quality"] == "bad"
            assert "does not fit 64 bits" in seen["reason"]
        ok = await tag("rogue", "ok")
        assert ok is not None
        assert (ok["value"], ok["quality"]) == (1, "good")

        # The agent is still running and committing the plant's readings after the rogue ones.
        pipeline = running.agent.runtime.pipeline
        committed = pipeline.counters.committed

        async def still_flowing() -> bool:
            return pipeline.counters.committed > committed + 5

        await running.wait_for(still_flowing)
        assert pipeline.counters.flush_errors == 0
        health = await running.get("/health")
        assert health["status"] == "ok"
        # The embedded broker still takes connections.
        async with aiomqtt.Client("127.0.0.1", port, **ROGUE) as c:
            await c.publish("meters/rogue/count", b"7", qos=1)

        async def seven() -> bool:
            count = await tag("rogue", "count")
            return count is not None and count["value"] == 7

        await running.wait_for(seven)

    with Outbox(config.outbox_path) as outbox:
        lease = outbox.lease(max_bytes=1 << 30, max_chunks=100_000)
        stored = [r for c in lease.chunks if c.lane is Lane.TELEMETRY
                  for r in decode_readings(c.payload)]  # fmt: skip
    rogue = {(r.tag, r.quality) for r in stored if r.device == "rogue"}
    assert {("big", Quality.BAD), ("count", Quality.BAD), ("ok", Quality.GOOD)} <= rogue
    assert any(r.device == "pump1" for r in stored)


async def test_64_bit_integers_reach_the_cloud_exactly(tmp_path: Path) -> None:
    import httpx  # noqa: PLC0415

    from tests.edge.cloud_harness import bootstrap, serve_cloud  # noqa: PLC0415

    port = free_port()
    source = {
        "protocol": "mqtt", "name": "plant-mqtt", "url": f"mqtt://127.0.0.1:{port}",
        "username": "gateway", "password": "pw-gateway",
        "reconnect_base_s": 0.1, "reconnect_cap_s": 0.5,
        "subscriptions": [{"topic": "plant/{device}/telemetry"}],
    }  # fmt: skip
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        token_file = tmp_path / "gateway.token"
        token_file.write_text(cloud.gateway_token)
        config = agent_config(
            tmp_path / "state", [source],
            mqtt_broker={"host": "127.0.0.1", "port": port, "users": _users()},
            cloud={"url": cloud.url, "gateway_id": cloud.gateway_id,
                   "token_file": str(token_file), "max_batches_per_s": 0, "retry_max_delay": 1.0},
        )  # fmt: skip
        async with running_agent(config) as running:
            values = b'{"counter": 1152939101356429315, "energy_wh": 18446744073709551615}'
            async with aiomqtt.Client("127.0.0.1", port, **ROGUE) as c:
                for step in range(3):
                    now_ms = str(time.time_ns() // 1_000_000 + step).encode()
                    message = b'{"ts": ' + now_ms + b', "values": ' + values + b"}"
                    await c.publish("plant/rogue/telemetry", message, qos=1)

            async def stored() -> bool:
                return cloud.counts().get(("rogue", "energy_wh"), 0) == 3

            await running.wait_for(stored, within=30)
            seen = {t["tag"]: t["value"] for t in await running.get("/v1/tags?device=rogue")}
        assert seen == {"counter": 1152939101356429315, "energy_wh": 2**64 - 1}
        admin = {"Authorization": f"Bearer {cloud.admin_key}"}
        async with httpx.AsyncClient(base_url=cloud.url, headers=admin) as client:
            (device,) = (await client.get("/v1/devices")).json()
            latest = (await client.get(f"/v1/devices/{device['id']}/latest")).json()
        assert {v["tag"]: v["value"] for v in latest} == {
            "counter": 1152939101356429315, "energy_wh": 2**64 - 1,
        }  # fmt: skip
