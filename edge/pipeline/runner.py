"""The pipeline: drivers' batches in, committed chunks out.

Drivers call `accept(readings)` (the `Sink` of the driver contract). Each batch goes through the
stages in order: the latest-value cache sees everything, report-by-exception filters, derived tags
and model outputs are appended, alarms are evaluated. What survives is buffered and committed to
the outbox as one chunk every `flush_interval` or as soon as `chunk_readings` are waiting, so a
power cut loses at most one flush interval. Alarm transitions are committed to the alarm lane at
once: the plant's alarms never wait behind telemetry.

If the outbox refuses (disk full, quota with `reject_new`), the buffer is kept and retried at the
next flush; past `max_buffered` readings new batches are refused and counted as dropped, never
silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cloud.contract import AlarmRecord
from edge import chunk
from edge.alarms import Alarm, AlarmEngine, AlarmEvent, AlarmState
from edge.pipeline.derived import DerivedTags
from edge.pipeline.encodable import encodable
from edge.pipeline.latest import LatestValues
from edge.pipeline.rbe import ReportByException
from protocols.reading import Reading
from store_forward import Lane, OutboxError

if TYPE_CHECKING:  # onnxruntime is imported only when a model is configured
    from edge.inference.model import InferenceStage

log = logging.getLogger(__name__)


Listener = Callable[[list[Reading], list[AlarmEvent]], None]
AlarmsCommitted = Callable[[list[AlarmEvent], Mapping[str, Alarm]], Awaitable[None]]
"""Called with committed alarm transitions and the engine's states (to persist them)."""

_STATE_WORD = {  # the wire's words (cloud.contract.AlarmRecord)
    AlarmState.ACTIVE: "active",
    AlarmState.ACKED: "acknowledged",
    AlarmState.CLEARED: "cleared",
    AlarmState.NORMAL: "normal",
}


class ChunkSink(Protocol):
    """What the pipeline needs from the (async) outbox."""

    async def append_many(self, chunks: list[tuple[bytes, int, Lane]]) -> object: ...


@dataclass(slots=True)
class PipelineCounters:
    """What went through the pipeline since start."""

    received: int = 0  # readings from drivers
    suppressed: int = 0  # filtered by report-by-exception (by design, not lost)
    derived: int = 0  # computed by expressions and models
    committed: int = 0  # readings in chunks committed to the outbox: accepted
    committed_bytes: int = 0  # compressed payload bytes of those chunks
    chunks: int = 0
    alarm_events: int = 0
    dropped: int = 0  # refused because the outbox could not take them and the buffer was full
    dropped_by_device: dict[str, int] = field(default_factory=dict)  # `dropped`, by device
    flush_errors: int = 0
    last_flush_error: str | None = None


def alarm_record(event: AlarmEvent) -> AlarmRecord:
    """An alarm transition as the wire contract's alarm record."""
    value = float(event.value) if isinstance(event.value, float | int) else None
    return AlarmRecord(
        device=event.device, tag=event.tag, name=event.rule, kind="alarm",
        state=_STATE_WORD[event.state], ts=event.ts, severity=event.severity.value,
        message=event.message, value=value, transition=event.transition.value,
        acknowledged_by=event.acknowledged_by, comment=event.comment,
    )  # fmt: skip


class Pipeline:
    """Runs the stages and owns the flush buffer.

    Args:
        outbox: where chunks are committed.
        rbe: the report-by-exception stage.
        derived: the derived-tags stage.
        inference: the model stage (or None).
        alarms: the alarm engine.
        on_alarms: called with each batch of alarm events after they are committed, with the
            states of all alarms (to persist them).
        on_commit: called after each commit to the outbox (wakes the uplink).
        flush_interval: seconds between flushes (the durability window).
        chunk_readings: flush as soon as this many readings wait.
        max_buffered: readings held while the outbox refuses, before new ones are dropped.
    """

    def __init__(
        self,
        *,
        outbox: ChunkSink,
        rbe: ReportByException,
        derived: DerivedTags,
        inference: InferenceStage | None,
        alarms: AlarmEngine,
        on_alarms: AlarmsCommitted | None = None,
        on_commit: Callable[[], None] | None = None,
        flush_interval: float = 0.25,
        chunk_readings: int = 5_000,
        max_buffered: int = 1_000_000,
    ) -> None:
        self._outbox = outbox
        self._rbe = rbe
        self._derived = derived
        self._inference = inference
        self._alarms = alarms
        self._on_alarms = on_alarms
        self._on_commit = on_commit
        self.flush_interval = flush_interval
        self.chunk_readings = chunk_readings
        self.max_buffered = max_buffered
        self.latest = LatestValues()
        self.counters = PipelineCounters()
        self.listeners: list[Listener] = []
        self._buffer: list[Reading] = []
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()  # one flush at a time

    async def accept(self, readings: list[Reading]) -> None:
        """The driver sink: run the stages and buffer what passes."""
        if not readings:
            return
        counters = self.counters
        counters.received += len(readings)
        readings = encodable(readings)
        latest = self.latest
        latest.update_from(readings)
        passed = self._rbe(readings)
        counters.suppressed += len(readings) - len(passed)
        extended = self._derived(readings)
        if self._inference is not None:
            extended = await self._inference(extended)
        computed = extended[len(readings) :]
        extra = encodable(computed)
        if extra is not computed:  # an expression can make a value no chunk carries
            extended = readings + extra
        latest.update_from(extra)
        counters.derived += len(extra)
        events = self._alarms.evaluate(extended)
        self._buffer_readings(passed, extra)
        if events:
            await self._commit_alarms(events)
        if self.listeners:
            self._notify(readings + extra if extra else readings, events)

    def _buffer_readings(self, passed: list[Reading], extra: list[Reading]) -> None:
        count = len(passed) + len(extra)
        if len(self._buffer) + count > self.max_buffered:
            self._count_dropped(passed, extra)
            return
        self._buffer.extend(passed)
        self._buffer.extend(extra)
        if len(self._buffer) >= self.chunk_readings:
            self._full.set()

    def _count_dropped(self, passed: list[Reading], extra: list[Reading]) -> None:
        """Count refused readings in total and by device, so an overload names who lost what."""
        counters = self.counters
        by_device = counters.dropped_by_device
        for device, n in Counter(r.device for r in itertools.chain(passed, extra)).items():
            by_device[device] = by_device.get(device, 0) + n
        count = len(passed) + len(extra)
        counters.dropped += count
        log.error("outbox not accepting and buffer full: %d readings dropped", count)

    def _notify(self, readings: list[Reading], events: list[AlarmEvent]) -> None:
        for listener in self.listeners:
            listener(readings, events)

    async def tick_alarms(self, now_us: int) -> None:
        """Evaluate time-based alarms (stale data, elapsed on-delays)."""
        events = self._alarms.tick(now_us)
        if events:
            await self._commit_alarms(events)
            self._notify([], events)

    async def acknowledge(
        self, name: str, now_us: int, *, by: str | None = None, comment: str | None = None
    ) -> AlarmEvent | None:
        """Acknowledge an alarm (`by` whom, from where) and commit the transition."""
        event = self._alarms.acknowledge(name, now_us, by=by, comment=comment)
        if event is not None:
            await self._commit_alarms([event])
            self._notify([], [event])
        return event

    async def _commit_alarms(self, events: list[AlarmEvent]) -> None:
        payload = chunk.encode_records([alarm_record(e) for e in events])
        await self._outbox.append_many([(payload, len(events), Lane.ALARM)])
        self.counters.alarm_events += len(events)
        if self._on_commit is not None:
            self._on_commit()
        if self._on_alarms is not None:
            await self._on_alarms(events, self._alarms.alarms)

    async def run(self) -> None:
        """Flush every `flush_interval` (or sooner when a chunk is full) until cancelled."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.flush_interval)
                # Shielded: a stop (cancel) during a flush must not abandon the readings on their
                # way to disk. The flush keeps the lock until it is done, so the last flush below
                # waits for it and then commits the rest.
                await asyncio.shield(self.flush())
        finally:
            await asyncio.shield(self.flush())

    async def flush(self) -> int:
        """Commit what is buffered; returns the number of readings committed."""
        async with self._lock:
            self._full.clear()
            if not self._buffer:
                return 0
            pending, self._buffer = self._buffer, []
            items = [
                (chunk.encode(part), len(part), Lane.TELEMETRY)
                for part in _split(pending, self.chunk_readings)
            ]
            try:
                await self._outbox.append_many(items)
            except OutboxError as exc:
                self._buffer = pending + self._buffer  # keep them: retried next flush
                self.counters.flush_errors += 1
                self.counters.last_flush_error = str(exc)
                # An expected condition (disk full, quota): the message says it all, and a
                # traceback on every flush would bury the log.
                log.error("outbox refused a flush of %d readings: %s", len(pending), exc)  # noqa: TRY400
                return 0
            self.counters.committed += len(pending)
            self.counters.committed_bytes += sum(len(payload) for payload, _, _ in items)
            self.counters.chunks += len(items)
            if self._on_commit is not None:
                self._on_commit()
            return len(pending)

    @property
    def alarms(self) -> AlarmEngine:
        """The alarm engine (read it; change alarms only through `acknowledge`)."""
        return self._alarms

    @property
    def buffered(self) -> int:
        """Readings waiting for the next flush."""
        return len(self._buffer)

    @property
    def rbe(self) -> ReportByException:
        """The report-by-exception stage (reconfigured in place on a config reload)."""
        return self._rbe

    @property
    def derived(self) -> DerivedTags:
        """The derived-tags stage."""
        return self._derived

    def replace_stages(self, *, derived: DerivedTags, alarms: AlarmEngine) -> None:
        """Use new derived tags and alarm rules from the next batch on (a config reload)."""
        self._derived = derived
        self._alarms = alarms


def _split(readings: list[Reading], size: int) -> list[list[Reading]]:
    return [readings[i : i + size] for i in range(0, len(readings), size)]


def now_us() -> int:
    """Wall clock in µs (for alarm ticks)."""
    return time.time_ns() // 1_000
