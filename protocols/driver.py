"""The driver contract: what every protocol driver (Modbus, OPC UA, MQTT) looks like from outside.

A driver is built from a typed, frozen config and used as an async context manager. Inside it,
`run(sink)` reads the device for as long as the task runs: each poll or notification batch is
handed to `sink` as one `list[Reading]`. The driver reconnects by itself with capped, jittered
backoff (`protocols.backoff`); a failed read becomes bad-quality readings with the reason, never an
exception out of `run`. Its connection state is an explicit state machine and its counters are
plain integers the supervisor and local API read.

    async with ModbusDriver(config) as driver:
        await driver.run(sink)          # until cancelled
    await driver.write("speed_sp", 1450)   # while running, from another task
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from types import TracebackType
from typing import Final, Protocol, Self, runtime_checkable

from protocols.reading import Reading, Value

Sink = Callable[[list[Reading]], Awaitable[None]]
"""Where a driver delivers its batches. Awaited, so a slow consumer applies back-pressure instead of
the driver buffering without bound."""


class ConnectionState(StrEnum):
    """Where a driver's link is. Transitions are explicit; see `ALLOWED_TRANSITIONS`."""

    IDLE = "idle"  # built, not started
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"  # lost or refused; waiting before the next attempt
    CLOSED = "closed"  # stopped for good


ALLOWED_TRANSITIONS: Final[dict[ConnectionState, frozenset[ConnectionState]]] = {
    ConnectionState.IDLE: frozenset({ConnectionState.CONNECTING, ConnectionState.CLOSED}),
    ConnectionState.CONNECTING: frozenset(
        {ConnectionState.CONNECTED, ConnectionState.BACKOFF, ConnectionState.CLOSED}
    ),
    ConnectionState.CONNECTED: frozenset({ConnectionState.BACKOFF, ConnectionState.CLOSED}),
    ConnectionState.BACKOFF: frozenset({ConnectionState.CONNECTING, ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A driver tried a state change the table forbids: a bug in the driver, not in the plant."""


class Link:
    """The connection state machine of one driver, with the facts an operator asks about.

    Args:
        name: the device name, for messages.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = ConnectionState.IDLE
        self.since = time.time()
        self.reconnects = 0
        self.last_error: str | None = None
        """What is wrong now; None while the link is healthy (cleared when it connects)."""
        self.last_error_at: float | None = None
        """When the last error happened (seconds since the epoch), also after recovery."""
        self.recovered_from: str | None = None
        """The error the link last recovered from (at `last_error_at`), for the record."""
        self._ever_connected = False

    def to(self, new: ConnectionState, *, error: str | None = None) -> None:
        """Move to `new`; raises `InvalidTransition` if the table forbids it."""
        if new == self.state:
            return
        if new not in ALLOWED_TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.name}: {self.state} -> {new} is not allowed")
        if new is ConnectionState.CONNECTED:
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
        if error is not None:
            self.error(error)
        if new is ConnectionState.CONNECTED and self.last_error is not None:
            # Healthy again: the old error is history, not the current state.
            self.recovered_from, self.last_error = self.last_error, None
        self.state = new
        self.since = time.time()

    def error(self, error: str) -> None:
        """Record what is wrong now, without a state change (a refusal while connected)."""
        self.last_error = error
        self.last_error_at = time.time()


@dataclass(slots=True)
class DriverCounters:
    """Monotonic counters of one driver since it started. Nothing is dropped without a count."""

    requests: int = 0  # requests sent (Modbus PDUs, OPC UA reads) or messages received (MQTT)
    errors: int = 0  # device errors: exception responses, Bad status, undecodable payloads
    timeouts: int = 0
    readings: int = 0  # readings handed to the sink, bad ones included
    dropped: int = 0  # values lost before reaching the sink (queue overflow, dead letters)
    overruns: int = 0  # poll cycles that started late because the previous one ran long

    def as_dict(self) -> dict[str, int]:
        """The counters by name, for the local API and metrics."""
        return asdict(self)


class DriverState:
    """What every driver exposes the same way: its name, its link state machine and its counters.

    Drivers inherit it rather than repeat the three properties; the `Driver` protocol is what
    the supervisor relies on.

    Args:
        name: the device (or source) name.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._link = Link(name)
        self._counters = DriverCounters()

    @property
    def name(self) -> str:
        """The device name readings carry."""
        return self._name

    @property
    def link(self) -> Link:
        """The connection state machine, reconnect count and last error."""
        return self._link

    @property
    def counters(self) -> DriverCounters:
        """Monotonic counters since start."""
        return self._counters


@runtime_checkable
class Driver(Protocol):
    """What the supervisor needs from any protocol driver."""

    @property
    def name(self) -> str:
        """The device name readings carry."""
        ...

    @property
    def link(self) -> Link:
        """The connection state machine, reconnect count and last error."""
        ...

    @property
    def counters(self) -> DriverCounters:
        """Monotonic counters since start."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def run(self, sink: Sink) -> None:
        """Read the device and deliver batches to `sink` until cancelled; reconnect as needed."""
        ...

    async def write(self, tag: str, value: Value) -> Value:
        """Write a setpoint with the tag's encoding and read it back; the value read back.

        Raises `WriteError` if it does not stick.
        """
        ...
