"""Which clock stamps an OPC UA reading: per device, overridable per tag (source | server |
gateway), against a server whose source clock is off by decades."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from asyncua import ua

from protocols.opcua import OpcUaDriver
from tests.protocols.opcua.conftest import Collector, device, pump_tag, running
from tests.protocols.opcua.plant_server import PlantServer

pytestmark = pytest.mark.integration

Y2000 = datetime(2000, 1, 1, tzinfo=UTC)
Y2000_US = 946_684_800_000_000


async def test_the_device_clock_choice_and_a_tag_override(
    plant: PlantServer, collector: Collector
) -> None:
    tags = [
        pump_tag("flow"),  # follows the device: gateway
        pump_tag("speed_sp", timestamp="source"),
        pump_tag("mode", timestamp="server"),
        pump_tag("label", mode="poll", timestamp="source"),
    ]
    config = device(plant.url, tags, timestamp="gateway")
    async with running(OpcUaDriver(config), collector):
        await collector.wait_for(lambda: bool(collector.good("flow")))
        before_us = time.time_ns() // 1000
        await plant.set_value("pump1.flow", 50.0, ua.VariantType.Double, source_ts=Y2000)
        await plant.set_value("pump1.speed_sp", 900.0, ua.VariantType.Double, source_ts=Y2000)
        await plant.set_value("pump1.mode", 3, ua.VariantType.Int16, source_ts=Y2000)
        await plant.set_value("pump1.label", "P-9", ua.VariantType.String, source_ts=Y2000)
        await collector.wait_for(
            lambda: (
                50.0 in [r.value for r in collector.good("flow")]
                and 900.0 in [r.value for r in collector.good("speed_sp")]
                and 3 in [r.value for r in collector.good("mode")]
                and "P-9" in [r.value for r in collector.good("label")]
            )
        )

    def stamped(tag: str, value: object) -> int:
        return next(r.ts for r in collector.good(tag) if r.value == value)

    assert stamped("flow", 50.0) >= before_us  # gateway: the receive time
    assert stamped("speed_sp", 900.0) == Y2000_US  # source
    assert stamped("mode", 3) == Y2000_US  # server (the test server stamps both alike)
    assert stamped("label", "P-9") == Y2000_US  # polled, source
