"""Polling: the fallback for tags in ``poll`` mode (servers with poor subscription support).

Each cycle reads every poll tag with as few Read calls as the server's MaxNodesPerRead allows
(Part 5, 6.3.11: a server may refuse a larger request with BadTooManyOperations) and hands the
whole cycle to the buffer as one batch. A cycle that runs past the next start is an overrun: it is
counted, and the schedule restarts from now instead of firing a burst of catch-up reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from protocols.driver import DriverCounters
from protocols.errors import DeviceError
from protocols.opcua.buffer import ReadingBuffer
from protocols.opcua.codec import to_reading
from protocols.opcua.config import OpcUaDeviceConfig
from protocols.opcua.session import ServerSession, chunks
from protocols.opcua.subscription import ItemState
from protocols.reading import Quality, Reading, now_us

_log = logging.getLogger(__name__)


class Poller:
    """Reads the poll-mode tags of one device every `poll_interval_ms`.

    Args:
        config: the device config.
        buffer: where each cycle's batch goes.
        counters: the driver's counters (errors, overruns).
    """

    def __init__(
        self, *, config: OpcUaDeviceConfig, buffer: ReadingBuffer, counters: DriverCounters
    ) -> None:
        self._config = config
        self._buffer = buffer
        self._counters = counters
        self.items: list[ItemState] = [ItemState(t) for t in config.tags if t.mode == "poll"]

    async def run(self, session: ServerSession) -> None:
        """Poll until cancelled; raises `ConnectError`/`DeviceTimeout` when the link fails."""
        items = [item for item in self.items if item.node is not None]
        if not items:
            return
        interval = self._config.poll_interval_ms / 1000
        next_start = time.monotonic()
        while True:
            self._buffer.put(await self.read_cycle(session, items))
            next_start += interval
            delay = next_start - time.monotonic()
            if delay < 0:
                self._counters.overruns += 1
                next_start = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    async def read_cycle(self, session: ServerSession, items: list[ItemState]) -> list[Reading]:
        """One cycle: reads split by MaxNodesPerRead, one reading per tag."""
        size = session.limits.chunk(session.limits.max_nodes_per_read)
        batch: list[Reading] = []
        for part in chunks(items, size):
            nodes = [item.node for item in part if item.node is not None]
            try:
                values = await session.read(nodes)
            except DeviceError as exc:
                # A Bad service result (e.g. BadTooManyOperations) fails only this request.
                self._counters.errors += 1
                batch.extend(self._bad(part, str(exc)))
                continue
            received = now_us()
            name, simulated = self._config.name, self._config.simulated
            stamp = self._config.timestamp
            for item, dv in zip(part, values, strict=True):
                batch.append(
                    to_reading(
                        name,
                        item.tag.name,
                        dv,
                        received,
                        item.unit,
                        simulated,
                        item.tag.timestamp or stamp,
                    )
                )
        return batch

    def _bad(self, items: Sequence[ItemState], reason: str) -> list[Reading]:
        ts = now_us()
        return [
            Reading(
                self._config.name,
                item.tag.name,
                ts,
                0,
                Quality.BAD,
                item.unit,
                self._config.simulated,
                reason,
            )
            for item in items
        ]
