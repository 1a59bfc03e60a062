"""Fleet health: what the cloud concludes from a gateway's status document.

A gateway is ``healthy``, ``degraded`` (with the reasons: a driver down, a backlog older than
the limit, the outbox's disk nearly full, the clock unsynchronized or off), ``offline`` (no
contact for `HealthPolicy.offline_after_s`; decided when asked, from the time of its last
batch) or ``unknown`` (it never sent a status document: an agent older than the fleet
feature). No I/O here: `assess` is a function of the document and the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from cloud.contract import StatusReport

Health = Literal["healthy", "degraded", "offline", "unknown"]
HEALTH_STATES: Final = ("healthy", "degraded", "offline", "unknown")


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The limits a status document is held to (from `CloudSettings`)."""

    offline_after_s: float = 300.0
    backlog_age_s: float = 300.0
    disk_free_min_percent: float = 5.0
    outbox_full_percent: float = 90.0
    clock_offset_max_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a gateway is degraded. `key` names the cause (``driver:pump1``, ``backlog``,
    ``disk``, ``outbox``, ``clock``) so a change of figures is not a change of health."""

    key: str
    text: str


def _down(state: str, last_error: str | None) -> bool:
    if state in ("backoff", "closed"):
        return True
    return state in ("idle", "connecting") and last_error is not None  # failing to come up


def assess(status: StatusReport, policy: HealthPolicy) -> tuple[Health, list[Reason]]:
    """``healthy`` or ``degraded`` with every reason found (offline is decided by time)."""
    reasons = [
        Reason(f"driver:{d.name}", f"driver {d.name} is {d.state}" +
               (f": {d.last_error}" if d.last_error else ""))
        for d in status.drivers if _down(d.state, d.last_error)
    ]  # fmt: skip
    age, limit = status.backlog_oldest_s, policy.backlog_age_s
    if age is not None and age > limit:
        reasons.append(Reason("backlog", f"backlog is {age:.0f} s old (limit {limit:.0f} s)"))
    free, total = status.disk_free_bytes, status.disk_total_bytes
    if free is not None and total:
        percent = 100.0 * free / total
        if percent < policy.disk_free_min_percent:
            reasons.append(Reason("disk", f"outbox disk nearly full ({percent:.1f}% free)"))
    used, quota = status.outbox_bytes, status.outbox_quota_bytes
    if used is not None and quota:
        percent = 100.0 * used / quota
        if percent >= policy.outbox_full_percent:
            reasons.append(Reason("outbox", f"outbox at {percent:.0f}% of its quota"))
    offset = status.clock_offset_s
    if status.clock_synchronized is False:
        reasons.append(Reason("clock", "clock not synchronized"))
    elif offset is not None and abs(offset) > policy.clock_offset_max_s:
        reasons.append(Reason("clock", f"clock off by {offset:+.1f} s"))
    return ("degraded" if reasons else "healthy"), reasons
