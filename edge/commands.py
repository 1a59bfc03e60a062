"""Commands from the cloud, run once each: the journal and the runner.

The cloud delivers a command again on every new channel connection until its result arrives, so
the gateway must tell a repeat from a new one across restarts. The journal
(`<state_dir>/commands.db`) records each command id before the gateway acts, and the outcome
after::

    delivered ──▶ journal: started (committed) ──▶ act ──▶ journal: done (outcome, result)
                                                              └──▶ CommandResult → outbox

- delivered again, already done: not run again; the stored result is reported again (the cloud
  applies a result once, so a copy costs nothing);
- the agent killed between started and done: the next start records `unknown` with the reason and
  reports it; the command is never run again by itself (a write may or may not have happened);
- past its deadline when its turn comes: recorded and reported `expired`, never run. The deadline
  is measured on the gateway's monotonic clock from arrival plus the time the cloud said was
  left (`expires_in_s`), so a wrong gateway clock cannot run a stale command.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import apsw

from cloud.contract import (
    AckAlarmCommand,
    AnyEvent,
    ChannelCommand,
    CommandResult,
    PingCommand,
    ReloadConfigCommand,
    RequeueQuarantineCommand,
    WriteCommand,
)
from edge.alarms import UnknownAlarm
from edge.reload import ReloadRejected, ReloadResult
from edge.writes import WriteOrigin

if TYPE_CHECKING:
    from edge.runtime import Runtime

log = logging.getLogger(__name__)

State = Literal["succeeded", "failed", "expired", "unknown"]
SCHEMA_VERSION: Final = 1
_CRASHED: Final = (
    "the agent stopped while running this command; it may or may not have taken effect and is "
    "not run again"
)
_QUEUE: Final = 1_000
Emit = Callable[[Sequence[AnyEvent]], Awaitable[None]]


def now_us() -> int:
    """Wall-clock microseconds (the times a result reports)."""
    return time.time_ns() // 1_000


class CommandJournal:
    """Each command id the gateway received, and what became of it (crash-safe).

    Args:
        path: the SQLite file (``<state_dir>/commands.db``).
        keep: how many of the newest finished commands to remember.
    """

    def __init__(self, path: Path, *, keep: int = 10_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = apsw.Connection(str(path))
        self._db.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS command (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
                " args TEXT NOT NULL, received_at INTEGER NOT NULL, started_at INTEGER,"
                " finished_at INTEGER, state TEXT NOT NULL, outcome TEXT, result TEXT, error TEXT)"
            )
            self._db.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")
        self.keep = keep

    def result(self, command_id: int) -> CommandResult | None:
        """The stored result of a finished command, None when it was never received."""
        row = self._db.execute(
            "SELECT state, outcome, result, error, started_at, finished_at FROM command"
            " WHERE id = ?",
            (command_id,),
        ).fetchone()
        if row is None:
            return None
        state, outcome, result, error, started, finished = row
        if state != "done":  # started in this very process: it is running now
            return None
        return CommandResult(
            type="command_result", command_id=command_id, state=outcome,
            result=json.loads(str(result)) if result else {}, error=error,
            started_at=started, finished_at=int(str(finished)),
        )  # fmt: skip

    def known(self, command_id: int) -> bool:
        """True when the id was received before (running or finished)."""
        row = self._db.execute("SELECT 1 FROM command WHERE id = ?", (command_id,)).fetchone()
        return row is not None

    def start(self, command: ChannelCommand, *, received_at: int) -> int:
        """Record that the command is about to run (committed before it acts); its start."""
        started = now_us()
        spec = command.command
        with self._db:
            self._db.execute(
                "INSERT INTO command (id, kind, args, received_at, started_at, state, outcome,"
                " error) VALUES (?, ?, ?, ?, ?, 'started', 'unknown', ?)",
                (command.id, spec.kind, spec.args.model_dump_json(), received_at, started,
                 _CRASHED),
            )  # fmt: skip
        return started

    def finish(self, command_id: int, state: State, *, result: dict[str, Any] | None = None,
               error: str | None = None) -> CommandResult:  # fmt: skip
        """Record the outcome (committed); the result to report."""
        finished = now_us()
        with self._db:
            self._db.execute(
                "UPDATE command SET state = 'done', outcome = ?, result = ?, error = ?,"
                " finished_at = ? WHERE id = ?",
                (state, json.dumps(result or {}), error, finished, command_id),
            )
            self._db.execute(
                "DELETE FROM command WHERE state = 'done' AND id NOT IN"
                " (SELECT id FROM command ORDER BY id DESC LIMIT ?)",
                (self.keep,),
            )
        found = self.result(command_id)
        assert found is not None  # noqa: S101 - written just above
        return found

    def never_run(self, command: ChannelCommand, state: State, error: str, *,
                  received_at: int) -> CommandResult:  # fmt: skip
        """Record a command that is not run (expired on arrival or in the queue)."""
        spec = command.command
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO command (id, kind, args, received_at, state)"
                " VALUES (?, ?, ?, ?, 'started')",
                (command.id, spec.kind, spec.args.model_dump_json(), received_at),
            )
        return self.finish(command.id, state, error=error)

    def recover(self) -> list[CommandResult]:
        """Commands a previous run left started: now `unknown`, with the reason."""
        rows = self._db.execute("SELECT id FROM command WHERE state = 'started'").fetchall()
        ids = [int(str(r[0])) for r in rows]
        return [self.finish(i, "unknown", error=_CRASHED) for i in ids]

    def close(self) -> None:
        """Close the file."""
        self._db.close()


@dataclass(frozen=True, slots=True)
class Arrival:
    """A delivered command and when it arrived (monotonic, for its deadline; wall, to record)."""

    command: ChannelCommand
    monotonic: float
    wall_us: int

    @property
    def deadline(self) -> float:
        """The monotonic time after which it must not run."""
        return self.monotonic + self.command.expires_in_s


class CommandRunner:
    """Runs the cloud's commands one at a time, each id once (see the module docstring).

    Args:
        journal: the command journal.
        runtime: the agent's resources (the write door, the pipeline's alarms, the outbox).
        emit: puts results into the outbox's event lane.
        reload: the agent's config reload (`reload_config`); None: the agent has no file.
    """

    def __init__(
        self,
        *,
        journal: CommandJournal,
        runtime: Runtime,
        emit: Emit,
        reload: Callable[[], Awaitable[ReloadResult]] | None,
    ) -> None:
        self.journal = journal
        self._rt = runtime
        self._emit = emit
        self._reload = reload
        self._queue: asyncio.Queue[Arrival] = asyncio.Queue(_QUEUE)
        self._waiting: set[int] = set()
        self.ran = 0
        self.repeats = 0

    def submit(self, command: ChannelCommand) -> None:
        """Take a delivered command (from the channel); it runs in turn, once."""
        if command.id in self._waiting:
            return  # delivered again on a new connection while it waits here
        arrival = Arrival(command, time.monotonic(), now_us())
        try:
            self._queue.put_nowait(arrival)
        except asyncio.QueueFull:
            log.warning("command %d dropped: %d commands waiting", command.id, _QUEUE)
            return  # the cloud delivers it again on the next connection
        self._waiting.add(command.id)

    async def run(self) -> None:
        """Report what a previous run left unfinished, then run commands until cancelled."""
        recovered = self.journal.recover()
        if recovered:
            log.error("%d commands were cut short by a stop; reported as unknown", len(recovered))
            await self._emit(recovered)
        while True:
            arrival = await self._queue.get()
            try:
                await self._take(arrival)
            finally:
                self._waiting.discard(arrival.command.id)

    async def _take(self, arrival: Arrival) -> None:
        command = arrival.command
        stored = self.journal.result(command.id)
        if stored is not None:
            self.repeats += 1
            log.info("command %d was delivered again; reporting its result again", command.id)
            await self._emit([stored])
            return
        if self.journal.known(command.id):
            return  # running right now (cannot happen with one worker; kept as the rule)
        if time.monotonic() >= arrival.deadline:
            result = self.journal.never_run(
                command, "expired", f"its TTL ran out before it could run (command {command.id})",
                received_at=arrival.wall_us,
            )  # fmt: skip
        else:
            started = self.journal.start(command, received_at=arrival.wall_us)
            state, result_body, error = await self._act(command)
            result = self.journal.finish(command.id, state, result=result_body, error=error)
            assert result.started_at == started  # noqa: S101 - the journal's own row
            self.ran += 1
        log.info("command %d (%s): %s%s", command.id, command.command.kind, result.state,
                 f": {result.error}" if result.error else "")  # fmt: skip
        await self._emit([result])

    async def _act(self, command: ChannelCommand) -> tuple[State, dict[str, Any], str | None]:
        spec = command.command
        if isinstance(spec, WriteCommand):
            return await self._write(command, spec)
        if isinstance(spec, AckAlarmCommand):
            return await self._ack(command, spec)
        if isinstance(spec, ReloadConfigCommand):
            return await self._reload_config()
        if isinstance(spec, RequeueQuarantineCommand):
            return "succeeded", {"requeued": await self._rt.outbox.requeue_quarantine()}, None
        assert isinstance(spec, PingCommand)  # noqa: S101 - the union is exhausted
        return "succeeded", {"version": self._rt.version,
                             "uptime_s": round(time.time() - self._rt.started_at, 3),
                             "gateway": self._rt.config.current.gateway.name}, None  # fmt: skip

    async def _write(self, command: ChannelCommand, spec: WriteCommand) -> tuple[
            State, dict[str, Any], str | None]:  # fmt: skip
        args = spec.args
        origin = WriteOrigin(source="cloud", who=f"cloud {command.created_by}",
                             command_id=command.id)  # fmt: skip
        outcome = await self._rt.writes.write(args.device, args.tag, args.value, origin=origin)
        body = {"device": args.device, "tag": args.tag, "value": args.value, "old": outcome.old,
                "read_back": outcome.read_back, "audit_id": outcome.id,
                "outcome": outcome.outcome}  # fmt: skip
        if outcome.written:
            return "succeeded", body, None
        return ("unknown" if outcome.outcome == "unknown" else "failed"), body, outcome.reason

    async def _ack(self, command: ChannelCommand, spec: AckAlarmCommand) -> tuple[
            State, dict[str, Any], str | None]:  # fmt: skip
        by = f"cloud {command.created_by}"[:200]
        comment = spec.args.comment[:4_000] if spec.args.comment else None
        try:
            event = await self._rt.pipeline.acknowledge(spec.args.name, now_us(), by=by,
                                                        comment=comment)  # fmt: skip
        except UnknownAlarm:
            return "failed", {}, f"this gateway has no alarm named {spec.args.name!r}"
        return "succeeded", {"acknowledged": event is not None, "alarm": spec.args.name}, None

    async def _reload_config(self) -> tuple[State, dict[str, Any], str | None]:
        if self._reload is None:
            return "failed", {}, "this agent was not started from a config file"
        try:
            result = await self._reload()
        except ReloadRejected as exc:
            return "failed", {}, str(exc)
        body = result.as_dict()
        return ("succeeded" if result.applied else "failed"), body, result.error
