"""Alarm notification hooks: a webhook or a command on raise, clear or acknowledge.

The plant must hear about an alarm whether or not the cloud is reachable, so hooks do not go
through the uplink. Each alarm transition a hook asks for is written to a queue in the state
directory (`notifications.db`) in the same step that persists the alarm's state, and a delivery
task sends the queue in order, one hook at a time:

- a webhook gets the transition as a JSON POST; any 2xx is delivered;
- a command gets the same JSON on stdin and the `TAGWAY_ALARM_*` variables; exit 0 is delivered.

A failed delivery is retried at once a few times (tenacity), then again after a growing pause
(up to five minutes), for as long as it takes: a notification is never dropped, across outages
of the receiver, of the agent (the queue is on disk) and config reloads. Delivery is at least
once: a receiver that answers after the agent was killed may hear the same transition twice
(`id` is the same both times, for receivers that deduplicate). A shelved alarm
(`edge.shelving`) is not announced; when its shelf runs out while it is still active and
unacknowledged, it is announced then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import apsw
import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from edge.alarms import AlarmEvent, Severity
from edge.config import NotifyHook
from edge.errors import EdgeError

log = logging.getLogger(__name__)

_RANK: Final = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}
_PAUSE_CAP_S: Final = 300.0
_SCHEMA: Final = """
    CREATE TABLE IF NOT EXISTS pending (
        id        INTEGER PRIMARY KEY,
        hook      TEXT NOT NULL,
        body      TEXT NOT NULL,      -- the JSON the receiver gets
        attempts  INTEGER NOT NULL DEFAULT 0,
        next_at   REAL NOT NULL,      -- Unix time of the next attempt
        error     TEXT
    );
    CREATE INDEX IF NOT EXISTS pending_by_hook ON pending (hook, id);
"""


class DeliveryFailed(EdgeError):
    """A receiver did not take a notification (the message says what it answered)."""


@dataclass(frozen=True, slots=True)
class HookStatus:
    """What one hook has done since the agent started, and what waits for it."""

    name: str
    pending: int
    delivered: int
    failed_attempts: int
    last_error: str | None
    last_delivered_at: float | None


def notification(event: AlarmEvent, *, gateway: str, note: str = "") -> dict[str, object]:
    """The JSON a receiver gets for one alarm transition."""
    body: dict[str, object] = {
        "gateway": gateway, "alarm": event.rule, "device": event.device, "tag": event.tag,
        "kind": event.kind.value, "severity": event.severity.value,
        "transition": event.transition.value, "state": event.state.value, "ts": event.ts,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.ts / 1e6)),
        "value": event.value, "message": event.message,
    }  # fmt: skip
    if note:
        body["note"] = note
    return body


def wanted(hook: NotifyHook, event: AlarmEvent) -> bool:
    """Whether `hook` asks for this transition."""
    return event.transition.value in hook.on and _RANK[event.severity] >= _RANK[hook.min_severity]


class NotificationQueue:
    """The durable queue of notifications not yet delivered (apsw, synchronous=FULL).

    Args:
        path: the SQLite file; created with its directory if missing.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = apsw.Connection(str(path))
        self._db.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def put(self, items: Iterable[tuple[str, dict[str, object]]], now: float) -> int:
        """Queue (hook name, body) pairs in one transaction; how many were queued."""
        rows = []
        for hook, body in items:
            text = json.dumps(body, separators=(",", ":"), allow_nan=False, default=str)
            rows.append((hook, text, now))
        if rows:
            with self._db:
                self._db.executemany(
                    "INSERT INTO pending (hook, body, next_at) VALUES (?, ?, ?)", rows
                )
        return len(rows)

    def head(self, hook: str) -> tuple[int, dict[str, object], int, float] | None:
        """The oldest pending notification of `hook`: id, body, attempts, next attempt time."""
        rows = self._db.execute(
            "SELECT id, body, attempts, next_at FROM pending WHERE hook = ? ORDER BY id LIMIT 1",
            (hook,),
        ).fetchall()
        if not rows:
            return None
        ident, body, attempts, next_at = rows[0]
        parsed = json.loads(str(body))
        return int(str(ident)), parsed, int(str(attempts)), float(str(next_at))

    def done(self, ident: int) -> None:
        """Forget a delivered notification."""
        with self._db:
            self._db.execute("DELETE FROM pending WHERE id = ?", (ident,))

    def retry_later(self, ident: int, error: str, next_at: float) -> None:
        """Count a failed attempt and when to try again."""
        with self._db:
            self._db.execute(
                "UPDATE pending SET attempts = attempts + 1, error = ?, next_at = ? WHERE id = ?",
                (error[:500], next_at, ident),
            )

    def counts(self) -> dict[str, int]:
        """Pending notifications per hook name."""
        rows = self._db.execute("SELECT hook, count(*) FROM pending GROUP BY hook").fetchall()
        return {str(hook): int(str(n)) for hook, n in rows}

    def close(self) -> None:
        """Close the file."""
        self._db.close()


class Notifier:
    """Queues alarm transitions for the configured hooks and delivers them.

    Args:
        queue: the durable queue.
        hooks: the hooks of the running config (called each time: a reload may change them).
        gateway: the gateway's name, sent with every notification.
        shelved: whether an alarm is shelved now (shelved alarms are not announced).
        clock: Unix time (injected for tests).
    """

    def __init__(
        self,
        queue: NotificationQueue,
        hooks: Callable[[], Sequence[NotifyHook]],
        *,
        gateway: Callable[[], str],
        shelved: Callable[[str], bool] = lambda _name: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._hooks = hooks
        self._gateway = gateway
        self._shelved = shelved
        self._clock = clock
        self._wake = asyncio.Event()
        self._delivered: dict[str, int] = {}
        self._failed: dict[str, int] = {}
        self._last_error: dict[str, str] = {}
        self._last_delivered: dict[str, float] = {}

    def announce(self, events: Iterable[AlarmEvent], *, note: str = "") -> int:
        """Queue the transitions each hook asks for (shelved alarms excepted); how many."""
        hooks = self._hooks()
        if not hooks:
            return 0
        gateway = self._gateway()
        items = [
            (hook.name, notification(event, gateway=gateway, note=note))
            for event in events if not self._shelved(event.rule)
            for hook in hooks if wanted(hook, event)
        ]  # fmt: skip
        queued = self._queue.put(items, self._clock())
        if queued:
            self._wake.set()
        return queued

    def status(self) -> list[HookStatus]:
        """Per configured hook: pending, delivered, failures and the last error."""
        pending = self._queue.counts()
        return [
            HookStatus(name=h.name, pending=pending.get(h.name, 0),
                       delivered=self._delivered.get(h.name, 0),
                       failed_attempts=self._failed.get(h.name, 0),
                       last_error=self._last_error.get(h.name),
                       last_delivered_at=self._last_delivered.get(h.name))
            for h in self._hooks()
        ]  # fmt: skip

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with httpx.AsyncClient() as client:
            while True:
                self._wake.clear()
                wait = _PAUSE_CAP_S
                for hook in self._hooks():
                    wait = min(wait, await self._drain(hook, client))
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=min(wait, 1.0))

    async def _drain(self, hook: NotifyHook, client: httpx.AsyncClient) -> float:
        """Deliver `hook`'s queue in order; seconds until its head is due again (0: empty)."""
        while (head := self._queue.head(hook.name)) is not None:
            ident, body, attempts, next_at = head
            now = self._clock()
            if next_at > now:
                return next_at - now
            try:
                await self._deliver(hook, body, client)
            except DeliveryFailed as exc:
                pause = min(_PAUSE_CAP_S, 2.0 ** min(attempts, 16))
                self._queue.retry_later(ident, str(exc), now + pause)
                self._failed[hook.name] = self._failed.get(hook.name, 0) + 1
                if self._last_error.get(hook.name) != str(exc):
                    log.warning("notification %s: %s (retrying in %.0f s)", hook.name, exc, pause)
                self._last_error[hook.name] = str(exc)
                return pause
            self._queue.done(ident)
            self._delivered[hook.name] = self._delivered.get(hook.name, 0) + 1
            self._last_delivered[hook.name] = self._clock()
            if self._last_error.pop(hook.name, None) is not None:
                log.info("notification %s: delivering again", hook.name)
        return _PAUSE_CAP_S

    async def _deliver(
        self, hook: NotifyHook, body: dict[str, object], client: httpx.AsyncClient
    ) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type(DeliveryFailed), reraise=True,
        )  # fmt: skip
        async for attempt in retrying:
            with attempt:
                if hook.url is not None:
                    await _post(client, hook, hook.url, body)
                elif hook.command is not None:
                    await _run_command(hook, hook.command, body)


async def _post(
    client: httpx.AsyncClient, hook: NotifyHook, url: str, body: dict[str, object]
) -> None:
    try:
        response = await client.post(url, json=body, headers=hook.headers,
                                     timeout=hook.timeout_s)  # fmt: skip
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{url}: {exc.__class__.__name__}: {exc}") from exc
    if not response.is_success:
        raise DeliveryFailed(f"{url} answered {response.status_code}")


async def _run_command(hook: NotifyHook, command: tuple[str, ...], body: dict[str, object]) -> None:
    env = dict(os.environ)
    for key in ("alarm", "device", "tag", "severity", "transition", "state", "message", "value"):
        env[f"TAGWAY_ALARM_{key.upper()}"] = "" if body.get(key) is None else str(body[key])
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
    except OSError as exc:
        raise DeliveryFailed(f"cannot run {command[0]}: {exc}") from exc
    try:
        _, err = await asyncio.wait_for(
            process.communicate(json.dumps(body).encode()), hook.timeout_s
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise DeliveryFailed(f"{command[0]} did not finish in {hook.timeout_s:g} s") from None
    if process.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise DeliveryFailed(f"{command[0]} exited {process.returncode} {detail[0]}".strip())
