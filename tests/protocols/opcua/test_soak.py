"""Long scenarios (``-m slow``): repeated restarts, and link cuts under a steady stream of changes.

The default run has the bounded variants: one restart and one link drop (test_reconnect.py) and
2,000 items without loss (test_subscription.py).
"""

from __future__ import annotations

import asyncio

import pytest

from protocols.opcua import OpcUaDriver, OpcUaTag
from protocols.reading import Quality
from tests.protocols.opcua.conftest import Collector, device, running
from tests.protocols.opcua.plant_server import NAMESPACE, PlantServer
from tests.protocols.opcua.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _bulk_tags(count: int, queue_size: int) -> list[OpcUaTag]:
    return [
        OpcUaTag(
            name=f"v{i:05d}", node_id=f"nsu={NAMESPACE};s=bulk.v{i:05d}", queue_size=queue_size
        )
        for i in range(count)
    ]


async def test_five_server_restarts_each_recover() -> None:
    items = 200
    async with PlantServer(bulk=items) as plant:
        collector = Collector()
        config = device(plant.url, _bulk_tags(items, 2), read_engineering_units=False)
        async with running(OpcUaDriver(config), collector) as driver:
            await collector.wait_for(lambda: len(collector.readings) >= items)
            for cycle in range(1, 6):
                await plant.restart()
                await collector.wait_for(lambda c=cycle: driver.link.reconnects == c, within=30)
                marker = 1_000_000.0 * cycle
                await plant.set_values(plant.bulk_nodes, [marker + i for i in range(items)])
                await collector.wait_for(
                    lambda m=marker: (
                        {r.value for r in collector.readings[-3 * items :]}
                        >= {m + i for i in range(items)}
                    ),
                    within=30,
                )
            assert driver.counters.dropped == 0
    bad_tags = {r.tag for r in collector.readings if r.quality is Quality.BAD}
    assert len(bad_tags) == items  # every outage was visible for every tag


async def test_link_cuts_under_steady_changes_lose_nothing() -> None:
    items, rounds = 500, 30
    async with PlantServer(bulk=items) as plant, TcpProxy(plant.port) as proxy:
        collector = Collector()
        config = device(proxy.url(), _bulk_tags(items, rounds), read_engineering_units=False)
        async with running(OpcUaDriver(config), collector) as driver:
            await collector.wait_for(lambda: len(collector.readings) >= items)
            for round_ in range(1, rounds + 1):
                if round_ % 10 == 5:
                    proxy.blocked = True
                    proxy.cut()
                if round_ % 10 == 8:
                    proxy.blocked = False
                await plant.set_values(
                    plant.bulk_nodes, [round_ * 10_000.0 + i for i in range(items)]
                )
                await asyncio.sleep(0.15)  # a publishing interval between rounds
            expected = {
                (f"v{i:05d}", r * 10_000.0 + i) for i in range(items) for r in range(1, rounds + 1)
            }
            await collector.wait_for(
                lambda: (
                    {(r.tag, r.value) for r in collector.readings if r.quality is Quality.GOOD}
                    >= expected
                ),
                within=60,
            )
            assert driver.counters.dropped == 0
            assert driver.link.reconnects >= 3
    good = [
        (r.tag, r.value)
        for r in collector.readings
        if r.quality is Quality.GOOD and r.value >= 10_000.0
    ]
    assert len(good) == len(expected)  # each change exactly once: none lost, none doubled
