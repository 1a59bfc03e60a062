"""Time the way plants need it, through the agent and its embedded broker: a device's wrong clock
is re-stamped (or kept, by policy) and counted per device, `ts_unit` and `timestamp: gateway`
take the device at its word, and the gateway's own clock state is shown everywhere."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pydantic import ValidationError

from cloud.settings import CloudSettings
from edge.clock import ClockSync
from edge.config import ClockSection, ConfigError, parse_config
from protocols.mqtt.config import JsonDecoder
from tests.edge.harness import agent_config, running_agent
from tests.edge.test_driver_errors import tagway_status
from tests.mosquitto import free_port

pytestmark = pytest.mark.integration

Y2000_MS = 946_684_800_000
PLC = {"username": "plc", "password": "pw-plc"}  # a test broker login


def _users() -> list[dict[str, Any]]:
    cheap = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1),))
    return [
        {"username": "plc", "password_hash": cheap.hash("pw-plc"), "publish": ["#"]},
        {"username": "gateway", "password_hash": cheap.hash("pw-gateway"), "publish": [],
         "subscribe": ["#"]},
    ]  # fmt: skip


def _source(name: str, port: int, subscriptions: list[dict[str, Any]], **extra: Any) -> Any:
    return {
        "protocol": "mqtt", "name": name, "url": f"mqtt://127.0.0.1:{port}",
        "username": "gateway", "password": "pw-gateway",
        "reconnect_base_s": 0.1, "reconnect_cap_s": 0.5, "subscriptions": subscriptions,
        **extra,
    }  # fmt: skip


async def test_wrong_device_clocks_are_restamped_or_kept_and_counted_per_device(
    tmp_path: Path,
) -> None:
    port = free_port()
    sources = [
        _source("plant-mqtt", port, [
            {"topic": "plant/{device}/telemetry"},  # milliseconds, the default
            {"topic": "secs/{device}/telemetry", "decoder": {"kind": "json", "ts_unit": "s"}},
            {"topic": "gw/{device}/telemetry", "decoder": {"kind": "json", "timestamp": "gateway"}},
        ]),
        _source("trusted-mqtt", port, [{"topic": "keep/{device}/telemetry"}], clock_fault="keep"),
        _source("strict-mqtt", port, [{"topic": "bad/{device}/telemetry"}], clock_fault="bad"),
    ]  # fmt: skip
    broker = {"host": "127.0.0.1", "port": port, "users": _users()}
    clock = {"sync_command": ["sh", "-c", "echo no"], "sync_interval": 0.2}
    config = agent_config(tmp_path, sources, mqtt_broker=broker, clock=clock)
    async with running_agent(config) as running:

        async def tag(device: str, name: str) -> dict[str, Any] | None:
            tags = await running.get(f"/v1/tags?device={device}")
            return next((t for t in tags if t["tag"] == name), None)

        async def subscribed() -> bool:
            drivers = await running.get("/v1/drivers")
            return all(d["state"] == "connected" for d in drivers)

        await running.wait_for(subscribed)
        now_s = int(time.time())
        sent_us = time.time_ns() // 1000
        async with aiomqtt.Client("127.0.0.1", port, **PLC) as plc:
            for topic, ts in (
                ("plant/plc1/telemetry", now_s),  # seconds where milliseconds are expected
                ("secs/plc2/telemetry", now_s),  # the same, declared with ts_unit: s
                ("gw/plc3/telemetry", Y2000_MS),  # a PLC reset to 2000, stamped by the gateway
                ("keep/plc4/telemetry", Y2000_MS),  # kept by policy
                ("bad/plc5/telemetry", Y2000_MS),  # marked bad by policy
                ("plant/plc6/telemetry", now_s * 1000),  # a good clock
                ("plant/plc7/telemetry", (now_s + 7200) * 1000),  # two hours ahead
            ):
                payload = json.dumps({"ts": ts, "values": {"v": 1.5}}).encode()
                await plc.publish(topic, payload, qos=1)

        async def all_arrived() -> bool:
            return all([await tag(f"plc{n}", "v") for n in range(1, 8)])

        await running.wait_for(all_arrived)
        seen = {n: await tag(f"plc{n}", "v") for n in range(1, 8)}
        drivers = {d["name"]: d for d in await running.get("/v1/drivers")}
        gateway = await running.get("/v1/gateway")
        metrics = (await running.api.get("/metrics")).text
        status_text, _ = await tagway_status(str(running.api.base_url))

    restamped = seen[1]
    assert restamped is not None
    assert restamped["quality"] == "uncertain"
    assert "source clock implausible: timestamp 1970-01-" in restamped["reason"]
    assert "re-stamped with gateway time" in restamped["reason"]
    assert abs(restamped["ts"] - sent_us) < 10_000_000
    assert seen[2] is not None
    assert (seen[2]["quality"], seen[2]["ts"]) == ("good", now_s * 1_000_000)
    assert seen[3] is not None
    assert seen[3]["quality"] == "good"
    assert abs(seen[3]["ts"] - sent_us) < 10_000_000
    assert seen[4] is not None
    assert (seen[4]["quality"], seen[4]["ts"]) == ("good", Y2000_MS * 1000)
    assert seen[5] is not None
    assert seen[5]["quality"] == "bad"
    assert "source clock implausible: timestamp 2000-01-01T00:00:00+00:00" in seen[5]["reason"]
    assert seen[6] is not None
    assert (seen[6]["quality"], seen[6]["ts"]) == ("good", now_s * 1_000_000)
    ahead = seen[7]  # a future clock is restamped too, not dead-lettered by the decoder
    assert ahead is not None
    assert ahead["quality"] == "uncertain"
    assert abs(ahead["ts"] - sent_us) < 10_000_000

    faults = {name: d["counters"]["clock_faults"] for name, d in drivers.items()}
    assert faults == {"plant-mqtt": 2, "trusted-mqtt": 1, "strict-mqtt": 1}
    assert gateway["clock"]["synchronized"] is False
    assert gateway["clock"]["source"] == "sh"
    assert gateway["clock"]["unsynchronized_readings"] >= 6  # accepted, and counted
    assert "tagway_clock_synchronized 0.0" in metrics
    assert 'tagway_driver_clock_faults_total{device="plant-mqtt"} 2.0' in metrics
    broadcasts = next(m for m in metrics.splitlines() if m.startswith("tagway_mqtt_broker_broad"))
    assert float(broadcasts.split()[1]) >= 7  # the readings published into the embedded broker
    assert "tagway_mqtt_broker_undelivered_total 0.0" in metrics
    assert "tagway_mqtt_broker_backlog " in metrics
    clock_line = next(line for line in status_text.splitlines() if line.startswith("clock:"))
    assert clock_line.startswith("clock: NOT synchronized (from sh), ")
    assert "readings accepted while unsynchronized" in clock_line
    assert "2 readings with an implausible source clock" in status_text


async def test_without_the_command_the_kernel_clock_state_answers() -> None:
    sync = ClockSync(["/nonexistent/timedatectl"])
    answer = await sync.probe()
    assert sync.source == ("adjtimex" if answer is not None else "unknown")
    assert sync.checked_at is not None
    sync.synchronized = False
    sync.count(5)
    sync.synchronized = True
    sync.count(7)
    assert sync.unsynchronized_readings == 5


def test_the_default_window_is_the_clouds_and_bad_values_are_named() -> None:
    cloud = CloudSettings.model_fields
    assert ClockSection().max_age_days == cloud["max_age_days"].default
    assert ClockSection().max_ahead == cloud["max_future_skew_s"].default
    with pytest.raises(ValidationError, match="ts_unit 's' and timestamp_format"):
        JsonDecoder(ts_unit="s", timestamp_format="epoch_ms")  # type: ignore[arg-type]
    assert JsonDecoder(ts_unit="ns").epoch_format.value == "epoch_ns"
    text = (
        "gateway: {name: g}\ndevices:\n- protocol: opcua\n  name: p\n"
        "  endpoint: opc.tcp://h:4840\n  timestamp: atomic\n"
        "  tags: [{name: t, node_id: 'ns=2;s=t'}]\nclock:\n  clock_fault: maybe\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="x")
    assert str(info.value).splitlines() == [
        "x:6: devices[0].timestamp: must be 'source', 'server' or 'gateway' (got 'atomic')",
        "x:9: clock.clock_fault: must be 'restamp', 'keep' or 'bad' (got 'maybe')",
    ]
