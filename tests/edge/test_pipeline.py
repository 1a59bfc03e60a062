"""The pipeline as a unit, on an in-memory outbox: what is committed, what waits, what is dropped
and counted when the outbox refuses, and that alarms never wait behind telemetry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from edge.alarms import Alarm, AlarmEngine, AlarmEvent, AlarmKind, AlarmRule
from edge.chunk import decode_readings, decode_records
from edge.pipeline.derived import DerivedTags
from edge.pipeline.rbe import ReportByException
from edge.pipeline.runner import Pipeline
from protocols.reading import Reading
from store_forward import ChunkId, Lane
from tests.edge.memory_outbox import MemoryOutbox

T0 = 1_795_000_000_000_000


def readings(count: int, *, start: int = 0, tag: str = "flow") -> list[Reading]:
    return [Reading("pump1", tag, T0 + (start + i) * 1_000_000, float(start + i))
            for i in range(count)]  # fmt: skip


def pipeline(box: MemoryOutbox, **options: Any) -> Pipeline:
    rule = AlarmRule(name="flow_high", device="pump1", tag="flow", kind=AlarmKind.HIGH, limit=1e6)
    return Pipeline(outbox=box, rbe=ReportByException(), derived=DerivedTags([]), inference=None,
                    alarms=AlarmEngine([rule]), **options)  # fmt: skip


def committed(box: MemoryOutbox) -> list[Reading]:
    return [r for c in box.chunks[Lane.TELEMETRY] for r in decode_readings(c.payload)]


async def test_a_refused_flush_keeps_the_readings_and_the_next_one_commits_them_in_order() -> None:
    box = MemoryOutbox(refuse="disk full")
    stage = pipeline(box)
    await stage.accept(readings(3))
    assert await stage.flush() == 0
    assert (stage.buffered, stage.counters.flush_errors) == (3, 1)
    assert stage.counters.last_flush_error == "disk full"
    await stage.accept(readings(2, start=3))
    box.refuse = None
    assert await stage.flush() == 5
    assert [r.value for r in committed(box)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert (stage.buffered, stage.counters.committed, stage.counters.dropped) == (0, 5, 0)


async def test_a_full_buffer_drops_new_readings_and_counts_them() -> None:
    box = MemoryOutbox(refuse="quota reached, reject_new")
    stage = pipeline(box, max_buffered=10)
    await stage.accept(readings(8))
    await stage.flush()
    await stage.accept(readings(5, start=8))  # 8 + 5 > 10: the whole batch is refused
    assert (stage.buffered, stage.counters.dropped) == (8, 5)
    assert stage.counters.dropped_by_device == {"pump1": 5}
    box.refuse = None
    await stage.flush()
    counters = stage.counters
    assert counters.committed + counters.dropped == counters.received == 13
    assert [r.value for r in committed(box)] == [float(i) for i in range(8)]


async def test_a_flush_is_cut_into_chunks_of_chunk_readings() -> None:
    box = MemoryOutbox()
    stage = pipeline(box, chunk_readings=4)
    await stage.accept(readings(10))
    await stage.flush()
    assert [c.count for c in box.chunks[Lane.TELEMETRY]] == [4, 4, 2]
    assert len(committed(box)) == 10


async def test_an_alarm_is_committed_at_once_in_its_lane_and_persisted() -> None:
    box = MemoryOutbox()
    persisted: list[tuple[list[AlarmEvent], Mapping[str, Alarm]]] = []
    commits: list[int] = []

    async def on_alarms(events: list[AlarmEvent], states: Mapping[str, Alarm]) -> None:
        persisted.append((events, dict(states)))

    stage = pipeline(box, on_alarms=on_alarms, on_commit=lambda: commits.append(1))
    await stage.accept([Reading("pump1", "flow", T0, 2e6)])
    # Before any flush: the telemetry waits in the buffer, the alarm is already in the outbox.
    assert box.chunks[Lane.TELEMETRY] == []
    (chunk,) = box.chunks[Lane.ALARM]
    (record,) = decode_records(chunk.payload)
    assert (record["name"], record["state"], record["value"]) == ("flow_high", "active", 2e6)
    ((events, states),) = persisted
    assert events[0].rule == "flow_high"
    assert states["flow_high"].state.value == "active"
    assert commits == [1]  # the uplink is woken for the alarm
    await stage.flush()
    assert commits == [1, 1]


class SlowDisk(MemoryOutbox):
    """An outbox whose commits take a while, as a busy SD card's do."""

    def __init__(self) -> None:
        super().__init__()
        self.committing = asyncio.Event()

    async def append_many(self, items: Iterable[tuple[bytes, int, Lane]]) -> list[ChunkId]:
        self.committing.set()
        await asyncio.sleep(0.2)
        return await super().append_many(items)


async def test_stopping_during_a_flush_loses_nothing_and_counts_everything() -> None:
    """The agent stops the flusher by cancelling it; a flush in flight at that instant used to
    be abandoned with its readings (silent loss, issue 23)."""
    box = SlowDisk()
    stage = pipeline(box, flush_interval=0.01)
    flusher = asyncio.create_task(stage.run())
    await stage.accept(readings(3))
    await box.committing.wait()  # the first flush is on its way to disk
    await stage.accept(readings(2, start=3))
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    assert [r.value for r in committed(box)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert stage.counters.committed == stage.counters.received == 5
