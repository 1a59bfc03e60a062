"""Report by exception: what reaches the outbox, and what is (rightly) not sent."""

from __future__ import annotations

from edge.pipeline.rbe import Deadband, ReportByException
from protocols.reading import Quality, Reading

S = 1_000_000


def r(value: float | str, t: float, quality: Quality = Quality.GOOD, tag: str = "flow") -> Reading:
    return Reading("pump1", tag, int(t * S), value, quality)


def test_absolute_deadband_measures_from_the_last_reported_value() -> None:
    rbe = ReportByException({("pump1", "flow"): Deadband(deadband=1.0)})
    out = rbe([r(10.0, 0), r(10.6, 1), r(11.2, 2), r(11.9, 3), r(10.0, 4)])
    # 10.6 and 11.9 are within 1.0 of the last *reported* 10.0 / 11.2; a slow drift is not lost.
    assert [x.value for x in out] == [10.0, 11.2, 10.0]
    assert rbe.suppressed == 2


def test_percent_deadband() -> None:
    rbe = ReportByException(default=Deadband(deadband_percent=5.0))
    out = rbe([r(100.0, 0), r(104.0, 1), r(106.0, 2), r(110.0, 3)])
    assert [x.value for x in out] == [100.0, 106.0]  # 110 is within 5 % of 106


def test_quality_change_always_passes_even_inside_the_deadband() -> None:
    rbe = ReportByException(default=Deadband(deadband=100.0))
    out = rbe([r(1.0, 0), r(1.0, 1, Quality.BAD), r(1.0, 2, Quality.BAD), r(1.0, 3)])
    assert [x.quality for x in out] == [Quality.GOOD, Quality.BAD, Quality.GOOD]


def test_heartbeat_reports_an_unchanging_value() -> None:
    rbe = ReportByException(default=Deadband(deadband=1.0, heartbeat=60))
    out = rbe([r(5.0, t) for t in range(0, 181, 10)])
    assert [x.ts // S for x in out] == [0, 60, 120, 180]


def test_without_a_deadband_only_repeats_are_dropped() -> None:
    rbe = ReportByException()
    out = rbe(
        [r(1.0, 0), r(1.0, 1), r(1.5, 2), r("OPEN", 3, tag="valve"), r("OPEN", 4, tag="valve")]
    )
    assert [(x.tag, x.value) for x in out] == [("flow", 1.0), ("flow", 1.5), ("valve", "OPEN")]


def test_series_are_independent_and_forget_resets_a_device() -> None:
    rbe = ReportByException(default=Deadband(deadband=10))
    assert len(rbe([r(1.0, 0, tag="a"), r(1.0, 0, tag="b")])) == 2
    assert rbe([r(2.0, 1, tag="a")]) == []
    rbe.forget("pump1")
    assert len(rbe([r(2.0, 2, tag="a")])) == 1


def test_every_reading_mode_passes_repeats() -> None:
    rbe = ReportByException(default=Deadband(every_reading=True))
    assert len(rbe([r(1.0, 0), r(1.0, 1), r(1.0, 2)])) == 3
    assert rbe.suppressed == 0
