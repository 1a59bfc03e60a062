"""The Sparkplug B edge node against Mosquitto, with a real outbox, checked by the independent
implementation (the Eclipse Tahu schema from `sparkplug-b-packets`) and by tagway's own host
decoder: births with bdSeq and aliases, DDATA by alias with seq 0-255, quality and units, the
primary host offline then online (backlog historical, oldest first, live data not held back),
rebirth on NCMD and on reconnect, DCMD refused with a reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.chunk import encode
from edge.north.config import SparkplugNorth
from edge.north.sparkplug_node import NodeInputs, NodeState, SparkplugNode
from protocols.reading import Quality, Reading
from protocols.sparkplug.host import HostSession
from protocols.sparkplug.payload import DataType
from store_forward import AsyncOutbox, Lane, OutboxSettings, Synchronous
from tests.mosquitto import mosquitto
from tests.protocols.sparkplug import tahu

pytestmark = pytest.mark.integration
GROUP, NODE, HOST = "plant1", "gw-01", "scada"
T = tahu.MetricDataType


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    with mosquitto(tmp_path) as port:
        yield port


@dataclass
class Seen:
    """Everything on spBv1.0/<GROUP>/#, decoded with Tahu's schema, in arrival order."""

    messages: list[tuple[str, Any]] = field(default_factory=list)
    raw: list[tuple[str, bytes]] = field(default_factory=list)

    def of(self, kind: str) -> list[Any]:
        return [m for t, m in self.messages if t.split("/")[2] == kind]

    async def until(self, check: Callable[[], bool], within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while not check():
            assert time.monotonic() < deadline, f"timed out; saw {[t for t, _ in self.messages]}"
            await asyncio.sleep(0.02)

    def data_values(self, alias: int) -> list[tuple[float, bool]]:
        """(value, is_historical) of every DDATA metric with `alias`, in order."""
        return [
            (_value(m), m.is_historical)
            for payload in self.of("DDATA")
            for m in payload.metrics
            if m.alias == alias
        ]


def _value(metric: Any) -> Any:
    return getattr(metric, metric.WhichOneof("value")) if metric.WhichOneof("value") else None


@contextlib.asynccontextmanager
async def watching(port: int, group: str = GROUP) -> AsyncIterator[Seen]:
    seen = Seen()
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"spBv1.0/{group}/#", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                data = bytes(message.payload)  # type: ignore[arg-type]
                seen.raw.append((str(message.topic), data))
                seen.messages.append((str(message.topic), tahu.decode(data)))

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def set_state(port: int, online: bool) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        body = json.dumps({"online": online, "timestamp": int(time.time() * 1000)})
        await client.publish(f"spBv1.0/STATE/{HOST}", body, qos=1, retain=True)


@dataclass
class Rig:
    outbox: AsyncOutbox
    node: SparkplugNode
    latest: dict[tuple[str, str], Reading]
    devices: dict[str, bool]

    async def append(self, *readings: Reading) -> None:
        await self.outbox.append(encode(list(readings)), count=len(readings), lane=Lane.TELEMETRY)


def reading(tag: str, value: float | str, *, ts: int | None = None, **kw: Any) -> Reading:
    return Reading("pump", tag, ts or time.time_ns() // 1000, value, **kw)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, port: int, **settings: Any) -> AsyncIterator[Rig]:
    config = SparkplugNorth.model_validate(
        {"url": f"mqtt://127.0.0.1:{port}", "group_id": GROUP, "edge_node_id": NODE,
         "reconnect_base_s": 0.1, "reconnect_cap_s": 0.3, **settings}
    )  # fmt: skip
    latest = {
        ("pump", "speed"): reading("speed", 3, unit="rpm"),
        ("pump", "temp"): reading("temp", 20.5, unit="degC"),
    }
    devices = {"pump": True}
    outbox_settings = OutboxSettings(consumers=("uplink", "sparkplug"),
                                     synchronous=Synchronous.NORMAL)  # fmt: skip
    async with AsyncOutbox(tmp_path / "outbox.db", outbox_settings) as outbox:
        inputs = NodeInputs(outbox=outbox, devices=lambda: devices, latest=lambda: latest,
                            datatypes={("pump", "speed"): DataType.INT16},
                            state_dir=tmp_path)  # fmt: skip
        node = SparkplugNode(settings=config, inputs=inputs)
        task = asyncio.create_task(node.run())
        try:
            yield Rig(outbox, node, latest, devices)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def aliases(dbirth: Any) -> dict[str, int]:
    return {m.name: m.alias for m in dbirth.metrics}


def seqs(seen: Seen) -> list[int]:
    return [m.seq for t, m in seen.messages if t.split("/")[2] not in ("NDEATH", "NCMD", "DCMD")]


async def test_births_and_data_as_the_reference_implementation_reads_them(
    tmp_path: Path, broker: int
) -> None:
    async with watching(broker) as seen, running(tmp_path, broker) as rig:
        await seen.until(lambda: bool(seen.of("DBIRTH")))
        nbirth, dbirth = seen.of("NBIRTH")[0], seen.of("DBIRTH")[0]
        assert nbirth.seq == 0
        node_metrics = {m.name: m for m in nbirth.metrics}
        assert node_metrics["bdSeq"].long_value == 0
        assert node_metrics["bdSeq"].datatype == T.Int64
        assert node_metrics["Node Control/Rebirth"].boolean_value is False
        born = {m.name: m for m in dbirth.metrics}
        assert born["speed"].datatype == T.Int16  # from the configured Modbus type
        assert born["speed"].int_value == 3
        assert born["temp"].datatype == T.Double
        props = dict(zip(born["temp"].properties.keys, born["temp"].properties.values,
                         strict=True))  # fmt: skip
        assert props["engUnit"].string_value == "degC"
        assert props["Quality"].int_value == 192
        assert len({m.alias for m in dbirth.metrics}) == 2

        await rig.append(reading("speed", 7), reading("temp", 21.25),
                         reading("temp", 0, quality=Quality.BAD))  # fmt: skip
        await seen.until(lambda: bool(seen.of("DDATA")))
        ddata = seen.of("DDATA")[0]
        assert all(not m.HasField("name") for m in ddata.metrics)  # by alias only
        by_alias = aliases(dbirth)
        assert seen.data_values(by_alias["speed"]) == [(7, False)]
        temps = [m for m in ddata.metrics if m.alias == by_alias["temp"]]
        assert [m.double_value for m in temps] == [21.25, 0.0]
        assert [list(m.properties.keys) for m in temps] == [[], ["Quality"]]
        assert temps[1].properties.values[0].int_value == 0  # bad
        assert seqs(seen) == list(range(len(seqs(seen))))
        assert rig.node.status.state is NodeState.ONLINE

    # tagway's own host decoder follows the same conversation.
    host = HostSession(group=GROUP)
    outcomes = [host.receive(topic, data, time.time_ns() // 1000) for topic, data in seen.raw]
    assert not [o.refused for o in outcomes if o.refused]
    assert not [o for o in outcomes if o.rebirths]
    readings = [r for o in outcomes for r in o.readings]
    assert ("gw-01/pump", "speed", 7) in {(r.device, r.tag, r.value) for r in readings}
    assert seen.of("NDEATH"), "no NDEATH when the node stopped"


async def test_seq_wraps_after_255(tmp_path: Path, broker: int) -> None:
    async with watching(broker) as seen, running(tmp_path, broker, max_chunks=1) as rig:
        await seen.until(lambda: bool(seen.of("DBIRTH")))
        for i in range(300):
            await rig.append(reading("speed", i % 100))
        await seen.until(lambda: len(seen.of("DDATA")) == 300)
    numbers = seqs(seen)
    assert numbers[:2] == [0, 1]
    assert numbers == [(i % 256) for i in range(len(numbers))]


async def test_primary_host_offline_then_online_nothing_lost_backlog_historical(
    tmp_path: Path, broker: int
) -> None:
    await set_state(broker, online=False)
    async with watching(broker) as seen, running(tmp_path, broker, primary_host_id=HOST,
                                                 max_chunks=2) as rig:  # fmt: skip
        await seen.until(lambda: rig.node.status.state is NodeState.WAITING_FOR_HOST)
        start = time.time_ns() // 1000
        backlog = list(range(40))
        for i in backlog:  # 40 chunks while the host is away
            await rig.append(reading("speed", i, ts=start + i))
        await asyncio.sleep(0.5)
        assert not seen.of("NBIRTH"), "published while the primary host was offline"
        # The uplink is another consumer: it has every chunk waiting, untouched.
        figures = (await rig.outbox.stats()).consumers
        assert figures["uplink"].pending_chunks == figures["sparkplug"].pending_chunks == 40

        await set_state(broker, online=True)
        await seen.until(lambda: bool(seen.of("DBIRTH")))
        await rig.append(reading("speed", 99))  # live, while the backlog drains
        alias = aliases(seen.of("DBIRTH")[0])["speed"]
        await seen.until(lambda: len(seen.data_values(alias)) == 41)
        values = seen.data_values(alias)
        history = [v for v, historical in values if historical]
        assert history == backlog, "backlog lost, repeated or out of order"
        assert [v for v, historical in values if not historical] == [99]
        # Live data went out before the backlog had finished.
        assert values.index((99, False)) < len(values) - 1

        await set_state(broker, online=False)  # the host goes away: NDEATH with this bdSeq
        await seen.until(lambda: bool(seen.of("NDEATH")))
        death = {m.name: m.long_value for m in seen.of("NDEATH")[0].metrics}
        assert death == {"bdSeq": 0}
        await set_state(broker, online=True)  # a new session: the next bdSeq
        await seen.until(lambda: len(seen.of("NBIRTH")) == 2)
        bd = {m.name: m.long_value for m in seen.of("NBIRTH")[1].metrics}["bdSeq"]
        assert bd == 1


async def test_rebirth_on_ncmd_and_dcmd_is_refused_with_a_reason(
    tmp_path: Path, broker: int
) -> None:
    async with watching(broker) as seen, running(tmp_path, broker) as rig:
        await seen.until(lambda: bool(seen.of("DBIRTH")))
        async with aiomqtt.Client("127.0.0.1", broker) as scada:
            command = tahu.payload(seq=None)
            tahu.add(command, "Node Control/Rebirth", None, T.Boolean, True)
            await scada.publish(f"spBv1.0/{GROUP}/NCMD/{NODE}", command.SerializeToString())
            await seen.until(lambda: len(seen.of("NBIRTH")) == 2)
            write = tahu.payload(seq=None)
            tahu.add(write, "speed", None, T.Int16, 5)
            await scada.publish(f"spBv1.0/{GROUP}/DCMD/{NODE}/pump", write.SerializeToString())
            await seen.until(lambda: rig.node.status.refused_commands == 1)
        rebirth = seen.of("NBIRTH")[1]
        assert rebirth.seq == 0
        assert {m.name: m.long_value for m in rebirth.metrics}["bdSeq"] == 0  # same session
        await seen.until(lambda: len(seen.of("DBIRTH")) == 2)
        assert "refused" in rig.node.status.refusals[0]
        assert "pump" in rig.node.status.refusals[0]


async def test_a_device_dies_and_is_born_again_with_its_driver(tmp_path: Path, broker: int) -> None:
    async with watching(broker) as seen, running(tmp_path, broker) as rig:
        await seen.until(lambda: bool(seen.of("DBIRTH")))
        rig.devices["pump"] = False
        await seen.until(lambda: bool(seen.of("DDEATH")))
        rig.devices["pump"] = True
        await seen.until(lambda: len(seen.of("DBIRTH")) == 2)
    topics = [t for t, _ in seen.messages]
    assert f"spBv1.0/{GROUP}/DDEATH/{NODE}/pump" in topics


async def test_a_new_tag_brings_a_rebirth_that_declares_it(tmp_path: Path, broker: int) -> None:
    async with watching(broker) as seen, running(tmp_path, broker) as rig:
        await seen.until(lambda: bool(seen.of("DBIRTH")))
        await rig.append(reading("flow", 12.5, unit="m3/h"))
        await seen.until(lambda: bool(seen.of("DDATA")))
        assert len(seen.of("NBIRTH")) == 2
        born = aliases(seen.of("DBIRTH")[-1])
        assert set(born) == {"speed", "temp", "flow"}
        assert seen.data_values(born["flow"]) == [(12.5, False)]


async def test_a_device_name_that_is_no_topic_level_is_published_under_a_safe_id(
    tmp_path: Path, broker: int
) -> None:
    async with watching(broker) as seen, running(tmp_path, broker) as rig:
        rig.devices["line/1+#"] = True
        await seen.until(lambda: bool(seen.of("DBIRTH")))
        await rig.append(Reading("line/1+#", "flow", time.time_ns() // 1000, 4.5))
        await seen.until(lambda: len(seen.of("DDATA")) == 1)
        assert f"spBv1.0/{GROUP}/DDATA/{NODE}/line_1__" in [t for t, _ in seen.messages]
        assert rig.node.status.state is NodeState.ONLINE  # the session survived it
