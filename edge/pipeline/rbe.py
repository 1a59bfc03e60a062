"""Report by exception: pass a reading only when it says something new.

A reading passes when it is the first of its series, when its quality differs from the last one
passed (quality changes always pass, so an outage and its end are never filtered), when a
non-numeric value changed, when a numeric value moved by more than the absolute or percent
deadband from the last *reported* value (not the last seen one, so a slow drift still gets through),
or when the series has been silent for `heartbeat` seconds (the heartbeat that tells the cloud an
unchanging value is still alive).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.reading import Quality, Reading, Value

_US_PER_S = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Deadband:
    """How much a tag must move before it is reported again.

    Args:
        deadband: report when |value - last reported| > deadband (0 disables).
        deadband_percent: report when the change exceeds this percentage of |last reported|
            (0 disables).
        heartbeat: report anyway after this many seconds without a report (0 disables).
        every_reading: report every reading, repeats included (no filtering at all).
    """

    deadband: float = 0.0
    deadband_percent: float = 0.0
    heartbeat: float = 0.0
    every_reading: bool = False

    @property
    def passes_everything(self) -> bool:
        """True when no filtering is configured: every reading is reported."""
        return self.deadband == 0 and self.deadband_percent == 0


class ReportByException:
    """The deadband stage. One instance holds the last reported value of every series.

    Args:
        deadbands: per (device, tag) settings; series not listed use `default`.
        default: the deadband for unlisted series (by default: report every reading).
    """

    def __init__(
        self,
        deadbands: dict[tuple[str, str], Deadband] | None = None,
        *,
        default: Deadband | None = None,
    ) -> None:
        self._deadbands = dict(deadbands or {})
        self._default = default or Deadband()
        self._last: dict[tuple[str, str], tuple[Value, Quality, int]] = {}
        self.suppressed = 0

    def __call__(self, readings: list[Reading]) -> list[Reading]:
        """Return the readings that pass, in their original order."""
        # The hot loop of the gateway: locals and tuples instead of attribute lookups and
        # objects, measured at about twice the speed of the straightforward version.
        if self._default.every_reading and not self._deadbands:
            return readings  # nothing to filter and nothing to remember
        passed: list[Reading] = []
        append = passed.append
        last_by_series = self._last
        lookup = last_by_series.get
        bands, default = self._deadbands, self._default
        suppressed = 0
        for reading in readings:
            key = (reading.device, reading.tag)
            last = lookup(key)
            if last is not None and reading.quality is last[1]:
                band = bands.get(key, default) if bands else default
                if not _moved(reading, last, band):
                    suppressed += 1
                    continue
            last_by_series[key] = (reading.value, reading.quality, reading.ts)
            append(reading)
        self.suppressed += suppressed
        return passed

    def reconfigure(self, deadbands: dict[tuple[str, str], Deadband], *, default: Deadband) -> None:
        """Use new settings from the next batch on; the last reported values are kept, so an
        unchanged tag is not sent again just because the config was reloaded."""
        self._deadbands = dict(deadbands)
        self._default = default

    def forget(self, device: str) -> None:
        """Drop the state of a device (removed or reconfigured), so its next reading passes."""
        for key in [k for k in self._last if k[0] == device]:
            del self._last[key]


def _moved(reading: Reading, last: tuple[Value, Quality, int], band: Deadband) -> bool:
    """True when a reading of unchanged quality says something new under `band`."""
    if band.every_reading:
        return True
    before, _, ts = last
    if band.heartbeat and reading.ts - ts >= band.heartbeat * _US_PER_S:
        return True
    value = reading.value
    if isinstance(value, str) or isinstance(before, str) or band.passes_everything:
        return value != before
    delta = abs(value - before)
    if band.deadband and delta > band.deadband:
        return True
    return bool(band.deadband_percent) and delta > abs(before) * band.deadband_percent / 100.0
