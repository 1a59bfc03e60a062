"""A server that refuses the gateway's certificate (the gateway trusts the server): one clear,
current reason on every tag and in the driver state, backoff, and no crash loop. The server is
node-opcua with automatic trust of client certificates off, started by the test."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest

from protocols.driver import ConnectionState
from protocols.opcua import OpcUaDriver
from protocols.opcua.config import OpcUaTag
from protocols.reading import Quality
from tests.protocols.opcua.conftest import Collector, device
from tests.protocols.opcua.node_server import node_opcua_server, node_tag_id
from tests.protocols.opcua.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

WATCH_S = 10.0


async def test_a_refused_gateway_certificate_is_one_clear_reason_with_backoff_and_no_crash(
    tmp_path: Path, node_pki: Path, collector: Collector
) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    certificate = tmp_path / "gateway" / "cert.der"
    tags = [
        OpcUaTag(name="counter", node_id=node_tag_id("counter")),
        OpcUaTag(name="label", node_id=node_tag_id("label"), mode="poll"),
    ]
    drivers: list[OpcUaDriver] = []
    crashes: list[BaseException] = []
    async with (
        node_opcua_server(node_pki, trust_clients=False) as server,
        TcpProxy(server.port) as proxy,
    ):
        # The gateway trusts the server: only the other direction is missing.
        shutil.copy(server.pki / "server" / "own" / "certs" / "certificate.pem", trusted)
        url = proxy.url("/tagway-node")
        config = device(
            url, tags, security_policy="Basic256Sha256", security_mode="SignAndEncrypt",
            application_uri="urn:tagway:test-gateway", certificate=certificate,
            private_key=tmp_path / "gateway" / "key.pem", trust_dir=trusted,
            reconnect_max_delay_s=4.0, simulated=False,
        )  # fmt: skip

        async def supervise() -> None:
            # What the agent's supervisor does: count a crash, restart.
            while True:
                driver = OpcUaDriver(config)
                drivers.append(driver)
                try:
                    async with driver:
                        await driver.run(collector)
                except Exception as exc:  # noqa: BLE001 - counted: the test asserts there are none
                    crashes.append(exc)
                    await asyncio.sleep(0.1)

        task = asyncio.create_task(supervise(), name="supervise-refused-certificate")
        try:
            await asyncio.sleep(WATCH_S)
            state = drivers[-1].link.state
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert crashes == [], f"the driver crashed {len(crashes)} times: {crashes[:3]!r}"
    assert len(drivers) == 1
    expected = (
        f"the server at {url} did not accept this gateway's certificate {certificate}; "
        "add it to the server's trusted certificates"
    )
    driver = drivers[0]
    assert state in {ConnectionState.BACKOFF, ConnectionState.CONNECTING}
    assert expected in (driver.link.last_error or ""), driver.link.last_error
    for tag in ("counter", "label"):
        last = collector.of(tag)[-1]
        assert last.quality is Quality.BAD
        assert expected in (last.reason or ""), last.reason
    assert all(expected in (r.reason or "") for r in collector.readings), {
        r.reason for r in collector.readings
    }  # never the old, wrong "not trusted" reason
    # Backoff (0.5 s doubling up to 4 s): a handful of attempts, not a loop.
    attempts = driver.counters.errors
    assert 2 <= proxy.accepted <= 24, (proxy.accepted, attempts)
