"""Config reload: what changed between the running config and the file, and what can follow it.

On SIGHUP (`systemctl reload tagway`) the agent reads its config file again with the same loader
as at start. A file that does not validate changes nothing: the agent keeps the config it runs,
logs the loader's message (file:line: field: problem) and counts the rejection. A valid file is
compared with the running config:

- devices: each is added, removed, changed (any field, tags included) or unchanged, by name.
  Only added and changed devices get a new driver; an unchanged device keeps its connection.
- report, derived, alarms: the pipeline follows them from the next batch on.
- gateway, cloud, outbox, local_api, mqtt_broker, models, north: these are open for the life of
  the process (the state directory, the outbox file and its consumers, the uplink's identity, the
  API socket, the embedded broker, the ONNX sessions, the Sparkplug session). A change to them is
  logged as needing a restart and the running values are kept until then.

This module holds no I/O: the agent applies what `plan_reload` decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from edge.config import AgentConfig, Device
from edge.errors import EdgeError

RESTART_SECTIONS = ("gateway", "cloud", "outbox", "local_api", "mqtt_broker", "models", "north")
"""Sections the running agent cannot swap; a change to them waits for a restart."""


class ReloadRejected(EdgeError, ValueError):
    """A new config cannot be applied (it is invalid, or clashes with what needs a restart)."""


@dataclass(frozen=True, slots=True)
class DeviceChanges:
    """The devices of a new config compared with the running ones, by name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @classmethod
    def between(cls, old: Sequence[Device], new: Sequence[Device]) -> DeviceChanges:
        """Compare two device lists; a device is changed when any of its fields differs."""
        before = {d.name: d for d in old}
        after = {d.name: d for d in new}
        return cls(
            added=tuple(n for n in after if n not in before),
            removed=tuple(n for n in before if n not in after),
            changed=tuple(n for n in after if n in before and before[n] != after[n]),
            unchanged=tuple(n for n in after if n in before and before[n] == after[n]),
        )

    @property
    def restarted(self) -> tuple[str, ...]:
        """Devices whose running driver stops: removed and changed."""
        return self.removed + self.changed

    def summary(self) -> str:
        """e.g. ``added 1 (boiler1), removed 0, changed 1 (tank1), unchanged 2``."""
        parts = []
        for word, names in (("added", self.added), ("removed", self.removed),
                            ("changed", self.changed)):  # fmt: skip
            parts.append(f"{word} {len(names)} ({', '.join(names)})" if names else f"{word} 0")
        parts.append(f"unchanged {len(self.unchanged)}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload will do: the config to run from now on and what it leaves for a restart."""

    config: AgentConfig
    devices: DeviceChanges
    needs_restart: tuple[str, ...]


def plan_reload(running: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """The config to run after a reload: `new`, with the running values of the sections that
    need a restart. Raises `ReloadRejected` when the two do not fit together (e.g. a new alarm
    named like an alarm of a model that is kept until the restart)."""
    needs_restart = tuple(s for s in RESTART_SECTIONS if getattr(running, s) != getattr(new, s))
    merged = {name: getattr(new, name) for name in AgentConfig.model_fields}
    merged.update({section: getattr(running, section) for section in needs_restart})
    try:
        config = AgentConfig.model_validate(merged) if needs_restart else new
    except pydantic.ValidationError as exc:
        problems = "; ".join(str(e["msg"]) for e in exc.errors(include_url=False))
        raise ReloadRejected(f"cannot apply with the running {needs_restart}: {problems}") from exc
    return ReloadPlan(config, DeviceChanges.between(running.devices, new.devices), needs_restart)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of one reload, as the log and the local API report it."""

    at: float
    applied: bool
    devices: DeviceChanges | None = None
    needs_restart: tuple[str, ...] = ()
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """For the local API."""
        devices = self.devices
        return {
            "at": self.at, "outcome": "applied" if self.applied else "rejected",
            "error": self.error, "needs_restart": list(self.needs_restart),
            "added": list(devices.added) if devices else [],
            "removed": list(devices.removed) if devices else [],
            "changed": list(devices.changed) if devices else [],
            "unchanged": list(devices.unchanged) if devices else [],
        }  # fmt: skip


@dataclass(slots=True)
class ReloadHistory:
    """Reloads since start: how many were applied or rejected, and the last one."""

    applied: int = 0
    rejected: int = 0
    last: ReloadResult | None = None
    pending_restart: tuple[str, ...] = field(default=())

    def record(self, result: ReloadResult) -> ReloadResult:
        """Count `result` and keep it as the last one."""
        if result.applied:
            self.applied += 1
            self.pending_restart = result.needs_restart
        else:
            self.rejected += 1
        self.last = result
        return result
