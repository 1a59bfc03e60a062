"""The bounded hand-off between the publish callback and the sink: nothing leaves uncounted."""

from __future__ import annotations

import asyncio

import pytest

from protocols.driver import DriverCounters
from protocols.opcua.buffer import ReadingBuffer
from protocols.reading import Reading


def _batch(start: int, size: int) -> list[Reading]:
    return [Reading("d", f"t{i}", i, float(i)) for i in range(start, start + size)]


async def test_batches_come_out_whole_and_in_order() -> None:
    buffer = ReadingBuffer(limit=100, counters=DriverCounters(), device="d")
    buffer.put(_batch(0, 3))
    buffer.put([])  # an empty publish (keep-alive) is not a batch
    buffer.put(_batch(3, 2))
    assert len(buffer) == 5
    assert [r.ts for r in await buffer.get()] == [0, 1, 2]
    assert [r.ts for r in await buffer.get()] == [3, 4]
    assert len(buffer) == 0


async def test_overflow_evicts_oldest_batches_and_counts_every_reading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = DriverCounters()
    buffer = ReadingBuffer(limit=10, counters=counters, device="boiler1")
    for start in range(0, 16, 4):  # 4 batches of 4 = 16 readings into a buffer of 10
        buffer.put(_batch(start, 4))
    assert counters.dropped == 8
    assert len(buffer) == 8
    assert [r.ts for r in await buffer.get()] == [8, 9, 10, 11]
    assert "boiler1: sink too slow, dropped 4 oldest readings" in caplog.text


async def test_one_oversized_batch_is_kept_whole() -> None:
    counters = DriverCounters()
    buffer = ReadingBuffer(limit=3, counters=counters, device="d")
    buffer.put(_batch(0, 2))
    buffer.put(_batch(2, 5))
    assert counters.dropped == 2
    assert len(await buffer.get()) == 5


async def test_get_waits_for_a_batch() -> None:
    buffer = ReadingBuffer(limit=10, counters=DriverCounters(), device="d")
    waiter = asyncio.create_task(buffer.get(), name="buffer-get")
    await asyncio.sleep(0)
    assert not waiter.done()
    buffer.put(_batch(0, 1))
    assert len(await asyncio.wait_for(waiter, 1)) == 1


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ReadingBuffer(limit=0, counters=DriverCounters(), device="d")
