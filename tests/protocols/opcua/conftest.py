"""Fixtures for the OPC UA driver tests: a real asyncua server, a collecting sink, a runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from protocols.opcua import OpcUaDeviceConfig, OpcUaDriver, OpcUaTag
from protocols.reading import Quality, Reading
from tests.protocols.opcua.plant_server import NAMESPACE, PlantServer


@pytest.fixture(autouse=True)
def _quiet_asyncua(caplog: pytest.LogCaptureFixture) -> None:
    # asyncua logs every lost socket at WARNING/ERROR; the tests provoke those on purpose.
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)


class Collector:
    """A sink that keeps every batch, and lets a test wait for a condition on what arrived."""

    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []
        self._arrived = asyncio.Event()

    async def __call__(self, batch: list[Reading]) -> None:
        self.batches.append(batch)
        self._arrived.set()

    @property
    def readings(self) -> list[Reading]:
        return [r for batch in self.batches for r in batch]

    def of(self, tag: str) -> list[Reading]:
        return [r for r in self.readings if r.tag == tag]

    def good(self, tag: str) -> list[Reading]:
        return [r for r in self.of(tag) if r.quality is Quality.GOOD]

    async def wait_for(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until `condition()` holds, checking every 50 ms, failing after `within` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - counters have no event; polling them is the point
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(driver: OpcUaDriver, sink: Any) -> AsyncIterator[OpcUaDriver]:
    """Run the driver in a named task for the duration of the block."""
    async with driver:
        task = asyncio.create_task(driver.run(sink), name=f"test-run-{driver.name}")
        try:
            yield driver
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def pump_tag(tag: str, **extra: Any) -> OpcUaTag:
    """A tag of the fixture's pump1 device, addressed by namespace URI."""
    return OpcUaTag(name=tag, node_id=f"nsu={NAMESPACE};s=pump1.{tag}", **extra)


def device(url: str, tags: list[OpcUaTag], **extra: Any) -> OpcUaDeviceConfig:
    """A device config with test-friendly timings."""
    settings: dict[str, Any] = {
        "publishing_interval_ms": 100,
        "poll_interval_ms": 100,
        "request_timeout_s": 2.0,
        "keepalive_interval_s": 2.0,
        "reconnect_max_delay_s": 1.0,
        "simulated": True,
    }
    settings.update(extra)
    return OpcUaDeviceConfig(name="pump1", endpoint=url, tags=tuple(tags), **settings)


@pytest.fixture
async def plant() -> AsyncIterator[PlantServer]:
    async with PlantServer() as server:
        yield server


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture(scope="session")
def node_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PKI folder for the node-opcua server of every test: its key pair is made once (tens
    of seconds on a busy machine), each test's gateway certificate is its own."""
    return tmp_path_factory.mktemp("node-opcua-pki")
