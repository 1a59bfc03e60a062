"""Time the way plants need it: implausible source clocks, and the gateway's own clock.

    check = ClockCheck(window, ClockFault.RESTAMP)     # one per driver (the supervisor's)
    readings = check(readings, now_us())               # before the pipeline sees them

A device whose clock reset to 2000, or that sends seconds where milliseconds are meant, stamps
readings decades away; the cloud would refuse them. A reading whose timestamp lies outside the
plausible window (more than `max_ahead` ahead of the gateway clock, or older than the cloud's
maximum age) is handled by the device's `clock_fault` policy:

- ``restamp`` (default): stamped with gateway time, quality `uncertain`, the reason names the
  source time;
- ``keep``: kept as it is (the cloud refuses it one by one, never the whole batch);
- ``bad``: stamped with gateway time, quality `bad`, with the reason.

Every such reading is counted per device (`ClockCheck.faults`).

`ClockSync` tells whether the gateway's own clock is synchronized: the configured command
(default ``timedatectl show -p NTPSynchronized --value``, systemd-timedated's answer), else the
kernel's `adjtimex` state, else unknown. Readings accepted while it is not synchronized are still
accepted, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from operator import itemgetter
from typing import Final

from protocols.reading import Quality, Reading

_log = logging.getLogger(__name__)
_TS: Final = itemgetter(2)  # Reading.ts
_US_PER_S: Final = 1_000_000
_TIME_ERROR: Final = 5  # adjtimex(2): the clock is not synchronized
_ADJTIMEX_BUFFER: Final = 512  # larger than struct timex on every Linux architecture


class ClockFault(StrEnum):
    """What happens to a reading whose timestamp is outside the plausible window."""

    RESTAMP = "restamp"
    KEEP = "keep"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class ClockWindow:
    """The plausible window around the gateway clock, in microseconds."""

    max_ahead_us: int
    max_age_us: int


class ClockCheck:
    """The plausibility check of one device's timestamps, with its count.

    Args:
        window: how far ahead and how far back a timestamp may be.
        policy: what happens to a reading outside it.
    """

    __slots__ = ("faults", "policy", "window")

    def __init__(self, window: ClockWindow, policy: ClockFault) -> None:
        self.window = window
        self.policy = policy
        self.faults = 0
        """Readings found outside the window since start (whatever the policy did)."""

    def __call__(self, readings: list[Reading], now_us: int) -> list[Reading]:
        """`readings`, with those outside the window handled by the policy."""
        if not readings:
            return readings
        oldest, newest = now_us - self.window.max_age_us, now_us + self.window.max_ahead_us
        stamps = list(map(_TS, readings))
        if min(stamps) >= oldest and max(stamps) <= newest:
            return readings  # the common case: one pass, nothing rebuilt
        out: list[Reading] = []
        for reading, ts in zip(readings, stamps, strict=True):
            if oldest <= ts <= newest:
                out.append(reading)
                continue
            self.faults += 1
            if self.policy is ClockFault.KEEP:
                out.append(reading)
                continue
            quality = Quality.BAD if self.policy is ClockFault.BAD else Quality.UNCERTAIN
            if reading.quality is Quality.BAD:
                quality = Quality.BAD
            why = clock_fault_reason(ts, now_us)
            reason = f"{reading.reason}; {why}" if reading.reason else why
            out.append(reading._replace(ts=now_us, quality=quality, reason=reason))
        return out


def clock_fault_reason(ts: int, now_us: int) -> str:
    """Why a timestamp was replaced, naming the source time and how far off it was."""
    try:
        when = datetime.fromtimestamp(ts / _US_PER_S, tz=UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        when = f"{ts} µs"
    off = (ts - now_us) / _US_PER_S
    side = "ahead of" if off > 0 else "behind"
    return (
        f"source clock implausible: timestamp {when} is {abs(off):.0f} s {side} the gateway "
        "clock; re-stamped with gateway time"
    )


class ClockSync:
    """Whether the gateway's clock is synchronized, probed now and then.

    Args:
        command: a command that prints ``yes`` or ``no`` (systemd-timedated's NTPSynchronized by
            default); empty to use only the kernel's state.
        interval_s: how often to probe again.
    """

    def __init__(self, command: Sequence[str], interval_s: float = 60.0) -> None:
        self.command = tuple(command)
        self.interval_s = interval_s
        self.synchronized: bool | None = None
        """True, False, or None while unknown (no probe worked)."""
        self.source = "unknown"
        """What answered: the command's name, ``adjtimex``, or ``unknown``."""
        self.checked_at: float | None = None
        self.unsynchronized_readings = 0
        """Readings accepted while the clock was not synchronized."""

    def count(self, readings: int) -> None:
        """Count readings accepted now, if the clock is not synchronized."""
        if self.synchronized is False:
            self.unsynchronized_readings += readings

    async def probe(self) -> bool | None:
        """Ask once; keeps and returns the answer."""
        answer = await self._command() if self.command else None
        if answer is not None:
            self.synchronized, self.source = answer, self.command[0]
        else:
            self.synchronized = _adjtimex_synchronized()
            self.source = "adjtimex" if self.synchronized is not None else "unknown"
        self.checked_at = time.time()
        return self.synchronized

    async def run(self) -> None:
        """Probe every `interval_s` until cancelled."""
        while True:
            was = self.synchronized
            await self.probe()
            if self.synchronized is False and was is not False:
                _log.warning("the gateway clock is not synchronized (%s)", self.source)
            await asyncio.sleep(self.interval_s)

    async def _command(self) -> bool | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return None
        try:
            async with asyncio.timeout(5):
                out, _ = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return None
        word = out.decode(errors="replace").strip().lower()
        if proc.returncode != 0 or word not in ("yes", "no"):
            return None
        return word == "yes"


def _adjtimex_synchronized() -> bool | None:
    """The kernel's view (adjtimex with no changes): TIME_ERROR means not synchronized."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        state = int(libc.adjtimex(ctypes.create_string_buffer(_ADJTIMEX_BUFFER)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR
