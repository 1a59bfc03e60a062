"""Recovery: a restarted server and a dropped link, with the outage visible as bad quality."""

from __future__ import annotations

import pytest
from asyncua import ua

from protocols.driver import ConnectionState
from protocols.errors import WriteError
from protocols.opcua import OpcUaDriver
from protocols.reading import Quality
from tests.protocols.opcua.conftest import Collector, device, pump_tag, running
from tests.protocols.opcua.plant_server import PlantServer
from tests.protocols.opcua.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


def _values_after_last_bad(collector: Collector, tag: str) -> list[object]:
    readings = collector.of(tag)
    last_bad = max(i for i, r in enumerate(readings) if r.quality is Quality.BAD)
    return [r.value for r in readings[last_bad + 1 :] if r.quality is Quality.GOOD]


async def test_server_restart_resubscribes_and_the_outage_is_bad_quality(
    plant: PlantServer, collector: Collector
) -> None:
    tags = [pump_tag("flow"), pump_tag("speed_sp", writable=True), pump_tag("label", mode="poll")]
    async with running(OpcUaDriver(device(plant.url, tags)), collector) as driver:
        await collector.wait_for(lambda: bool(collector.good("flow") and collector.good("label")))
        first_subscription = driver.subscription_id

        await plant.stop()
        await collector.wait_for(
            lambda: all(
                any(r.quality is Quality.BAD for r in collector.of(t))
                for t in ("flow", "speed_sp", "label")
            )
        )
        assert driver.link.state in {ConnectionState.BACKOFF, ConnectionState.CONNECTING}
        with pytest.raises(WriteError, match="not connected"):
            await driver.write("speed_sp", 1.0)
        await plant.start()  # same port, a fresh server: every session and subscription is gone

        await collector.wait_for(lambda: driver.link.reconnects == 1, within=20)
        await plant.set_value("pump1.flow", 55.0, ua.VariantType.Double)
        await collector.wait_for(
            lambda: 55.0 in _values_after_last_bad(collector, "flow"), within=10
        )
        await collector.wait_for(lambda: "P-101" in _values_after_last_bad(collector, "label"))
        assert driver.link.state is ConnectionState.CONNECTED
        assert driver.subscription_id is not None
        assert driver.counters.dropped == 0

    bad = [r for r in collector.readings if r.quality is Quality.BAD]
    assert {r.tag for r in bad} == {"flow", "speed_sp", "label"}
    assert all((r.reason or "").startswith("link down: ") for r in bad)
    # After the restart the new subscription sent the current value first, then the change.
    assert _values_after_last_bad(collector, "flow")[:2] == [12.5, 55.0]
    assert first_subscription is not None


async def test_link_drop_resumes_the_session_and_loses_no_change(
    plant: PlantServer, collector: Collector
) -> None:
    async with TcpProxy(plant.port) as proxy:
        config = device(proxy.url(), [pump_tag("flow", queue_size=10)])
        async with running(OpcUaDriver(config), collector) as driver:
            await collector.wait_for(lambda: bool(collector.good("flow")))
            subscription = driver.subscription_id

            proxy.blocked = True
            proxy.cut()
            await collector.wait_for(
                lambda: any(r.quality is Quality.BAD for r in collector.of("flow"))
            )
            for value in (1.0, 2.0, 3.0):  # changes while the gateway cannot hear the server
                await plant.set_value("pump1.flow", value, ua.VariantType.Double)
            proxy.blocked = False

            await collector.wait_for(
                lambda: _values_after_last_bad(collector, "flow")[-1:] == [3.0], within=20
            )
            await plant.set_value("pump1.flow", 4.0, ua.VariantType.Double)
            await collector.wait_for(lambda: 4.0 in _values_after_last_bad(collector, "flow"))
            assert driver.subscription_id == subscription  # the same subscription, not a new one
            assert driver.link.reconnects >= 1

    # Every change made during the outage arrived, once, in order; no re-sent initial value.
    assert _values_after_last_bad(collector, "flow") == [1.0, 2.0, 3.0, 4.0]


async def test_half_open_link_is_found_by_the_keep_alive_and_the_session_resumed(
    plant: PlantServer, collector: Collector
) -> None:
    async with TcpProxy(plant.port) as proxy:
        config = device(proxy.url(), [pump_tag("flow", queue_size=10)], keepalive_interval_s=1.0)
        async with running(OpcUaDriver(config), collector) as driver:
            await collector.wait_for(lambda: bool(collector.good("flow")))
            subscription = driver.subscription_id

            proxy.freeze()  # no FIN, no RST: only the keep-alive probe can notice
            await plant.set_value("pump1.flow", 61.0, ua.VariantType.Double)
            await collector.wait_for(
                lambda: any(r.quality is Quality.BAD for r in collector.of("flow")), within=15
            )
            link = driver.link  # it may already have reconnected (then the error is history)
            assert "TimeoutError" in (link.last_error or link.recovered_from or "")
            await plant.set_value("pump1.flow", 62.0, ua.VariantType.Double)

            await collector.wait_for(
                lambda: _values_after_last_bad(collector, "flow")[-1:] == [62.0], within=20
            )
            # The abandoned session was not closed (no CloseSession went out), so it resumed.
            assert driver.subscription_id == subscription
    assert _values_after_last_bad(collector, "flow") == [61.0, 62.0]
