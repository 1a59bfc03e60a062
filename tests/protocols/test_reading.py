"""The Reading record and the Quality mapping everything downstream relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.reading import (
    Quality,
    Reading,
    datetime_to_us,
    now_us,
    seconds_to_us,
    us_to_datetime,
)


@pytest.mark.parametrize(
    ("status_code", "expected"),
    [
        (0x00000000, Quality.GOOD),  # Good
        (0x00A20000, Quality.GOOD),  # Good_Clamped: severity bits still 00
        (0x40000000, Quality.UNCERTAIN),  # Uncertain
        (0x408F0000, Quality.UNCERTAIN),  # Uncertain_SensorNotAccurate
        (0x80000000, Quality.BAD),  # Bad
        (0x808A0000, Quality.BAD),  # Bad_NotConnected
        (0x800A0000, Quality.BAD),  # Bad_Timeout
        (0xC0000000, Quality.BAD),  # reserved severity 11 is treated as bad
    ],
)
def test_opcua_status_severity_maps_to_quality(status_code: int, expected: Quality) -> None:
    assert Quality.from_opcua_status(status_code) is expected


def test_quality_codes_round_trip_and_bad_code_is_named() -> None:
    for quality in Quality:
        assert Quality.from_code(quality.code) is quality
    with pytest.raises(ValueError, match="unknown quality code 7"):
        Quality.from_code(7)


def test_quality_serializes_as_its_plant_word() -> None:
    assert str(Quality.UNCERTAIN) == "uncertain"
    assert Quality("bad") is Quality.BAD


def test_reading_defaults_and_immutability() -> None:
    reading = Reading("pump1", "flow", 1_700_000_000_000_000, 12.5, unit="m3/h")
    assert reading.quality is Quality.GOOD
    assert reading.simulated is False
    assert reading.reason is None
    assert reading.series == ("pump1", "flow")
    with pytest.raises(AttributeError):
        reading.value = 3.0  # type: ignore[misc]


def test_bad_reading_carries_its_reason() -> None:
    reading = Reading("pump1", "flow", 1, 0.0).with_quality(Quality.BAD, "modbus exception 02")
    assert reading.quality is Quality.BAD
    assert reading.reason == "modbus exception 02"
    assert reading.value == 0.0


def test_is_numeric() -> None:
    assert Reading("d", "t", 0, True).is_numeric()
    assert Reading("d", "t", 0, 3).is_numeric()
    assert not Reading("d", "t", 0, "OPEN").is_numeric()


def test_timestamps_are_utc_microseconds() -> None:
    moment = datetime(2026, 11, 22, 5, 30, 0, 123456, tzinfo=UTC)
    ts = datetime_to_us(moment)
    assert ts == 1_795_325_400_123_456
    assert us_to_datetime(ts) == moment
    # another zone, same instant
    assert datetime_to_us(moment.astimezone(timezone(timedelta(hours=-5)))) == ts


def test_naive_datetime_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        datetime_to_us(datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


def test_now_us_is_an_int_near_the_wall_clock() -> None:
    ts = now_us()
    assert isinstance(ts, int)
    assert abs(ts - datetime_to_us(datetime.now(UTC))) < 5_000_000


def test_seconds_to_us_rejects_non_finite() -> None:
    assert seconds_to_us(1.5) == 1_500_000
    with pytest.raises(ValueError, match="not a finite"):
        seconds_to_us(float("nan"))


@given(st.integers(min_value=0, max_value=4_102_444_800_000_000))  # up to year 2100
def test_datetime_round_trip_is_exact(ts: int) -> None:
    assert datetime_to_us(us_to_datetime(ts)) == ts
