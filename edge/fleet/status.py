"""The status document: the gateway's health as the cloud sees it (`cloud.contract.StatusReport`).

It goes through the outbox's event lane like any event, so the cloud also learns what happened
while the uplink was down. It is sent when something the cloud judges health by changes (a
driver going down or up, the backlog's age passing a minute boundary, the disk or the clock,
the config's outcome, the number of active alarms), at most every `MIN_GAP_S`, and at least
every ``fleet.status_interval`` seconds (60 by default).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from cloud.contract import (
    MAX_ASSET_DEVICES,
    MAX_STATUS_DRIVERS,
    AnyEvent,
    AssetPaths,
    DriverStatus,
    StatusConfig,
    StatusReport,
)
from edge.alarms import AlarmState
from edge.fleet.versions import ConfigVersions
from edge.runtime import Runtime

CHECK_S: Final = 2.0
MIN_GAP_S: Final = 5.0
_STATES: Final = {"idle", "connecting", "connected", "backoff", "closed"}
MAX_EVENT_TEXT_BYTES: Final = 12 * 1024 * 1024
"""What one status or asset_paths event may carry in names, paths and errors (UTF-8): under the
cloud's 16 MiB cap on one decompressed chunk (`Limits.max_chunk_decompressed_bytes`) with room
for the rest, so every event the agent writes fits its decode budget. The contract alone admits
more (5,000 drivers with 4,096-character errors; 5,000 paths of 1,100 four-byte characters)."""

Emit = Callable[[Sequence[AnyEvent]], Awaitable[None]]


def _probation(outcome: str | None) -> str | None:
    return {"probation": "running", "applying": "running", "applied": "passed",
            "rolled_back": "failed"}.get(outcome or "")  # fmt: skip


async def build_status(rt: Runtime, versions: ConfigVersions, *, seq: int) -> StatusReport:
    """The status document of the running agent now."""
    config = rt.config.current
    stats = await rt.outbox.stats()
    ages = [lane.oldest_age_s for lane in stats.lanes.values() if lane.oldest_age_s is not None]
    free: int | None = None
    total: int | None = None
    try:
        disk = shutil.disk_usage(config.outbox_path.parent)
        free, total = disk.free, disk.total
    except OSError:
        pass  # the figure is left out; the cloud judges the disk only when it has one
    record = versions.record
    running, last = record.running, record.last_outcome
    uplink = rt.uplink.status if rt.uplink is not None else None
    return StatusReport(
        type="status", seq=seq, ts=time.time_ns() // 1_000, agent_version=rt.version[:200],
        uptime_s=max(0.0, time.time() - rt.started_at),
        config=StatusConfig(
            version=running.version if running else None,
            digest=running.digest if running else None, managed=config.fleet.managed_by,
            outcome=last.outcome if last else None,  # type: ignore[arg-type]
            probation=_probation(last.outcome if last else None),  # type: ignore[arg-type]
            reason=(last.reason or "")[:4_000] or None if last else None,
        ),
        drivers=bounded_drivers([_driver(rt, name) for name in sorted(rt.supervisor.slots)]),
        backlog_chunks=sum(lane.chunks for lane in stats.lanes.values()),
        backlog_readings=sum(lane.readings for lane in stats.lanes.values()),
        backlog_oldest_s=max(ages) if ages else None,
        quarantined=sum(lane.quarantined_chunks for lane in stats.lanes.values()),
        refused=uplink.quarantined_chunks if uplink is not None else 0,
        dead_letters=rt.dead_letters.total,
        disk_free_bytes=free, disk_total_bytes=total,
        outbox_bytes=stats.used_bytes, outbox_quota_bytes=stats.quota_bytes,
        alarms_active=sum(
            1 for a in rt.pipeline.alarms.alarms.values()
            if a.state in (AlarmState.ACTIVE, AlarmState.ACKED)
        ),
    )  # fmt: skip


def asset_paths(rt: Runtime) -> dict[str, str]:
    """The ISA-95 path of each configured device that has one (`edge.assets`), by name; only
    what the event can carry (a name of at most 200 characters, a path of at most 1,100; at
    most `MAX_ASSET_DEVICES` devices), so an odd config never stops the status reports."""
    paths = {d.name: d.path for d in rt.config.current.devices
             if d.path is not None and len(d.name) <= 200 and len(d.path) <= 1_100}  # fmt: skip
    return bounded_paths(paths)


def bounded_paths(paths: dict[str, str]) -> dict[str, str]:
    """The first `MAX_ASSET_DEVICES` paths by device name, while their UTF-8 stays within
    `MAX_EVENT_TEXT_BYTES`."""
    out: dict[str, str] = {}
    size = 0
    for name, path in sorted(paths.items())[:MAX_ASSET_DEVICES]:
        size += len(name.encode()) + len(path.encode())
        if size > MAX_EVENT_TEXT_BYTES:
            break
        out[name] = path
    return out


def bounded_drivers(drivers: list[DriverStatus]) -> list[DriverStatus]:
    """At most `MAX_STATUS_DRIVERS`, their errors cut to an equal share of what their names
    leave of `MAX_EVENT_TEXT_BYTES` when they would pass it."""
    drivers = drivers[:MAX_STATUS_DRIVERS]
    names = sum(len(d.name.encode()) + len((d.protocol or "").encode()) for d in drivers)
    if names + sum(len((d.last_error or "").encode()) for d in drivers) <= MAX_EVENT_TEXT_BYTES:
        return drivers
    share = max(0, MAX_EVENT_TEXT_BYTES - names) // max(1, len(drivers))
    return [d if d.last_error is None or len(d.last_error.encode()) <= share
            else d.model_copy(update={"last_error": _cut(d.last_error, share) or None})
            for d in drivers]  # fmt: skip


def _cut(text: str, size: int) -> str:
    """`text` cut to at most `size` bytes of UTF-8, never inside a character."""
    return text.encode()[:size].decode(errors="ignore")


def _driver(rt: Runtime, name: str) -> DriverStatus:
    slot = rt.supervisor.slots[name]
    link = slot.driver.link if slot.driver is not None else None
    state = slot.state if slot.state in _STATES else "backoff"  # stopped between restarts
    error = slot.error().current
    return DriverStatus(
        name=name[:200], protocol=slot.config.protocol, state=state,  # type: ignore[arg-type]
        last_error=error[:4_000] if error else None,
        since=int(link.since * 1_000_000) if link is not None and link.since else None,
    )  # fmt: skip


def fingerprint(status: StatusReport) -> tuple[object, ...]:
    """What a change of deserves a document now (figures that only drift do not)."""
    age = status.backlog_oldest_s
    free, total = status.disk_free_bytes, status.disk_total_bytes
    return (
        status.config.version, status.config.outcome, status.config.managed,
        tuple((d.name, d.state == "connected") for d in status.drivers),
        None if age is None else int(age // 60),
        None if not free or not total else int(20 * free / total),
        status.clock_synchronized, status.alarms_active, status.quarantined,
    )  # fmt: skip


class StatusReporter:
    """Sends the status document on change and at least every interval.

    Args:
        runtime: the running agent.
        versions: the config record (version, outcome).
        emit: puts the documents into the outbox's event lane.
    """

    def __init__(self, *, runtime: Runtime, versions: ConfigVersions, emit: Emit) -> None:
        self.runtime = runtime
        self.versions = versions
        self.emit = emit
        self.sent = 0

    async def run(self) -> None:
        """Until cancelled. The devices' ISA-95 paths go along at start and after each change
        (event ``asset_paths``: the cloud places the devices in its asset tree by them)."""
        last: tuple[object, ...] | None = None
        last_at = 0.0
        last_paths: dict[str, str] | None = None
        while True:
            paths = asset_paths(self.runtime)
            if paths != last_paths:
                report = AssetPaths(type="asset_paths", seq=self.versions.next_seq(),
                                    at=time.time_ns() // 1_000, devices=paths)  # fmt: skip
                await self.emit([report])
                last_paths = paths
            status = await build_status(self.runtime, self.versions, seq=1)
            now = time.monotonic()
            interval = self.runtime.config.current.fleet.status_interval
            due = now - last_at >= interval
            changed = fingerprint(status) != last and now - last_at >= MIN_GAP_S
            if due or changed:
                seq = self.versions.next_seq()
                await self.emit([status.model_copy(update={"seq": seq})])
                self.sent += 1
                last, last_at = fingerprint(status), now
            await asyncio.sleep(CHECK_S)
