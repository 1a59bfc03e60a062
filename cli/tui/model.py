"""What the TUI knows about the agent: the local API's answers (the models of
`edge.api_contract`, the one definition the agent serves) and the pure logic that turns successive
answers into what a plant engineer reads (rates, histories, ages).

Nothing here does I/O; the client (`cli.tui.client`) fills it, the screens (`cli.tui.panes`) read
it. The answer models ignore fields they do not know, so a newer agent does not break an older TUI.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from edge.api_contract import (
    Alarm,
    AlarmChange,
    DeadLetters,
    Driver,
    Gateway,
    Health,
    Outbox,
    TagValue,
    Uplink,
    Value,
)

HISTORY_POINTS = 120  # per tag: two minutes at one reading a second, a screen's width of sparkline


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one poll of the local API returned."""

    gateway: Gateway
    health: Health
    drivers: tuple[Driver, ...]
    tags: tuple[TagValue, ...]
    alarms: tuple[Alarm, ...]
    outbox: Outbox
    uplink: Uplink
    dead_letters: DeadLetters

    @property
    def simulated(self) -> bool:
        """True when any device (or the gateway config) is simulated."""
        return (
            self.gateway.simulated
            or any(d.simulated for d in self.drivers)
            or any(t.simulated for t in self.tags)
        )


@dataclass(frozen=True, slots=True)
class ReadingsEvent:
    """Readings from the live stream."""

    readings: tuple[TagValue, ...]


@dataclass(frozen=True, slots=True)
class AlarmsEvent:
    """Alarm transitions from the live stream."""

    changes: tuple[AlarmChange, ...]


StreamEvent = ReadingsEvent | AlarmsEvent


class RateMeter:
    """Per-key rates from monotonic counters sampled over time (readings/s from `readings`).

    A counter that goes backwards (a restarted driver starts from 0) gives no rate for that step
    rather than a negative one.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}

    def sample(self, now: float, counts: Mapping[str, int]) -> None:
        """Record the counters as read at `now` (seconds, monotonic)."""
        for key, count in counts.items():
            previous = self._last.get(key)
            if previous is not None and now > previous[0] and count >= previous[1]:
                self._rates[key] = (count - previous[1]) / (now - previous[0])
            elif previous is not None and count < previous[1]:
                self._rates.pop(key, None)
            self._last[key] = (now, count)

    def rate(self, key: str) -> float | None:
        """The latest rate of `key` per second, or None before two samples."""
        return self._rates.get(key)

    def total(self, keys: Iterable[str]) -> float | None:
        """The sum of the known rates of `keys`, or None when none is known yet."""
        known = [self._rates[k] for k in keys if k in self._rates]
        return sum(known) if known else None


class TagHistory:
    """Bounded, time-ordered recent values per tag, fed by the stream and by polls alike.

    Both sources may deliver the same reading; a timestamp already held is ignored, and a late
    reading is inserted in order, so the sparkline never shows a value twice or out of order.
    """

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self.points = points
        self._series: dict[str, list[tuple[int, float]]] = {}

    def add(self, readings: Iterable[TagValue]) -> None:
        """Keep the numeric, not-bad readings; text values have no sparkline."""
        for r in readings:
            if r.quality == "bad" or isinstance(r.value, str) or r.value is None:
                continue
            series = self._series.setdefault(r.key, [])
            point = (r.ts, float(r.value))
            at = bisect.bisect_left(series, point)
            if at < len(series) and series[at][0] == r.ts:
                continue
            if len(series) >= self.points and at == 0:
                continue  # older than everything a full window keeps
            series.insert(at, point)
            if len(series) > self.points:
                del series[0]

    def values(self, key: str) -> list[float]:
        """The recent values of `device.tag`, oldest first."""
        return [v for _, v in self._series.get(key, ())]

    def series(self, key: str) -> list[tuple[int, float]]:
        """The recent (µs, value) points of `device.tag`, oldest first."""
        return list(self._series.get(key, ()))


Connection = Literal["connecting", "connected", "not running", "error"]


@dataclass
class AgentView:
    """The TUI's state: the last snapshot plus what was derived from the ones before it.

    Args:
        where: how the agent is reached, for messages (a URL or a discovery file).
    """

    where: str
    snapshot: Snapshot | None = None
    connection: Connection = "connecting"
    problem: str | None = None
    last_ok: float | None = None
    rates: RateMeter = field(default_factory=RateMeter)
    history: TagHistory = field(default_factory=TagHistory)
    recent: deque[AlarmChange] = field(default_factory=lambda: deque(maxlen=50))

    def apply(self, snapshot: Snapshot, *, wall: float, mono: float) -> None:
        """Take a fresh poll: rates from counter deltas, tag values into the histories."""
        self.snapshot = snapshot
        self.connection = "connected"
        self.problem = None
        self.last_ok = wall
        self.rates.sample(mono, {d.name: d.counter("readings") for d in snapshot.drivers})
        self.history.add(snapshot.tags)

    def apply_event(self, event: StreamEvent) -> None:
        """Take a live stream event."""
        if isinstance(event, ReadingsEvent):
            self.history.add(event.readings)
        else:
            self.recent.extendleft(event.changes)

    def lost(self, reason: str, *, running: bool) -> None:
        """The agent did not answer (`running=False`) or answered with an error."""
        self.connection = "error" if running else "not running"
        self.problem = reason

    @property
    def simulated(self) -> bool:
        """Whether the last known state had any simulated device."""
        return self.snapshot is not None and self.snapshot.simulated

    def poll_rate(self) -> float | None:
        """Readings per second over all drivers."""
        if self.snapshot is None:
            return None
        return self.rates.total(d.name for d in self.snapshot.drivers)


SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}


def alarm_order(alarm: Alarm) -> tuple[int, int, int, str]:
    """Active first, then unacknowledged, then by severity, then by name."""
    return (0 if alarm.active else 1, 0 if alarm.needs_ack else 1,
            SEVERITY_ORDER.get(alarm.severity, 9), alarm.name)  # fmt: skip


def matches(tag: TagValue, text: str) -> bool:
    """Whether every word typed appears in `device.tag` or the unit (case-insensitive)."""
    haystack = f"{tag.device}.{tag.tag} {tag.unit or ''}".lower()
    return all(word in haystack for word in text.lower().split())


def format_value(value: Value) -> str:
    """A value as a plant engineer reads it: 4 significant digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.6g}"
    return str(value)


def format_age(seconds: float | None) -> str:
    """`0.4s`, `12s`, `3m05s`, `2h10m`, or `-`."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def format_bytes(count: int) -> str:
    """Bytes in binary units: `512 B`, `10.2 KiB`, `64.0 MiB`."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop always returns


def format_rate(rate: float | None) -> str:
    """Readings per second, `-` before the second poll."""
    return "-" if rate is None else f"{rate:.1f}/s"
