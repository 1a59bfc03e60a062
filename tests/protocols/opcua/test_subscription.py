"""Subscriptions against a real asyncua server: no loss at 2,000 items, batching, deadbands."""

from __future__ import annotations

import asyncio

import pytest
from asyncua import ua

from protocols.opcua import OpcUaDriver, OpcUaTag
from protocols.opcua.subscription import _item_request
from protocols.reading import Quality, Reading
from tests.protocols.opcua.conftest import Collector, device, eventually, pump_tag, running
from tests.protocols.opcua.plant_server import NAMESPACE, PlantServer

pytestmark = pytest.mark.integration

ITEMS = 2000
ROUNDS = 5


async def test_every_change_of_2000_monitored_items_arrives_in_batches() -> None:
    async with PlantServer(bulk=ITEMS) as plant:
        tags = [
            OpcUaTag(
                name=f"v{i:05d}", node_id=f"nsu={NAMESPACE};s=bulk.v{i:05d}", queue_size=ROUNDS
            )
            for i in range(ITEMS)
        ]
        collector = Collector()
        config = device(plant.url, tags, read_engineering_units=False)
        async with running(OpcUaDriver(config), collector) as driver:
            await collector.wait_for(lambda: len(collector.readings) >= ITEMS)  # initial values
            initial_batches = len(collector.batches)
            written = 0
            for round_ in range(1, ROUNDS + 1):
                values = [round_ * 100_000.0 + i for i in range(ITEMS)]
                await plant.set_values(plant.bulk_nodes, values)
                written += len(values)
            await collector.wait_for(lambda: len(collector.readings) >= ITEMS + written, within=30)

            by_tag: dict[str, list[float]] = {}
            for reading in collector.readings[ITEMS:]:
                assert reading.quality is Quality.GOOD
                by_tag.setdefault(reading.tag, []).append(float(reading.value))
            assert len(collector.readings) == ITEMS + written  # nothing lost, nothing doubled
            assert len(by_tag) == ITEMS
            for i in range(ITEMS):
                assert by_tag[f"v{i:05d}"] == [r * 100_000.0 + i for r in range(1, ROUNDS + 1)]
            assert driver.counters.dropped == 0
            assert driver.counters.readings == ITEMS + written
            assert driver.decoded["general"] == 0  # every publish took the fast decoder
            # One sink call per publish response, not one per item: hundreds of readings a call.
            assert written / (len(collector.batches) - initial_batches) >= 100
            assert max(len(b) for b in collector.batches) >= ITEMS


async def test_absolute_deadband_filters_small_changes(
    plant: PlantServer, collector: Collector
) -> None:
    tags = [
        pump_tag("flow", deadband_type="absolute", deadband_value=1.0),
        OpcUaTag(name="flow_all", node_id=f"nsu={NAMESPACE};s=pump1.flow"),
    ]
    async with running(OpcUaDriver(device(plant.url, tags)), collector):
        await collector.wait_for(lambda: len(collector.good("flow_all")) >= 1)
        # 12.5 initial; 12.9 and 14.5 are within 1.0 of the value before them, 14.0 and 20 are not.
        for value in (12.9, 14.0, 14.5, 20.0):
            await plant.set_value("pump1.flow", value, ua.VariantType.Double)
        await collector.wait_for(lambda: len(collector.good("flow_all")) >= 5)
        await collector.wait_for(lambda: 20.0 in [r.value for r in collector.good("flow")])
    assert [r.value for r in collector.good("flow_all")] == [12.5, 12.9, 14.0, 14.5, 20.0]
    assert [r.value for r in collector.good("flow")] == [12.5, 14.0, 20.0]


def test_monitored_item_request_carries_sampling_queue_and_deadband() -> None:
    tag = OpcUaTag(
        name="level",
        node_id="ns=3;s=tank1.level",
        sampling_interval_ms=250,
        queue_size=20,
        deadband_type="percent",
        deadband_value=2.5,
    )
    request = _item_request(7, ua.NodeId("tank1.level", 3), tag)
    params = request.RequestedParameters
    assert (
        params.ClientHandle,
        params.SamplingInterval,
        params.QueueSize,
        params.DiscardOldest,
    ) == (7, 250, 20, True)
    assert params.Filter == ua.DataChangeFilter(
        Trigger=ua.DataChangeTrigger.StatusValue,
        DeadbandType=ua.DeadbandType.Percent,
        DeadbandValue=2.5,
    )
    plain = _item_request(0, ua.NodeId(5), OpcUaTag(name="x", node_id="i=5"))
    assert not isinstance(plain.RequestedParameters.Filter, ua.DataChangeFilter)  # null filter
    assert plain.RequestedParameters.SamplingInterval == -1.0  # the publishing interval


async def test_connect_learns_units_and_reports_tags_the_server_lacks(
    plant: PlantServer, collector: Collector
) -> None:
    tags = [
        pump_tag("flow"),
        pump_tag("speed_sp", unit="1/min"),
        pump_tag("mode"),
        OpcUaTag(name="ghost", node_id=f"nsu={NAMESPACE};s=pump1.ghost"),
        OpcUaTag(name="elsewhere", node_id="nsu=urn:not-served;s=x"),
    ]
    async with running(OpcUaDriver(device(plant.url, tags)), collector) as driver:
        await collector.wait_for(
            lambda: all(collector.of(t) for t in ("flow", "speed_sp", "mode", "ghost", "elsewhere"))
        )
        await plant.set_value("pump1.flow", 33.0, ua.VariantType.Double)
        await collector.wait_for(lambda: 33.0 in [r.value for r in collector.good("flow")])
        assert driver.counters.errors >= 2
    # Units: the node's EngineeringUnits property, unless the config overrides it.
    assert collector.good("flow")[0].unit == "m³/h"
    assert collector.good("speed_sp")[0].unit == "1/min"
    assert collector.good("mode")[0].unit is None
    assert all(r.simulated for r in collector.readings)
    # A missing node or namespace is a bad reading with the reason; the other tags still flow.
    ghost = collector.of("ghost")[0]
    assert (ghost.quality, ghost.reason) == (Quality.BAD, "opcua BadNodeIdUnknown (0x80340000)")
    elsewhere = collector.of("elsewhere")[0]
    assert elsewhere.quality is Quality.BAD
    assert "namespace 'urn:not-served' is not served" in (elsewhere.reason or "")


async def test_a_slow_sink_makes_the_buffer_drop_and_every_drop_is_counted() -> None:
    items, rounds = 100, 10
    async with PlantServer(bulk=items) as plant:
        tags = [
            OpcUaTag(
                name=f"v{i:05d}", node_id=f"nsu={NAMESPACE};s=bulk.v{i:05d}", queue_size=rounds
            )
            for i in range(items)
        ]
        delivered: list[int] = []

        async def slow_sink(batch: list[Reading]) -> None:
            delivered.append(len(batch))
            await asyncio.sleep(0.4)  # far slower than one publish per 100 ms

        config = device(plant.url, tags, read_engineering_units=False, max_queued_readings=150)
        async with running(OpcUaDriver(config), slow_sink) as driver:
            await eventually(lambda: sum(delivered) >= items)
            for round_ in range(1, rounds + 1):
                await plant.set_values(
                    plant.bulk_nodes, [round_ * 1000.0 + i for i in range(items)]
                )
                await asyncio.sleep(0.12)
            produced = items * (rounds + 1)  # initial values and every change
            counters = driver.counters
            await eventually(lambda: counters.readings + counters.dropped >= produced, within=20)
            assert driver.counters.dropped > 0
            assert driver.counters.readings == sum(delivered)
            assert driver.counters.readings + driver.counters.dropped == produced
