"""The polling fallback within the server's MaxNodesPerRead, and writes with the node's type."""

from __future__ import annotations

import pytest
from asyncua import Client, ua

from protocols.errors import CodecError, DriverConfigError, WriteError
from protocols.opcua import OpcUaDriver, OpcUaTag
from protocols.reading import Quality
from tests.protocols.opcua.conftest import Collector, device, pump_tag, running
from tests.protocols.opcua.plant_server import NAMESPACE, PlantServer

pytestmark = pytest.mark.integration

POLLED = 20
LIMIT = 7


async def test_polling_splits_reads_by_max_nodes_per_read() -> None:
    async with PlantServer(bulk=POLLED, max_nodes_per_read=LIMIT) as plant:
        tags = [
            OpcUaTag(name=f"v{i}", node_id=f"nsu={NAMESPACE};s=bulk.v{i:05d}", mode="poll")
            for i in range(POLLED)
        ]
        collector = Collector()
        async with running(OpcUaDriver(device(plant.url, tags)), collector) as driver:
            await collector.wait_for(lambda: len(collector.batches) >= 1)
            await plant.set_values(plant.bulk_nodes, [float(i) * 2 for i in range(POLLED)])
            await collector.wait_for(
                lambda: any(r.value == 38.0 for r in collector.good("v19")), within=10
            )
            assert driver.counters.errors == 0
            assert driver.counters.dropped == 0
        # The limit is real: one read of all 20 nodes is refused, so this test can fail.
        async with Client(plant.url) as client:
            with pytest.raises(ua.UaStatusCodeError, match="BadTooManyOperations"):
                await client.read_values([client.get_node(n) for n in plant.bulk_nodes])
        plant.read_sizes.pop()  # that refused read was ours, not the driver's

    assert plant.read_sizes, "the driver never read"
    assert max(plant.read_sizes) <= LIMIT  # the server would refuse more (BadTooManyOperations)
    assert LIMIT in plant.read_sizes  # and the driver did not split further than it had to
    # Each poll cycle is one batch with every tag, all good.
    for batch in collector.batches:
        assert sorted(r.tag for r in batch) == sorted(t.name for t in tags)
        assert all(r.quality is Quality.GOOD for r in batch)


async def test_writes_use_the_nodes_data_type(plant: PlantServer, collector: Collector) -> None:
    tags = [
        pump_tag("speed_sp", writable=True),
        pump_tag("running", writable=True),
        pump_tag("mode", writable=True),
        pump_tag("label", writable=True),
        pump_tag("flow"),
        OpcUaTag(name="flow_rw", node_id=f"nsu={NAMESPACE};s=pump1.flow", writable=True),
    ]
    async with running(OpcUaDriver(device(plant.url, tags)), collector) as driver:
        await collector.wait_for(lambda: bool(collector.good("speed_sp")))
        await driver.write("speed_sp", 1500)  # an int, written as the node's Double
        await driver.write("running", False)
        await driver.write("mode", 3)
        await driver.write("label", "P-101B")
        assert plant.server is not None
        written = {
            name: plant.server.read_attribute_value(plant.node(f"pump1.{name}")).Value
            for name in ("speed_sp", "running", "mode", "label")
        }
        assert written["speed_sp"] == ua.Variant(1500.0, ua.VariantType.Double)
        assert written["running"] == ua.Variant(False, ua.VariantType.Boolean)
        assert written["mode"] == ua.Variant(3, ua.VariantType.Int16)
        assert written["label"] == ua.Variant("P-101B", ua.VariantType.String)
        # The subscription reports the new setpoint like any other change.
        await collector.wait_for(lambda: 1500.0 in [r.value for r in collector.good("speed_sp")])

        with pytest.raises(CodecError, match="cannot be written as OPC UA Int16"):
            await driver.write("mode", 40_000)
        with pytest.raises(DriverConfigError, match=r"pump1.flow is not writable"):
            await driver.write("flow", 1.0)
        with pytest.raises(DriverConfigError, match=r"no tag 'nope'"):
            await driver.write("nope", 1.0)
        assert plant.server.read_attribute_value(plant.node("pump1.mode")).Value.Value == 3
        # The config says writable, the server says no (AccessLevel read-only): the server wins.
        with pytest.raises(
            WriteError, match=r"server refused 9.0: Bad(UserAccessDenied|NotWritable)"
        ):
            await driver.write("flow_rw", 9.0)
