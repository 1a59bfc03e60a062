"""Local alarms: hysteresis, delays, rate, stale and bad quality; states survive a restart."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from edge.alarm_store import AlarmStore, AlarmStoreError
from edge.alarms import AlarmEngine, AlarmKind, AlarmRule, AlarmState, Transition, UnknownAlarm
from protocols.reading import Quality, Reading

S = 1_000_000


def vib(value: float, t: float, quality: Quality = Quality.GOOD) -> Reading:
    return Reading("pump1", "vibration", int(t * S), value, quality, "mm/s")


HIGH = AlarmRule(
    name="vib_high", device="pump1", tag="vibration", kind=AlarmKind.HIGH, limit=7.1, hysteresis=0.5
)


def transitions(engine: AlarmEngine, readings: list[Reading]) -> list[tuple[Transition, int]]:
    return [(e.transition, e.ts // S) for e in engine.evaluate(readings)]


def test_high_limit_with_hysteresis_does_not_chatter() -> None:
    engine = AlarmEngine([HIGH])
    values = [5.0, 7.5, 6.9, 7.3, 6.8, 6.5, 7.2]
    got = transitions(engine, [vib(v, t) for t, v in enumerate(values)])
    # raised at 7.5; 6.9 and 7.3 stay inside the hysteresis band; clears at 6.5 (< 7.1 - 0.5)
    assert got == [(Transition.RAISED, 1), (Transition.CLEARED, 5), (Transition.RAISED, 6)]
    assert engine.alarms["vib_high"].state is AlarmState.ACTIVE


def test_on_delay_ignores_a_spike_and_raises_a_sustained_excursion() -> None:
    rule = AlarmRule(
        name="vib_high", device="pump1", tag="vibration", kind=AlarmKind.HIGH, limit=7.1, on_delay=5
    )
    engine = AlarmEngine([rule])
    assert transitions(engine, [vib(9, 0), vib(5, 1)]) == []  # a 1 s spike
    assert transitions(engine, [vib(9, t) for t in range(2, 7)]) == []  # 4 s so far
    assert transitions(engine, [vib(9, 7)]) == [(Transition.RAISED, 7)]


def test_on_delay_elapses_on_the_clock_without_new_readings() -> None:
    rule = AlarmRule(
        name="vib_high", device="pump1", tag="vibration", kind=AlarmKind.HIGH, limit=7.1, on_delay=5
    )
    engine = AlarmEngine([rule])
    engine.evaluate([vib(9, 100)])
    assert engine.tick(103 * S) == []
    assert [e.transition for e in engine.tick(106 * S)] == [Transition.RAISED]


def test_low_limit_and_rate_of_change() -> None:
    low = AlarmRule(
        name="level_low", device="tank1", tag="level", kind=AlarmKind.LOW, limit=10, hysteresis=2
    )
    rate = AlarmRule(name="level_rate", device="tank1", tag="level", kind=AlarmKind.RATE, limit=1.0)
    engine = AlarmEngine([low, rate])
    lvl = [
        Reading("tank1", "level", t * S, v) for t, v in enumerate([50, 49.5, 45, 44.5, 9, 11, 13])
    ]
    events = [(e.rule, e.transition) for e in engine.evaluate(lvl)]
    assert events == [
        ("level_rate", Transition.RAISED),  # 49.5 -> 45 in 1 s
        ("level_rate", Transition.CLEARED),  # 45 -> 44.5
        ("level_low", Transition.RAISED),  # 9 < 10
        ("level_rate", Transition.RAISED),  # 44.5 -> 9 in 1 s
        ("level_low", Transition.CLEARED),  # 13 > 10 + 2; 11 was still inside the band
    ]
    assert engine.alarms["level_rate"].state is AlarmState.ACTIVE  # still rising 2/s


def test_bad_values_neither_raise_nor_clear_a_limit_alarm() -> None:
    engine = AlarmEngine([HIGH])
    engine.evaluate([vib(9, 0)])
    assert engine.evaluate([vib(0, 1, Quality.BAD)]) == []
    assert engine.alarms["vib_high"].state is AlarmState.ACTIVE


def test_bad_quality_for_n_seconds() -> None:
    rule = AlarmRule(
        name="link", device="pump1", tag="vibration", kind=AlarmKind.BAD_QUALITY, on_delay=10
    )
    engine = AlarmEngine([rule])
    got = transitions(engine, [vib(0, t, Quality.BAD) for t in range(0, 12, 2)] + [vib(3, 12)])
    assert got == [(Transition.RAISED, 10), (Transition.CLEARED, 12)]


def test_stale_data_raises_on_the_clock_and_clears_on_the_next_reading() -> None:
    rule = AlarmRule(
        name="vib_stale", device="pump1", tag="vibration", kind=AlarmKind.STALE, stale=30
    )
    engine = AlarmEngine([rule])
    engine.evaluate([vib(3, 0)])
    assert engine.tick(20 * S) == []
    assert [e.transition for e in engine.tick(31 * S)] == [Transition.RAISED]
    assert transitions(engine, [vib(3, 40)]) == [(Transition.CLEARED, 40)]


def test_acknowledge_paths() -> None:
    engine = AlarmEngine([HIGH])
    engine.evaluate([vib(9, 0)])
    ack = engine.acknowledge("vib_high", 1 * S)
    assert ack is not None
    assert ack.state is AlarmState.ACKED
    assert transitions(engine, [vib(1, 2)]) == [(Transition.CLEARED, 2)]
    assert engine.alarms["vib_high"].state is AlarmState.NORMAL  # acked then cleared: done
    engine.evaluate([vib(9, 3), vib(1, 4)])  # raised and cleared without an ack
    assert engine.alarms["vib_high"].state is AlarmState.CLEARED
    assert [a.rule for a in engine.active()] == ["vib_high"]  # still needs an operator
    assert engine.acknowledge("vib_high", 5 * S) is not None
    assert engine.active() == []
    assert engine.acknowledge("vib_high", 6 * S) is None
    with pytest.raises(UnknownAlarm):
        engine.acknowledge("nope", 0)


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(ValueError, match="used twice"):
        AlarmEngine([HIGH, HIGH])


def test_states_survive_a_restart(tmp_path: Path) -> None:
    store = AlarmStore(tmp_path / "alarms.db")
    engine = AlarmEngine([HIGH], store.load())
    engine.evaluate([vib(9.5, 0)])
    store.save(engine.alarms.values())
    store.close()

    store = AlarmStore(tmp_path / "alarms.db")
    restored = AlarmEngine([HIGH], store.load())
    alarm = restored.alarms["vib_high"]
    assert (alarm.state, alarm.raised_at, alarm.value) == (AlarmState.ACTIVE, 0, 9.5)
    assert restored.evaluate([vib(9.6, 1)]) == []  # already active: not raised twice
    store.close()


def test_a_file_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "alarms.db"
    AlarmStore(path).close()
    db = apsw.Connection(str(path))
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(AlarmStoreError, match=r"schema version 99.*newer release"):
        AlarmStore(path)


def test_a_warm_up_keeps_a_rule_quiet_after_the_series_first_reading() -> None:
    rule = AlarmRule(name="score_high", device="pump1", tag="vibration", kind=AlarmKind.HIGH,
                     limit=7.1, warm_up=30)  # fmt: skip
    engine = AlarmEngine([rule])
    assert transitions(engine, [vib(9.0, t) for t in range(100, 130)]) == []  # 30 s from 100
    assert transitions(engine, [vib(9.0, 130)]) == [(Transition.RAISED, 130)]
    # A reload keeps when the series was first seen: no second warm-up.
    engine = engine.with_rules([rule])
    assert transitions(engine, [vib(5.0, 131)]) == [(Transition.CLEARED, 131)]
