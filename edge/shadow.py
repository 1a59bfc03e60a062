"""Desired setpoints from the cloud's shadow, applied on the gateway, and the reported document.

The channel brings the shadow's desired document on every (re)connection and on every change.
Each setpoint carries the version that last set it; the gateway applies a setpoint version once,
through the write door (the same limits and audit as any write, source ``shadow``), and
remembers the outcome per tag in `<state_dir>/shadow.db`:

- ``applied``: written and read back; ``refused``: the door's reason;
- ``failed``: the device did not take it (tried again with the next document, on reconnect);
- ``expired``: past its `expires_at` (judged against the cloud's clock in the same document, so a
  wrong gateway clock cannot apply a stale setpoint): never written.

**The rule when a local write and a desired value disagree:** the last one wins, and the cloud's
desired value wins only when it changes. A desired setpoint version is applied once; a later
local write (`tagway write`, the TUI, the local API, a Sparkplug host) stands, and a reconnection
that brings the same desired version again does not write it back. The reported document shows
the value the gateway reads, so the cloud's `delta` shows the disagreement until someone sets a
new desired value (applied then) or removes it.

After each desired document the gateway sends a `ShadowReport` (its own version counter, kept
across restarts): agent and config version, the current values of writable tags, and what it did
with each desired setpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import apsw

from cloud.contract import (
    AnyEvent,
    AppliedSetpoint,
    DesiredSetpoint,
    DesiredState,
    ReportedSetpoint,
    ShadowReport,
)
from edge.commands import now_us
from edge.writes import WriteOrigin

if TYPE_CHECKING:
    from edge.runtime import Runtime

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
Applied = Literal["applied", "refused", "failed", "expired", "superseded"]
Emit = Callable[[Sequence[AnyEvent]], Awaitable[None]]
_LINK_WAIT_S: Final = 10.0
_QUALITY: Final[dict[str, Literal["good", "uncertain", "bad"]]] = {
    "GOOD": "good", "UNCERTAIN": "uncertain", "BAD": "bad"}  # fmt: skip


class ShadowRecord:
    """What the gateway did with each desired setpoint version, and its report counter.

    Args:
        path: the SQLite file (``<state_dir>/shadow.db``).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = apsw.Connection(str(path))
        self._db.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS applied (device TEXT NOT NULL, tag TEXT NOT NULL,"
                " version INTEGER NOT NULL, outcome TEXT NOT NULL, reason TEXT,"
                " at INTEGER NOT NULL, PRIMARY KEY (device, tag));"
                "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1),"
                " reported INTEGER NOT NULL, desired INTEGER NOT NULL);"
                "INSERT OR IGNORE INTO counter VALUES (1, 0, 0);"
            )
            self._db.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")

    def handled(self, device: str, tag: str) -> int | None:
        """The desired version last handled for the tag (a write that failed at the device is
        not handled: the next document tries again)."""
        row = self._db.execute(
            "SELECT version FROM applied WHERE device = ? AND tag = ? AND outcome != 'failed'",
            (device, tag),
        ).fetchone()
        return None if row is None else int(str(row[0]))

    def record(self, device: str, tag: str, entry: AppliedSetpoint) -> None:
        """Remember what was done with a desired version (committed)."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO applied VALUES (?, ?, ?, ?, ?, ?)",
                (device, tag, entry.version, entry.outcome, entry.reason, entry.at),
            )

    def applied(self) -> dict[str, dict[str, AppliedSetpoint]]:
        """Every tag's last handled desired version."""
        out: dict[str, dict[str, AppliedSetpoint]] = {}
        for device, tag, version, outcome, reason, at in self._db.execute(
            "SELECT device, tag, version, outcome, reason, at FROM applied ORDER BY device, tag"
        ).fetchall():
            out.setdefault(str(device), {})[str(tag)] = AppliedSetpoint.model_validate(
                {"version": version, "outcome": outcome, "reason": reason, "at": at}
            )
        return out

    def next_report(self, desired_version: int) -> tuple[int, int]:
        """The next report's version (counted up, committed) and the desired version seen."""
        with self._db:
            self._db.execute(
                "UPDATE counter SET reported = reported + 1, desired = max(desired, ?)",
                (desired_version,),
            )
            row = self._db.execute("SELECT reported, desired FROM counter").fetchone()
        assert row is not None  # noqa: S101 - the row is created with the table
        return int(str(row[0])), int(str(row[1]))

    def close(self) -> None:
        """Close the file."""
        self._db.close()


class DesiredSetpoints:
    """Applies the desired documents the channel brings, newest first, and reports.

    Args:
        record: the shadow record.
        runtime: the agent's resources (the write door, the latest values, the config).
        emit: puts the report into the outbox's event lane.
        config_version: the cloud config version the gateway runs (None: its own file).
    """

    def __init__(
        self,
        *,
        record: ShadowRecord,
        runtime: Runtime,
        emit: Emit,
        config_version: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.record = record
        self._rt = runtime
        self._emit = emit
        self._config_version = config_version
        self._pending: DesiredState | None = None
        self._wake = asyncio.Event()
        self.documents = 0

    def offer(self, desired: DesiredState) -> None:
        """The channel's newest desired document (a newer one replaces one not yet handled)."""
        if self._pending is None or desired.version >= self._pending.version:
            self._pending = desired
            self._wake.set()

    async def run(self) -> None:
        """Handle desired documents until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            desired, self._pending = self._pending, None
            if desired is not None:
                await self.apply(desired)

    async def apply(self, desired: DesiredState) -> None:
        """Apply the setpoint versions not handled yet, then send the report."""
        for device, tags in sorted(desired.setpoints.items()):
            for tag, entry in sorted(tags.items()):
                if self.record.handled(device, tag) == entry.version:
                    continue  # handled once; a local write since then stands (the rule)
                outcome = await self._apply_one(device, tag, entry, desired.server_time)
                self.record.record(device, tag, outcome)
                log.info("desired %s.%s = %r (version %d): %s%s", device, tag, entry.value,
                         entry.version, outcome.outcome,
                         f" ({outcome.reason})" if outcome.reason else "")  # fmt: skip
        self.documents += 1
        await self._emit([self.report(desired.version)])

    async def _apply_one(
        self, device: str, tag: str, entry: DesiredSetpoint, server_time: int
    ) -> AppliedSetpoint:
        if entry.expires_at is not None and entry.expires_at <= server_time:
            late = "past its expires_at when the gateway received it"
            return AppliedSetpoint(version=entry.version, outcome="expired", at=now_us(),
                                   reason=late)  # fmt: skip
        await self._device_ready(device)
        origin = WriteOrigin(source="shadow", who=f"shadow {entry.set_by}"[:200])
        done = await self._rt.writes.write(device, tag, entry.value, origin=origin)
        outcome: Applied = "failed"
        if done.outcome in ("written", "refused"):
            outcome = "applied" if done.outcome == "written" else "refused"
        reason = None if done.reason is None else done.reason[:4_000]
        return AppliedSetpoint(version=entry.version, outcome=outcome, at=now_us(), reason=reason)

    async def _device_ready(self, device: str) -> None:
        """Wait (a while) for the device's link: on (re)start the channel is often faster than
        the drivers, and a setpoint should not fail for that."""
        slots = self._rt.supervisor.slots
        for _ in range(int(_LINK_WAIT_S / 0.05)):
            slot = slots.get(device)
            if slot is None or slot.healthy:
                return
            await asyncio.sleep(0.05)

    def report(self, desired_version: int) -> ShadowReport:
        """The gateway's facts for the shadow's reported document."""
        version, seen = self.record.next_report(desired_version)
        config_version = self._config_version()
        return ShadowReport(
            type="reported", version=version, desired_version=seen,
            agent_version=self._rt.version[:200] or "unknown",
            config_version=None if config_version is None else str(config_version),
            setpoints=self._writable_values(), applied=self.record.applied(),
        )  # fmt: skip

    def _writable_values(self) -> dict[str, dict[str, ReportedSetpoint]]:
        out: dict[str, dict[str, ReportedSetpoint]] = {}
        latest = self._rt.pipeline.latest
        for device in self._rt.config.current.devices:
            for tag in getattr(device, "tags", ()):
                if not getattr(tag, "writable", False):
                    continue
                reading = latest.get((device.name, tag.name))
                if reading is None:
                    entry = ReportedSetpoint(quality="bad")
                else:
                    value = reading.value
                    finite = not (isinstance(value, float) and not math.isfinite(value))
                    entry = ReportedSetpoint(
                        value=value if finite else None, ts=reading.ts,
                        quality=_QUALITY.get(reading.quality.name, "bad"),
                    )  # fmt: skip
                out.setdefault(device.name, {})[tag.name] = entry
        return out
