"""The ISA-95 asset path of a device and the plain-JSON UNS publisher against Mosquitto: the latest
value of each tag, retained, at <path>/<device>/<tag>, published again only when it changes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.assets import AssetPath, uns_topic
from edge.config import ConfigError, parse_config
from edge.north.config import UnsNorth
from edge.north.uns import UnsPublisher
from protocols.reading import Quality, Reading
from tests.mosquitto import mosquitto


def test_a_path_has_one_to_five_levels_without_wildcards() -> None:
    path = AssetPath.parse("acme/plant-a/packaging/line2/filler1")
    assert path.named()["line"] == "line2"
    assert uns_topic("{path}/{device}/{tag}", path, "pump1", "flow") == (
        "acme/plant-a/packaging/line2/filler1/pump1/flow"
    )
    assert uns_topic("uns/{site}/{device}/{tag}", AssetPath.parse("acme/b"), "p", "t") == (
        "uns/b/p/t"
    )
    assert uns_topic("{path}/{device}/{tag}", None, "pump1", "flow") == "pump1/flow"
    for bad in ("", "a/b/c/d/e/f", "a//b", "a/+/b", "a/#"):
        with pytest.raises(ValueError, match="path"):
            AssetPath.parse(bad)


def test_the_config_checks_the_path_and_the_template() -> None:
    device = ("{protocol: modbus, name: p1, host: 127.0.0.1, port: 5020, path: PATH, "
              "tags: [{name: a, table: holding_register, address: 0, type: int16}]}")  # fmt: skip
    ok = parse_config(f"gateway: {{name: g}}\ndevices: [{device.replace('PATH', 'acme/a')}]",
                      source="t")  # fmt: skip
    assert ok.devices[0].path == "acme/a"
    with pytest.raises(ConfigError, match="path"):
        parse_config(f"gateway: {{name: g}}\ndevices: [{device.replace('PATH', 'a/+')}]",
                     source="t")  # fmt: skip
    with pytest.raises(ConfigError, match="topic_template"):
        parse_config("gateway: {name: g}\nnorth: {uns: {url: 'mqtt://h:1', "
                     "topic_template: '{path}/{nope}'}}", source="t")  # fmt: skip


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    with mosquitto(tmp_path) as port:
        yield port


async def retained(port: int, topic_filter: str, count: int) -> dict[str, Any]:
    """What a client subscribing now receives: the retained state."""
    out: dict[str, Any] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic_filter, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                out[str(message.topic)] = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                if len(out) >= count:
                    break
    return out


@pytest.mark.integration
async def test_latest_values_are_retained_at_their_uns_path_and_sent_by_exception(
    broker: int,
) -> None:
    now = time.time_ns() // 1000
    latest = {
        ("pump1", "flow"): Reading("pump1", "flow", now, 12.5, unit="m3/h"),
        ("pump1", "running"): Reading("pump1", "running", now, True),
        ("tank9", "level"): Reading("tank9", "level", now, 0, Quality.BAD, reason="timeout"),
    }
    settings = UnsNorth(url=f"mqtt://127.0.0.1:{broker}", interval_s=0.05)
    paths = {"pump1": AssetPath.parse("acme/plant-a/pack/line2")}
    publisher = UnsPublisher(settings=settings, latest=lambda: list(latest.values()), paths=paths)
    task = asyncio.create_task(publisher.run())
    try:
        seen = await retained(broker, "#", 3)
        assert seen["acme/plant-a/pack/line2/pump1/flow"]["value"] == 12.5
        assert seen["acme/plant-a/pack/line2/pump1/flow"]["unit"] == "m3/h"
        assert seen["acme/plant-a/pack/line2/pump1/running"]["value"] is True
        assert seen["tank9/level"] == seen["tank9/level"] | {"quality": "bad", "reason": "timeout"}
        await asyncio.sleep(0.3)
        assert publisher.status.published == 3  # nothing changed: nothing sent again
        latest[("pump1", "flow")] = Reading("pump1", "flow", now + 1, 13.0, unit="m3/h")
        latest[("pump1", "running")] = Reading("pump1", "running", now + 1, True)  # same value
        deadline = time.monotonic() + 5
        while publisher.status.published < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert publisher.status.published == 4
        after = await retained(broker, "acme/#", 2)
        assert after["acme/plant-a/pack/line2/pump1/flow"]["value"] == 13.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
