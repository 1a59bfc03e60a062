"""The driver against an OPC UA server that is not asyncua's (node-opcua, started by the test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from protocols.opcua import OpcUaDriver
from protocols.opcua.config import OpcUaTag
from protocols.reading import Quality
from tests.protocols.opcua.conftest import Collector, device, running
from tests.protocols.opcua.node_server import node_opcua_server, node_tag_id
from tests.protocols.opcua.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


def _counts(collector: Collector) -> list[float]:
    return [float(r.value) for r in collector.of("counter") if r.quality is Quality.GOOD]


async def test_a_6_s_link_drop_resumes_the_session_and_keeps_the_values_queued_meanwhile(
    tmp_path: Path, node_pki: Path, collector: Collector
) -> None:
    tag = OpcUaTag(name="counter", node_id=node_tag_id("counter"), queue_size=200)
    async with node_opcua_server(node_pki) as server, TcpProxy(server.port) as proxy:
        config = device(proxy.url("/tagway-node"), [tag], session_timeout_s=120)
        config = config.model_copy(update={"simulated": False})
        async with running(OpcUaDriver(config), collector) as driver:
            await collector.wait_for(lambda: len(_counts(collector)) >= 3, within=30)
            subscription = driver.subscription_id

            proxy.blocked = True
            proxy.cut()
            await collector.wait_for(
                lambda: any(r.quality is Quality.BAD for r in collector.of("counter"))
            )
            last_before = _counts(collector)[-1]
            await asyncio.sleep(6)  # the server keeps counting, and queueing, meanwhile
            proxy.blocked = False

            await collector.wait_for(
                lambda: len([c for c in _counts(collector) if c > last_before]) > 40, within=30
            )
            assert driver.link.reconnects >= 1
            assert driver.session_resumed, driver.link.recovered_from
            assert driver.subscription_id == subscription  # resumed, not a new subscription
    after = [c for c in _counts(collector) if c > last_before]
    # Every count the server made during the 6 s drop arrived: no gap, in order.
    expected = [last_before + n for n in range(1, len(after) + 1)]
    assert after == expected
