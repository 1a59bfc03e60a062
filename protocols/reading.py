"""The `Reading`: one value of one tag of one device at one instant, with its quality.

Everything on the data path moves in `list[Reading]`: a Modbus poll yields one list, a pipeline
stage maps a list to a list. `Reading` is a `NamedTuple` because hundreds of thousands are built
per second: tuple construction is several times cheaper than a frozen dataclass, and it is just as
immutable and typed.

Timestamps are `int` microseconds since the Unix epoch, UTC, taken from the source when the source
has one (OPC UA SourceTimestamp) and from the gateway's clock otherwise.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, NamedTuple

Value = float | int | bool | str
"""What a tag can hold. `bool` is listed apart from `int` because coils and bits are booleans."""

MAX_NAME_CHARS: Final = 200
"""The longest device or tag name the cloud stores (`cloud.contract.wire.WireName`; a test keeps
the two equal, since protocols may not import the cloud). A longer name is refused at the edge."""

_US_PER_S: Final = 1_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# OPC UA Part 4, 7.39 StatusCode: the two most significant bits are the severity.
_OPCUA_SEVERITY_SHIFT: Final = 30
_OPCUA_SEVERITY_MASK: Final = 0b11


class Quality(StrEnum):
    """How far a value can be trusted; the three severities of OPC UA.

    `good`: the value is what the device reported. `uncertain`: the device answered but doubts
    the value (sensor out of range, last usable value, simulated substitute). `bad`: no usable
    value (timeout, Modbus exception, link down); the reading still records *that* it failed, so an
    outage is visible in the data rather than a silent gap.
    """

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"

    @property
    def code(self) -> int:
        """Compact wire code: 0 good, 1 uncertain, 2 bad."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Quality:
        """Inverse of `code`; raises `ValueError` naming the bad code."""
        try:
            return _BY_CODE[code]
        except (KeyError, TypeError):
            raise ValueError(f"unknown quality code {code!r}; expected 0, 1 or 2") from None

    @classmethod
    def from_opcua_status(cls, status_code: int) -> Quality:
        """Map an OPC UA StatusCode (the 32-bit value) to a quality by its severity bits.

        00 is Good, 01 Uncertain, 10 Bad; 11 is reserved and treated as Bad.
        """
        severity = (status_code >> _OPCUA_SEVERITY_SHIFT) & _OPCUA_SEVERITY_MASK
        if severity == 0:
            return cls.GOOD
        if severity == 1:
            return cls.UNCERTAIN
        return cls.BAD


_CODES: Final = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
_BY_CODE: Final = {code: quality for quality, code in _CODES.items()}


class Reading(NamedTuple):
    """One value of one tag of one device at one instant.

    Attributes:
        device: the gateway-local device name.
        tag: the tag name, unique within the device.
        ts: microseconds since the Unix epoch, UTC.
        value: the value; for a bad reading, the last value or a neutral placeholder (0).
        quality: good, uncertain or bad.
        unit: engineering unit, if known (e.g. ``"m3/h"``).
        simulated: True when the value comes from a simulated device; every screen and API shows it.
        reason: why the quality is not good (e.g. ``"modbus exception 02"``), else None.
    """

    device: str
    tag: str
    ts: int
    value: Value
    quality: Quality = Quality.GOOD
    unit: str | None = None
    simulated: bool = False
    reason: str | None = None

    @property
    def series(self) -> tuple[str, str]:
        """The (device, tag) pair that names this reading's time series."""
        return (self.device, self.tag)

    def is_numeric(self) -> bool:
        """True for int, float and bool values (bool counts as 0/1 for aggregates)."""
        return not isinstance(self.value, str)

    def with_quality(self, quality: Quality, reason: str | None = None) -> Reading:
        """A copy with another quality and reason."""
        return self._replace(quality=quality, reason=reason)


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a device or tag in the cloud, or None if it can."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"has {len(name)} characters, more than the cloud's limit of {MAX_NAME_CHARS}"
    if "\x00" in name:
        return "contains NUL"
    if not name.isascii():
        try:
            name.encode()
        except UnicodeEncodeError:
            return "is not valid Unicode (a lone surrogate)"
    return None


def now_us() -> int:
    """The current time as int microseconds since the Unix epoch, UTC."""
    return time.time_ns() // 1_000


def datetime_to_us(moment: datetime) -> int:
    """Convert an aware datetime to int microseconds since the epoch.

    Naive datetimes are refused: a timestamp without a zone is a bug waiting for daylight saving.
    """
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} has no time zone; expected UTC")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US_PER_S + delta.microseconds


def us_to_datetime(ts: int) -> datetime:
    """Convert int microseconds since the epoch to an aware UTC datetime."""
    return datetime.fromtimestamp(ts // _US_PER_S, tz=UTC).replace(microsecond=ts % _US_PER_S)


def seconds_to_us(seconds: float) -> int:
    """Convert float seconds since the epoch (as `time.time()` gives) to int microseconds."""
    if not math.isfinite(seconds):
        raise ValueError(f"timestamp {seconds!r} is not a finite number of seconds")
    return round(seconds * _US_PER_S)
