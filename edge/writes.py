"""The write door: every setpoint write, wherever it comes from, passes through here.

The cloud's `write` commands, desired setpoints from the shadow, `tagway write`, the TUI, the
local API and northbound hosts (Sparkplug DCMD) all call one method::

    outcome = await runtime.writes.write(
        "pump1", "speed_setpoint", 55.5, origin=WriteOrigin(source="sparkplug", who="host scada1"))
    outcome.outcome   # "written" | "refused" | "failed" | "unknown"
    outcome.reason    # why, when it was not written

The order, which is the safety promise:

1. check: the tag exists, is `writable: true` and has limits (`min`/`max` for numbers,
   `allowed` for other values), the value is inside them, and `max_rate` (writes per minute per
   tag) is not exceeded. A refusal is audited too, with its reason, and nothing reaches the device.
2. audit row `started`, committed to `<state_dir>/writes.db` before the device is touched.
3. the driver writes and reads the value back.
4. the audit row gets the outcome and the read-back; a `WriteRecord` goes into the outbox's event
   lane (so it reaches the cloud across outages and kill -9).

A process killed between 2 and 4 leaves a `started` row; the next start turns it into `unknown`
with the reason, reports it, and never writes again by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import apsw

from cloud.contract import AnyEvent, WriteRecord
from edge.config import AgentConfig, EdgeModbusTag, EdgeOpcUaTag, MqttSource
from edge.supervisor import DeviceNotRunning
from protocols.errors import ProtocolError
from protocols.reading import Value

if TYPE_CHECKING:
    from edge.pipeline.runner import Pipeline
    from edge.supervisor import Supervisor

log = logging.getLogger(__name__)

Outcome = Literal["written", "refused", "failed", "unknown"]
SCHEMA_VERSION: Final = 1
_RATE_WINDOW_US: Final = 60_000_000
_CRASHED: Final = (
    "the agent stopped while this write was in progress: the device may or may not have taken "
    "it; not retried"
)
Emit = Callable[[Sequence[AnyEvent]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WriteOrigin:
    """Who asked for a write, and through what.

    Args:
        source: the way in: ``cloud``, ``shadow``, ``local`` (API, CLI), ``tui``, ``sparkplug``.
        who: the person or program, as precisely as the way in knows it (``key 12``,
            ``local uid 1000``, ``host scada1``).
        command_id: the cloud command that asked for it, if one did.
    """

    source: str
    who: str
    command_id: int | None = None


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """One audited write (a row of `<state_dir>/writes.db`)."""

    id: int
    ts: int
    device: str
    tag: str
    value: Value
    old: Value | None
    read_back: Value | None
    outcome: Outcome
    reason: str | None
    source: str
    who: str
    command_id: int | None = None

    @property
    def written(self) -> bool:
        """True when the device took the value and it read back."""
        return self.outcome == "written"

    def record(self) -> WriteRecord:
        """The audit row as the cloud receives it."""
        value = _wire(self.value)
        return WriteRecord(
            type="write", id=self.id, ts=self.ts, device=self.device[:200], tag=self.tag[:200],
            value=value if value is not None else "",
            old=_wire(self.old), read_back=_wire(self.read_back),
            outcome=self.outcome, reason=None if self.reason is None else self.reason[:4_000],
            who=self.who[:200] or "unknown", source=self.source[:200] or "unknown",
            command_id=self.command_id,
        )  # fmt: skip


def _wire(value: Value | None) -> Value | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.replace("\x00", "")[:4_096]
    return value


# ------------------------------------------------------------------------------- the check

WritableTag = EdgeModbusTag | EdgeOpcUaTag


def find_tag(config: AgentConfig, device: str, tag: str) -> WritableTag | str:
    """The tag's config, or the reason there is none to write to."""
    found = next((d for d in config.devices if d.name == device), None)
    if found is None:
        return f"no device named {device!r}"
    if isinstance(found, MqttSource):
        return f"{device} is an MQTT source: its tags are read, never written"
    for t in found.tags:
        if t.name == tag:
            return t
    return f"{device} has no tag named {tag!r}"


def check_value(device: str, tag: WritableTag, value: Value) -> str | None:
    """Why `value` may not be written to `tag` (None: it may). Pure: no rate, no I/O."""
    where = f"{device}.{tag.name}"
    if not tag.writable:
        return f"{where} is not writable (set writable: true and its limits in the config)"
    if not tag.limited:
        return (f"{where} has no limits: a writable tag needs min and max (numbers) or "
                "allowed (other values) in the config")  # fmt: skip
    if tag.min is not None and tag.max is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{where} takes a number between {tag.min:g} and {tag.max:g}, not {value!r}"
        if not math.isfinite(float(value)) or not tag.min <= value <= tag.max:
            return f"{value!r} is outside the limits of {where} ({tag.min:g} to {tag.max:g})"
    if tag.allowed is not None and not any(_same(value, a) for a in tag.allowed):
        shown = ", ".join(repr(a) for a in tag.allowed)
        return f"{value!r} is not an allowed value of {where} (allowed: {shown})"
    return None


def _same(value: Value, allowed: Value) -> bool:
    # True == 1 in Python; a limit of `true` must not let the number 1 through, nor 1 let `true`.
    if isinstance(value, bool) or isinstance(allowed, bool):
        return isinstance(value, bool) and isinstance(allowed, bool) and value == allowed
    return value == allowed


# ------------------------------------------------------------------------------- the audit


@dataclass(frozen=True, slots=True)
class Attempt:
    """A write as asked for, before its outcome."""

    ts: int
    device: str
    tag: str
    value: Value
    old: Value | None
    origin: WriteOrigin


class WriteAudit:
    """The gateway's write audit: one row per write, started before the device is touched.

    Args:
        path: the SQLite file (``<state_dir>/writes.db``).
        keep: how many of the newest finished rows to keep.
    """

    def __init__(self, path: Path, *, keep: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = apsw.Connection(str(path))
        self._db.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS write_audit (id INTEGER PRIMARY KEY, ts INTEGER NOT "
                "NULL, device TEXT NOT NULL, tag TEXT NOT NULL, value TEXT NOT NULL, old TEXT, "
                "read_back TEXT, outcome TEXT NOT NULL, reason TEXT, source TEXT NOT NULL, "
                "who TEXT NOT NULL, command_id INTEGER, finished INTEGER NOT NULL DEFAULT 0, "
                "sent INTEGER NOT NULL DEFAULT 0);"
                "CREATE INDEX IF NOT EXISTS write_audit_tag ON write_audit (device, tag, ts);"
            )
            self._db.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")
        self.keep = keep

    def start(self, attempt: Attempt) -> int:
        """Record a write about to reach the device (committed); its audit id."""
        with self._db:
            self._insert(attempt, "unknown", _CRASHED, finished=False)
        return int(self._db.last_insert_rowid())

    def _insert(self, a: Attempt, outcome: Outcome, reason: str, *, finished: bool) -> None:
        self._db.execute(
            "INSERT INTO write_audit (ts, device, tag, value, old, outcome, reason, source,"
            " who, command_id, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (a.ts, a.device, a.tag, json.dumps(a.value), _dump(a.old), outcome, reason,
             a.origin.source, a.origin.who, a.origin.command_id, int(finished)),
        )  # fmt: skip

    def finish(self, audit_id: int, outcome: Outcome, *, read_back: Value | None,
               reason: str | None) -> WriteOutcome:  # fmt: skip
        """Record how the write ended (committed)."""
        with self._db:
            self._db.execute(
                "UPDATE write_audit SET outcome = ?, read_back = ?, reason = ?, finished = 1"
                " WHERE id = ?",
                (outcome, _dump(read_back), reason, audit_id),
            )
            self._db.execute(
                "DELETE FROM write_audit WHERE sent = 1 AND id <= ?", (audit_id - self.keep,)
            )
        return self.get(audit_id)

    def refused(self, attempt: Attempt, reason: str) -> WriteOutcome:
        """Record a write refused before it reached the device."""
        with self._db:
            self._insert(attempt, "refused", reason, finished=True)
            audit_id = int(self._db.last_insert_rowid())
        return self.get(audit_id)

    def recover(self) -> int:
        """Turn writes a previous run left `started` into `unknown` (their reason says why);
        how many there were."""
        with self._db:
            rows = self._db.execute(
                "UPDATE write_audit SET finished = 1 WHERE finished = 0 RETURNING id"
            ).fetchall()
        return len(rows)

    def attempts_since(self, device: str, tag: str, since_us: int) -> int:
        """Writes to the tag that reached (or may have reached) the device since `since_us`."""
        row = self._db.execute(
            "SELECT count(*) FROM write_audit WHERE device = ? AND tag = ? AND ts > ?"
            " AND outcome != 'refused'",
            (device, tag, since_us),
        ).fetchone()
        return int(str(row[0])) if row else 0

    def get(self, audit_id: int) -> WriteOutcome:
        """One audit row."""
        sql = f"SELECT {_COLUMNS} FROM write_audit WHERE id = ?"  # noqa: S608 - constant columns
        rows = self._db.execute(sql, (audit_id,))
        return _outcome(rows.fetchone())

    def recent(self, limit: int = 50, *, device: str | None = None) -> list[WriteOutcome]:
        """The newest audit rows, newest first."""
        if device is None:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM write_audit ORDER BY id DESC LIMIT ?",  # noqa: S608
                (limit,),
            )
        else:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM write_audit WHERE device = ?"  # noqa: S608
                " ORDER BY id DESC LIMIT ?",
                (device, limit),
            )
        return [_outcome(r) for r in rows.fetchall()]

    def unsent(self) -> list[WriteOutcome]:
        """Finished rows not yet handed to the outbox, oldest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM write_audit"  # noqa: S608 - constant columns
            " WHERE finished = 1 AND sent = 0 ORDER BY id"
        )
        return [_outcome(r) for r in rows.fetchall()]

    def mark_sent(self, ids: Sequence[int]) -> None:
        """These rows are in the outbox."""
        with self._db:
            self._db.executemany("UPDATE write_audit SET sent = 1 WHERE id = ?",
                                 [(i,) for i in ids])  # fmt: skip

    def close(self) -> None:
        """Close the file."""
        self._db.close()


_COLUMNS: Final = (
    "id, ts, device, tag, value, old, read_back, outcome, reason, source, who, command_id"
)


def _dump(value: Value | None) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return None if value is None else json.dumps(value)


def _load(text: object) -> Value | None:
    if not isinstance(text, str):
        return None
    value = json.loads(text)
    return value if isinstance(value, bool | int | float | str) else None


def _outcome(row: object) -> WriteOutcome:
    assert isinstance(row, tuple)  # noqa: S101 - apsw rows are tuples
    (id_, ts, device, tag, value, old, read_back, outcome, reason, source, who,
     command_id) = row  # fmt: skip
    loaded = _load(value)
    return WriteOutcome(
        id=int(id_), ts=int(ts), device=str(device), tag=str(tag),
        value=loaded if loaded is not None else "", old=_load(old), read_back=_load(read_back),
        outcome=outcome, reason=reason, source=str(source), who=str(who),
        command_id=None if command_id is None else int(command_id),
    )  # fmt: skip


# -------------------------------------------------------------------------------- the door


class WriteDoor:
    """Checks, audits and performs setpoint writes (see the module docstring).

    Args:
        audit: the audit file.
        config: the running config (called on every write: a reload changes the limits).
        supervisor: the drivers that do the writing.
        pipeline: the latest values (the audit's "old" value).
        emit: puts events into the outbox's event lane (committed when it returns).
    """

    def __init__(
        self,
        *,
        audit: WriteAudit,
        config: Callable[[], AgentConfig],
        supervisor: Supervisor,
        pipeline: Pipeline,
        emit: Emit,
    ) -> None:
        self.audit = audit
        self._config = config
        self._supervisor = supervisor
        self._pipeline = pipeline
        self._emit = emit

    async def start(self) -> None:
        """After a restart: report writes a previous run left unfinished as `unknown`, and hand
        the outbox what it had not received."""
        crashed = self.audit.recover()
        if crashed:
            log.error("%d setpoint writes were cut short by a stop; reported as unknown", crashed)
        await self._send(self.audit.unsent())

    async def write(self, device: str, tag: str, value: Value, *,
                    origin: WriteOrigin) -> WriteOutcome:  # fmt: skip
        """Write `value` to the tag if its limits allow it; the audited outcome (never raises
        for a refusal or a device error: the outcome says what happened)."""
        now = time.time_ns() // 1_000
        latest = self._pipeline.latest.get((device, tag))
        old = latest.value if latest is not None else None
        found = find_tag(self._config(), device, tag)
        reason = found if isinstance(found, str) else check_value(device, found, value)
        if reason is None and not isinstance(found, str) and found.max_rate is not None:
            done = self.audit.attempts_since(device, tag, now - _RATE_WINDOW_US)
            if done >= found.max_rate:
                reason = (f"{device}.{tag} was written {done} times in the last minute; "
                          f"max_rate is {found.max_rate:g} per minute")  # fmt: skip
        attempt = Attempt(now, device, tag, value, old, origin)
        if reason is not None:
            outcome = self.audit.refused(attempt, reason)
            log.warning("write refused (%s, %s): %s", origin.source, origin.who, reason)
        else:
            outcome = await self._perform(self.audit.start(attempt), device, tag, value)
        await self._send([outcome])
        return outcome

    async def _perform(self, audit_id: int, device: str, tag: str, value: Value) -> WriteOutcome:
        try:
            read_back = await self._supervisor.write(device, tag, value)
        except asyncio.CancelledError:
            self.audit.finish(audit_id, "unknown", read_back=None,
                              reason="the agent stopped during the write; not retried")  # fmt: skip
            raise
        except (DeviceNotRunning, ProtocolError) as exc:
            return self.audit.finish(audit_id, "failed", read_back=None, reason=str(exc))
        return self.audit.finish(audit_id, "written", read_back=read_back, reason=None)

    async def _send(self, outcomes: Sequence[WriteOutcome]) -> None:
        if outcomes:
            await self._emit([o.record() for o in outcomes])
            self.audit.mark_sent([o.id for o in outcomes])
