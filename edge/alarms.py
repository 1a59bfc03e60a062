"""Local alarms: evaluated on the gateway, so the plant keeps its alarms when the uplink is down.

Rules: high and low limits with hysteresis, rate of change, stale data (no update for N s), and
bad quality lasting N s; a model-score alarm is a high limit on the model's output tag. Each rule
may have an on-delay: the condition must hold that long (by the readings' own timestamps) before
the alarm is raised, so a single spike does not page anyone.

States follow ISA-18.2 in small:

    NORMAL ──condition──▶ ACTIVE ──ack──▶ ACKED ──clear──▶ NORMAL
                            │                                ▲
                            └──clear──▶ CLEARED ──ack────────┘
                                         (returned to normal, still unacknowledged)

Every transition is an `AlarmEvent`; the agent writes them to the outbox's alarm lane and to the
local API's live stream, and `AlarmStore` keeps the states across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from edge.errors import EdgeError
from protocols.reading import Quality, Reading

_US_PER_S = 1_000_000


class AlarmKind(StrEnum):
    """What a rule watches."""

    HIGH = "high"
    LOW = "low"
    RATE = "rate"  # |change per second| above the limit
    STALE = "stale"  # no reading for `stale`
    BAD_QUALITY = "bad_quality"  # bad quality for `on_delay`


class Severity(StrEnum):
    """How urgent an alarm is, highest first."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class AlarmState(StrEnum):
    """Where an alarm is in its life (see the module docstring)."""

    NORMAL = "normal"
    ACTIVE = "active"
    ACKED = "acked"
    CLEARED = "cleared"


class Transition(StrEnum):
    """What just happened to an alarm."""

    RAISED = "raised"
    CLEARED = "cleared"
    ACKED = "acked"


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmRule:
    """One alarm definition.

    Args:
        name: unique id of the alarm (e.g. ``pump1.vibration_high``).
        device: the device whose tag is watched.
        tag: the watched tag.
        kind: what is watched.
        limit: the threshold (HIGH/LOW: the value; RATE: units per second; unused otherwise).
        hysteresis: how far back past the limit the value must go before the alarm clears.
        on_delay: how long the condition must hold before the alarm is raised.
        stale: STALE only: seconds without a reading.
        severity: how urgent.
        message: what the operator reads; defaults to a description of the rule.
        warm_up: seconds after the series' first reading (since the agent started) during
            which the rule neither raises nor clears: a model's score settles first.
    """

    name: str
    device: str
    tag: str
    kind: AlarmKind
    limit: float = 0.0
    hysteresis: float = 0.0
    on_delay: float = 0.0
    stale: float = 0.0
    severity: Severity = Severity.MEDIUM
    message: str = ""
    warm_up: float = 0.0

    def describe(self) -> str:
        """The message, or a generated one naming the tag and the limit."""
        if self.message:
            return self.message
        what = f"{self.device}.{self.tag}"
        return {
            AlarmKind.HIGH: f"{what} above {self.limit:g}",
            AlarmKind.LOW: f"{what} below {self.limit:g}",
            AlarmKind.RATE: f"{what} changing faster than {self.limit:g}/s",
            AlarmKind.STALE: f"{what} not updated for {self.stale:g} s",
            AlarmKind.BAD_QUALITY: f"{what} bad quality for {self.on_delay:g} s",
        }[self.kind]


@dataclass(frozen=True, slots=True)
class Alarm:
    """The current state of one alarm, with the times of its last transitions (µs, UTC)."""

    rule: str
    state: AlarmState = AlarmState.NORMAL
    raised_at: int | None = None
    acked_at: int | None = None
    cleared_at: int | None = None
    value: float | str | None = None


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One transition, as sent to the outbox alarm lane and the live stream."""

    rule: str
    device: str
    tag: str
    kind: AlarmKind
    severity: Severity
    transition: Transition
    state: AlarmState
    ts: int
    value: float | str | None
    message: str
    acknowledged_by: str | None = None  # with an ``acked`` transition: who, from where
    comment: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Shelf:
    """An alarm shelved by an operator: silenced (no notification, shown apart) until `until`.

    The alarm is still evaluated and its transitions still recorded and sent to the cloud, as
    ISA-18.2 asks of a shelved alarm; only the annunciation stops, and only for a stated time.
    """

    until: int  # µs, UTC
    by: str
    reason: str
    at: int  # when it was shelved, µs


@dataclass(frozen=True, slots=True, kw_only=True)
class ShelfAction:
    """One line of the shelving audit: who shelved or unshelved which alarm, when and why."""

    at: int
    rule: str
    action: str  # shelved | unshelved | expired
    by: str
    reason: str
    until: int | None = None


class UnknownAlarm(EdgeError, KeyError):
    """An acknowledgement named an alarm that does not exist."""


class AlarmEngine:
    """Evaluates the rules against each batch and against the clock.

    Args:
        rules: the alarm definitions; names must be unique.
        states: states restored from an `AlarmStore`, by rule name.
    """

    def __init__(self, rules: Iterable[AlarmRule], states: dict[str, Alarm] | None = None) -> None:
        self.rules: dict[str, AlarmRule] = {}
        self._by_series: dict[tuple[str, str], list[AlarmRule]] = {}
        for rule in rules:
            if rule.name in self.rules:
                raise ValueError(f"alarm name {rule.name!r} is used twice")
            self.rules[rule.name] = rule
            self._by_series.setdefault((rule.device, rule.tag), []).append(rule)
        restored = states or {}
        self.alarms = {n: restored.get(n, Alarm(n)) for n in self.rules}
        self._pending_since: dict[str, int] = {}
        self._last: dict[tuple[str, str], Reading] = {}
        self._first: dict[tuple[str, str], int] = {}  # first reading's ts, for warm-ups

    def with_rules(self, rules: Iterable[AlarmRule]) -> AlarmEngine:
        """An engine over `rules` that keeps what this one knows (a config reload): the state of
        each alarm by name (an active or unacknowledged alarm stays so), the last reading of each
        watched series and running on-delays. Alarms whose rule is gone are dropped."""
        engine = AlarmEngine(rules, self.alarms)
        engine._last = {k: r for k, r in self._last.items() if k in engine._by_series}
        engine._first = {k: t for k, t in self._first.items() if k in engine._by_series}
        engine._pending_since = {
            k: t for k, t in self._pending_since.items()
            if k.removeprefix("start:") in engine.rules
        }  # fmt: skip
        return engine

    def evaluate(self, readings: list[Reading]) -> list[AlarmEvent]:
        """Feed a batch; return the transitions it caused."""
        events: list[AlarmEvent] = []
        by_series = self._by_series
        if not by_series:
            return events
        for reading in readings:
            key = (reading.device, reading.tag)
            rules = by_series.get(key)
            if rules is None:
                continue
            previous = self._last.get(key)
            self._last[key] = reading
            first = self._first.setdefault(key, reading.ts)
            for rule in rules:
                if reading.ts - first < rule.warm_up * _US_PER_S:
                    continue
                condition = _condition(rule, reading, previous, self.alarms[rule.name])
                if condition is not None:
                    self._apply(rule, condition, reading.ts, reading.value, events)
        return events

    def tick(self, now_us: int) -> list[AlarmEvent]:
        """Evaluate what depends on time alone: stale data and on-delays that have elapsed."""
        events: list[AlarmEvent] = []
        for rule in self.rules.values():
            last = self._last.get((rule.device, rule.tag))
            if rule.kind is AlarmKind.STALE:
                # A series never seen since start counts from the first tick.
                seen = last.ts if last is not None else self._pending_since.setdefault(
                    "start:" + rule.name, now_us
                )  # fmt: skip
                stale = now_us - seen >= rule.stale * _US_PER_S
                self._apply(rule, stale, now_us, None if last is None else last.value, events)
            elif rule.name in self._pending_since and last is not None:
                self._apply(rule, True, now_us, last.value, events)
        return events

    def acknowledge(
        self, name: str, now_us: int, *, by: str | None = None, comment: str | None = None
    ) -> AlarmEvent | None:
        """Acknowledge an alarm (`by` whom, from where); returns the event, or None if there was
        nothing to acknowledge."""
        rule = self.rules.get(name)
        if rule is None:
            raise UnknownAlarm(name)
        alarm = self.alarms[name]
        if alarm.state is AlarmState.ACTIVE:
            new = replace(alarm, state=AlarmState.ACKED, acked_at=now_us)
        elif alarm.state is AlarmState.CLEARED:
            new = replace(alarm, state=AlarmState.NORMAL, acked_at=now_us)
        else:
            return None
        self.alarms[name] = new
        return replace(_event(rule, new, Transition.ACKED, now_us), acknowledged_by=by,
                       comment=comment)  # fmt: skip

    def raised_event(self, name: str) -> AlarmEvent | None:
        """The `raised` transition of an alarm that is active now (to announce it again)."""
        rule, alarm = self.rules.get(name), self.alarms.get(name)
        if rule is None or alarm is None or alarm.state is not AlarmState.ACTIVE:
            return None
        return _event(rule, alarm, Transition.RAISED, alarm.raised_at or 0)

    def active(self) -> list[Alarm]:
        """Alarms that need attention (active, acked-but-active, or cleared-unacked)."""
        return [a for a in self.alarms.values() if a.state is not AlarmState.NORMAL]

    def _apply(
        self,
        rule: AlarmRule,
        condition: bool,
        ts: int,
        value: float | str | bool | int | None,
        events: list[AlarmEvent],
    ) -> None:
        alarm = self.alarms[rule.name]
        value_out = value if isinstance(value, str) or value is None else float(value)
        raised = alarm.state in (AlarmState.ACTIVE, AlarmState.ACKED)
        if condition and not raised:
            since = self._pending_since.setdefault(rule.name, ts)
            if ts - since < rule.on_delay * _US_PER_S:
                return
            self._pending_since.pop(rule.name, None)
            new = replace(
                alarm, state=AlarmState.ACTIVE, raised_at=ts, acked_at=None, cleared_at=None,
                value=value_out,
            )  # fmt: skip
            self.alarms[rule.name] = new
            events.append(_event(rule, new, Transition.RAISED, ts))
        elif not condition:
            self._pending_since.pop(rule.name, None)
            if raised:
                state = AlarmState.NORMAL if alarm.state is AlarmState.ACKED else AlarmState.CLEARED
                new = replace(alarm, state=state, cleared_at=ts, value=value_out)
                self.alarms[rule.name] = new
                events.append(_event(rule, new, Transition.CLEARED, ts))


def _condition(
    rule: AlarmRule, reading: Reading, previous: Reading | None, alarm: Alarm
) -> bool | None:
    """True/False for the rule's condition on this reading; None when it says nothing."""
    raised = alarm.state in (AlarmState.ACTIVE, AlarmState.ACKED)
    if rule.kind is AlarmKind.BAD_QUALITY:
        return reading.quality is Quality.BAD
    if rule.kind is AlarmKind.STALE:
        return False  # a fresh reading ends staleness; tick() raises it
    if reading.quality is Quality.BAD or isinstance(reading.value, str):
        return None  # a value we cannot trust neither raises nor clears a limit alarm
    value = float(reading.value)
    if rule.kind is AlarmKind.HIGH:
        return value > (rule.limit - rule.hysteresis if raised else rule.limit)
    if rule.kind is AlarmKind.LOW:
        return value < (rule.limit + rule.hysteresis if raised else rule.limit)
    rate = _rate(value, reading.ts, previous)
    return None if rate is None else rate > (rule.limit - rule.hysteresis if raised else rule.limit)


def _rate(value: float, ts: int, previous: Reading | None) -> float | None:
    """|change per second| since the previous reading, if there is a usable one."""
    if previous is None or isinstance(previous.value, str) or ts <= previous.ts:
        return None
    return abs(value - float(previous.value)) * _US_PER_S / (ts - previous.ts)


def _event(rule: AlarmRule, alarm: Alarm, transition: Transition, ts: int) -> AlarmEvent:
    return AlarmEvent(
        rule=rule.name, device=rule.device, tag=rule.tag, kind=rule.kind, severity=rule.severity,
        transition=transition, state=alarm.state, ts=ts, value=alarm.value,
        message=rule.describe(),
    )  # fmt: skip
