"""Alarm shelving: an operator silences one alarm for a stated time, and it comes back by itself.

A shelved alarm is still evaluated, its transitions still go to the outbox and the cloud, and the
local API shows it with who shelved it, why and until when; what stops is its annunciation (the
notification hooks of `edge.notify`). Shelving is always time-limited (at most `MAX_SHELVE_S`),
and every shelve, unshelve and expiry is written to the audit in the alarm-state file, with the
shelf itself, so both survive a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from typing import Final

from edge.alarm_store import AlarmStore
from edge.alarms import Shelf, ShelfAction, UnknownAlarm
from edge.errors import EdgeError

MAX_SHELVE_S: Final = 24 * 3600
_US_PER_S: Final = 1_000_000


class ShelveRefused(EdgeError, ValueError):
    """A shelve request that cannot be honoured (the message says why)."""


class AlarmShelf:
    """The shelved alarms of one agent.

    Args:
        store: the alarm-state file, which keeps the shelves and their audit.
        known: the names of the alarms that exist now (called at each request: rules reload).
        clock: wall-clock µs (injected for tests).
    """

    def __init__(
        self,
        store: AlarmStore,
        known: Callable[[], Container[str]],
        *,
        clock: Callable[[], int] = lambda: time.time_ns() // 1_000,
    ) -> None:
        self._store = store
        self._known = known
        self._clock = clock
        self._shelves = store.load_shelves()

    def shelve(self, name: str, *, duration_s: float, by: str, reason: str) -> Shelf:
        """Shelve `name` for `duration_s` seconds (replacing a running shelf)."""
        self._check_known(name)
        if not 0 < duration_s <= MAX_SHELVE_S:
            raise ShelveRefused(
                f"shelve {name!r}: the duration must be more than 0 and at most "
                f"{MAX_SHELVE_S // 3600} hours (got {duration_s:g} s)"
            )
        if not reason.strip():
            raise ShelveRefused(f"shelve {name!r}: say why (a reason is required for the audit)")
        now = self._clock()
        shelf = Shelf(until=now + int(duration_s * _US_PER_S), by=by, reason=reason.strip(),
                      at=now)  # fmt: skip
        action = ShelfAction(at=now, rule=name, action="shelved", by=by, reason=shelf.reason,
                             until=shelf.until)  # fmt: skip
        self._store.record_shelf(action)
        self._shelves[name] = shelf
        return shelf

    def unshelve(self, name: str, *, by: str, reason: str = "") -> bool:
        """Put `name` back before its time; False when it was not shelved."""
        self._check_known(name)
        self.expire()
        if name not in self._shelves:
            return False
        action = ShelfAction(at=self._clock(), rule=name, action="unshelved", by=by,
                             reason=reason)  # fmt: skip
        self._store.record_shelf(action)
        del self._shelves[name]
        return True

    def expire(self) -> list[str]:
        """End the shelves whose time ran out (audited as `expired`); their names."""
        now = self._clock()
        ended = [name for name, shelf in self._shelves.items() if shelf.until <= now]
        for name in ended:
            action = ShelfAction(at=now, rule=name, action="expired", by="tagway",
                                 reason="shelving time ran out")  # fmt: skip
            self._store.record_shelf(action)
            del self._shelves[name]
        return ended

    def get(self, name: str) -> Shelf | None:
        """The running shelf of `name`, if any."""
        shelf = self._shelves.get(name)
        return shelf if shelf is not None and shelf.until > self._clock() else None

    def is_shelved(self, name: str) -> bool:
        """Whether `name` is shelved now."""
        return self.get(name) is not None

    def audit(self, limit: int = 100) -> list[ShelfAction]:
        """The newest shelving actions, newest first."""
        return self._store.shelf_audit(limit)

    def _check_known(self, name: str) -> None:
        if name not in self._known():
            raise UnknownAlarm(name)
