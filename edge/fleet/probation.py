"""Probation: a new config proves itself, or it is rolled back.

After a new config is applied, every device that was connected before (and is still
configured) must be connected again, every device the config adds must connect, and the uplink
must reach the cloud, all within the probation time. The conditions must hold together for a
moment (`SETTLE_S`), so a link that connects and drops at once does not pass. The first that is
still missing at the deadline is the reason for the rollback, with the device's last error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

SETTLE_S: Final = 1.0
POLL_S: Final = 0.2


@dataclass(frozen=True, slots=True)
class Link:
    """A device's link as probation sees it."""

    connected: bool
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Goal:
    """What a new config must show within the probation.

    Args:
        devices: devices that must be connected.
        uplink_after: Unix time after which the uplink must have succeeded (None: no cloud).
    """

    devices: frozenset[str]
    uplink_after: float | None

    @classmethod
    def of(
        cls, *, connected_before: Iterable[str], configured: Iterable[str], added: Iterable[str],
        uplink_after: float | None,
    ) -> Goal:  # fmt: skip
        """Devices connected before that the new config keeps, and the ones it adds."""
        kept = set(connected_before) & set(configured)
        return cls(frozenset(kept | set(added)), uplink_after)


@dataclass(frozen=True, slots=True)
class Observed:
    """Where the agent stands: its devices' links and the uplink's last success and error."""

    links: Mapping[str, Link]
    uplink_success: float | None = None
    uplink_error: str | None = None


def missing(goal: Goal, now: Observed) -> list[str]:
    """What the goal still lacks, in words (devices by name, then the uplink)."""
    out = []
    for name in sorted(goal.devices):
        link = now.links.get(name)
        if link is None or not link.connected:
            error = link.last_error if link is not None else None
            out.append(f"device {name} did not connect" + (f" ({error})" if error else ""))
    if goal.uplink_after is not None and (
        now.uplink_success is None or now.uplink_success < goal.uplink_after
    ):
        error = f" ({now.uplink_error})" if now.uplink_error else ""
        out.append(f"the uplink did not reach the cloud{error}")
    return out


async def watch(
    goal: Goal, observe: Callable[[], Observed], *, limit_s: float, settle_s: float = SETTLE_S
) -> str | None:
    """Wait until the goal holds for `settle_s`; None then, or the reason it failed by
    `limit_s`."""
    deadline = time.monotonic() + limit_s
    held_since: float | None = None
    while True:
        lacking = missing(goal, observe())
        now = time.monotonic()
        if not lacking:
            held_since = held_since if held_since is not None else now
            if now - held_since >= min(settle_s, limit_s / 4):
                return None
        else:
            held_since = None
            if now >= deadline:
                return f"{'; '.join(lacking)} within {limit_s:g} s"
        await asyncio.sleep(POLL_S)
