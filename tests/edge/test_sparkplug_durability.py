"""kill -9 of `tagway run` with both northbound consumers of the outbox running: the HTTPS uplink
to a cloud on loopback and the Sparkplug B edge node to Mosquitto. Afterwards the cloud holds
every accepted reading exactly once, and the Sparkplug host has received every one of them; a
reading a host receives twice only ever comes the second time as history, republished after a
restart because the kill fell between its publish and its ack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from firmware_sim.plant import Plant
from tests.edge.cloud_harness import bootstrap, serve_cloud
from tests.edge.harness import running_agent
from tests.edge.test_durability import cloud_readings, pending_readings
from tests.edge.test_uplink import with_cloud
from tests.mosquitto import mosquitto
from tests.protocols.sparkplug import tahu

pytestmark = pytest.mark.integration
GROUP, NODE = "plant1", "gw-kill"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    with mosquitto(tmp_path) as port:
        yield port


class Host:
    """A Sparkplug host for the test: names every DDATA metric by the aliases of the births of
    its session and records (device, tag, ts in ms) with the historical flag."""

    def __init__(self) -> None:
        self.received: list[tuple[tuple[str, str, int], bool]] = []
        self._names: dict[str, dict[int, str]] = {}

    def take(self, topic: str, data: bytes) -> None:
        levels = topic.split("/")
        kind, device = levels[2], levels[4] if len(levels) == 5 else ""
        message = tahu.decode(data)
        if kind == "DBIRTH":
            self._names[device] = {m.alias: m.name for m in message.metrics}
        elif kind == "DDATA":
            names = self._names[device]
            self.received.extend(((device, names[m.alias], m.timestamp), m.is_historical)
                                 for m in message.metrics)  # fmt: skip

    def counts(self) -> Counter[tuple[str, str, int]]:
        return Counter(key for key, _ in self.received)


@contextlib.asynccontextmanager
async def host_on(port: int) -> AsyncIterator[Host]:
    host = Host()
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"spBv1.0/{GROUP}/#", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                host.take(str(message.topic), bytes(message.payload))  # type: ignore[arg-type]

        task = asyncio.create_task(collect())
        try:
            yield host
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def in_ms(readings: set[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
    return {(device, tag, ts // 1000) for device, tag, ts in readings}


@pytest.mark.parametrize(
    "kills", [pytest.param(1, id="once"), pytest.param(3, id="three", marks=pytest.mark.slow)]
)
async def test_kill_9_with_the_uplink_and_the_sparkplug_node_running(
    tmp_path: Path, plant: Plant, broker: int, kills: int
) -> None:
    rng = random.Random(21)
    async with serve_cloud(tmp_path / "cloud.db") as cloud, host_on(broker) as host:
        await bootstrap(cloud)
        config: dict[str, Any] = with_cloud(tmp_path, plant, cloud).model_dump(
            mode="json", exclude_none=True)  # fmt: skip
        config["outbox"]["lease_timeout"] = 1.0
        config["north"] = {"sparkplug": {"url": f"mqtt://127.0.0.1:{broker}", "group_id": GROUP,
                                         "edge_node_id": NODE, "reconnect_base_s": 0.1,
                                         "max_chunks": 2}}  # fmt: skip
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        state = Path(config["gateway"]["state_dir"])
        discovery = state / "local_api.json"
        for _ in range(kills):
            discovery.unlink(missing_ok=True)
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", "run", "--config", str(config_path),
                "--log-format", "json", stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            for _ in range(300):
                if await asyncio.to_thread(discovery.exists):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            os.kill(agent.pid, signal.SIGKILL)
            await agent.wait()
        accepted = cloud_readings(cloud) | pending_readings(state / "outbox.db")
        assert host.received, "the Sparkplug node published nothing before it was killed"

        # The same agent again, until both consumers have everything that was accepted.
        from edge.config import parse_config  # noqa: PLC0415

        again = parse_config(yaml.safe_dump(config), source="test")
        async with running_agent(again) as running:

            async def both_have_it() -> bool:
                got = {(f"{d}", t, ts) for d, t, ts in host.counts()}
                return accepted <= cloud_readings(cloud) and in_ms(accepted) <= got

            await running.wait_for(both_have_it, within=90)

    stored = cloud_readings(cloud)
    assert accepted <= stored
    counts = host.counts()
    assert in_ms(accepted) <= set(counts)
    # Repeats come only as history, republished after a restart.
    firsts: set[tuple[str, str, int]] = set()
    for key, historical in host.received:
        if key in firsts:
            assert historical, f"{key} came twice, the second time as live data"
        firsts.add(key)
