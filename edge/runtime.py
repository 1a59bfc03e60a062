"""The runtime object: everything one running agent is made of, built once, in one place.

`Agent.run()` opens the resources in dependency order (outbox → stores → broker → uplink →
inference → pipeline → supervisor) and hangs them on one frozen `Runtime`. Everything that serves
the running agent (the local API, the reload, the tasks) takes the runtime, never the agent, so
nothing reaches for a resource that may not exist yet: a field is None only when the config does
not ask for it (no cloud, no embedded broker, no models), never because start-up is unfinished.

The config is the one thing that changes while the agent runs (a reload replaces it as a whole);
`LiveConfig` holds it and the reload history.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.contract import AnyEvent
from cloud.contract.chunk import encode_records
from edge.alarm_store import AlarmStore
from edge.clock import ClockSync
from edge.config import AgentConfig
from edge.credentials import UplinkIdentity
from edge.dead_letters import DeadLetterStore
from edge.notify import Notifier
from edge.pipeline.runner import Pipeline
from edge.reload import ReloadHistory
from edge.shelving import AlarmShelf
from edge.supervisor import Supervisor
from edge.uplink import Uplink
from edge.writes import WriteDoor
from store_forward import AsyncOutbox, Lane

if TYPE_CHECKING:  # imported only when the config uses them
    from edge.inference.model import InferenceStage
    from edge.north.sparkplug_node import SparkplugNode
    from protocols.mqtt.broker import EmbeddedBroker


def agent_version() -> str:
    """The installed tagway version."""
    try:
        return version("tagway")
    except PackageNotFoundError:
        return "0+unknown"


class LiveConfig:
    """The config the agent runs now, the file it came from, and the reloads since start.

    Args:
        config: the validated config at start.
        path: the file `config` was loaded from (None: built in code, so no reload).
    """

    def __init__(self, config: AgentConfig, *, path: Path | None) -> None:
        self._current = config
        self.path = path
        self.reloads = ReloadHistory()

    @property
    def current(self) -> AgentConfig:
        """The running config."""
        return self._current

    def replace(self, config: AgentConfig) -> None:
        """Run `config` from now on (a reload that was applied)."""
        self._current = config


@dataclass(frozen=True, slots=True, kw_only=True)
class Runtime:
    """The resources of one running agent (see the module docstring).

    Args:
        config: the running config and its reloads.
        version: the installed tagway version.
        started_at: Unix time the agent started.
        identity: who the uplink posts as; None for an offline gateway (no `cloud` section).
        outbox: the durable buffer.
        alarm_store: alarm states across restarts.
        dead_letters: MQTT messages that could not be decoded.
        broker: the embedded MQTT broker, when configured.
        inference: the ONNX model stage, when models are configured.
        pipeline: drivers' readings in, committed chunks out.
        uplink: the outbox to the cloud; None for an offline gateway.
        supervisor: the devices' drivers.
        shelf: the alarms an operator shelved.
        notifier: the alarm notification hooks and their queue.
        writes: the write door: every setpoint write passes through it (limits, audit).
        sparkplug: the Sparkplug B edge node (`north.sparkplug`), when configured.
        clock: whether the gateway clock is synchronized, and readings accepted while it was not.
    """

    config: LiveConfig
    version: str = field(default_factory=agent_version)
    started_at: float = field(default_factory=time.time)
    identity: UplinkIdentity | None
    outbox: AsyncOutbox
    alarm_store: AlarmStore
    dead_letters: DeadLetterStore
    broker: EmbeddedBroker | None
    inference: InferenceStage | None
    pipeline: Pipeline
    uplink: Uplink | None
    supervisor: Supervisor
    shelf: AlarmShelf
    notifier: Notifier
    writes: WriteDoor
    sparkplug: SparkplugNode | None = None
    clock: ClockSync = field(default_factory=lambda: ClockSync(()))

    @property
    def gateway_id(self) -> str | None:
        """The cloud's id of this gateway, None when offline."""
        return self.identity.gateway_id if self.identity is not None else None


def event_emitter(
    outbox: AsyncOutbox, uplink: Uplink | None
) -> Callable[[Sequence[AnyEvent]], Awaitable[None]]:
    """A function that puts gateway events (command results, write records, reports) into the
    outbox's event lane, committed when it returns, and wakes the uplink."""

    async def emit(events: Sequence[AnyEvent]) -> None:
        if not events:
            return
        await outbox.append(encode_records([], events), count=len(events), lane=Lane.EVENT)
        if uplink is not None:
            uplink.wake.set()

    return emit
