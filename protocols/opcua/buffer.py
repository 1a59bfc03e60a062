"""The bounded hand-off between the network side of the driver and its sink.

asyncua's publish loop must never wait for our sink: while it waits, no PublishRequest is
outstanding and the server cannot send (Part 4, 5.13.5). So each publish response becomes one
batch put here without blocking, and one delivery task awaits the sink. The buffer is bounded in
*readings*; when a slow sink lets it fill, the oldest batches are evicted and every evicted reading
is counted in `DriverCounters.dropped` and logged. Nothing leaves without a count (asyncua's own
iterator queue drops silently, which is why it is not used).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from protocols.driver import DriverCounters
from protocols.reading import Reading

_log = logging.getLogger(__name__)


class ReadingBuffer:
    """A FIFO of reading batches, bounded by the total number of readings.

    Args:
        limit: the most readings held; older batches are evicted (and counted) beyond it.
        counters: where evictions are counted (`dropped`).
        device: the device name, for the log.
    """

    def __init__(self, *, limit: int, counters: DriverCounters, device: str) -> None:
        if limit < 1:
            raise ValueError(f"buffer limit must be positive, got {limit}")
        self.limit = limit
        self._counters = counters
        self._device = device
        self._batches: deque[list[Reading]] = deque()
        self._size = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        """The number of readings waiting."""
        return self._size

    def put(self, batch: list[Reading]) -> None:
        """Queue a batch without waiting; evict the oldest batches if over the limit.

        A single batch larger than the limit is still accepted whole: splitting one publish
        response would deliver half a snapshot, and the bound exists for backlogs, not batches.
        """
        if not batch:
            return
        self._batches.append(batch)
        self._size += len(batch)
        evicted = 0
        while self._size > self.limit and len(self._batches) > 1:
            old = self._batches.popleft()
            self._size -= len(old)
            evicted += len(old)
        if evicted:
            self._counters.dropped += evicted
            _log.warning(
                "%s: sink too slow, dropped %d oldest readings (buffer limit %d)",
                self._device,
                evicted,
                self.limit,
            )
        self._ready.set()

    async def get(self) -> list[Reading]:
        """Wait for and remove the oldest batch."""
        while not self._batches:
            self._ready.clear()
            await self._ready.wait()
        batch = self._batches.popleft()
        self._size -= len(batch)
        return batch
