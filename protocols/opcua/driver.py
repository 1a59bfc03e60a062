"""`OpcUaDriver`: subscriptions by default, polling as a fallback, reconnects that always recover.

    async with OpcUaDriver(config) as driver:
        await driver.run(sink)              # until cancelled
    await driver.write("speed_sp", 1450)    # from another task, while connected

One `run()` holds two named tasks in a TaskGroup: the link loop (connect, subscribe, poll, watch,
reconnect with jittered backoff) and the delivery loop (buffer -> sink). They meet at the
`ReadingBuffer`, so the network side never waits for the sink and the sink never sees a
notification twice.

While the link is down every tag gets a bad reading with the reason, once when the link is lost
and again after each failed attempt, so an outage is visible in the data and in the latest-value
cache rather than a silent gap. The `Link` carries the state, the reconnect count and the last
error.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from asyncua import ua

from protocols.backoff import Backoff, BackoffPolicy
from protocols.driver import ConnectionState, DriverState, Sink
from protocols.errors import (
    CodecError,
    ConnectError,
    DeviceError,
    DeviceTimeout,
    DriverConfigError,
    WriteError,
)
from protocols.opcua.buffer import ReadingBuffer
from protocols.opcua.codec import plain_value, quality_of, status_reason
from protocols.opcua.config import OpcUaDeviceConfig, OpcUaTag
from protocols.opcua.polling import Poller
from protocols.opcua.session import ServerSession
from protocols.opcua.subscription import ItemState, MonitoredItems
from protocols.reading import Quality, Reading, Value, now_us

_log = logging.getLogger(__name__)

_LINK_ERRORS = (ConnectError, DeviceError, DeviceTimeout)
_STABLE_S = 10.0  # a session that lasted this long resets the reconnect backoff


class OpcUaDriver(DriverState):
    """Reads one OPC UA server and delivers `list[Reading]` batches to a sink.

    Args:
        config: the device and its tags.
        backoff: the reconnect backoff; by default 0.5 s doubling up to `reconnect_max_delay_s`.
    """

    def __init__(self, config: OpcUaDeviceConfig, *, backoff: BackoffPolicy | None = None) -> None:
        self.config = config
        super().__init__(config.name)
        self._buffer = ReadingBuffer(
            limit=config.queue_limit, counters=self._counters, device=config.name
        )
        self._monitored = MonitoredItems(
            config=config, buffer=self._buffer, counters=self._counters
        )
        self._poller = Poller(config=config, buffer=self._buffer, counters=self._counters)
        self._items: dict[str, ItemState] = {
            item.tag.name: item for item in [*self._monitored.items, *self._poller.items]
        }
        policy = backoff or BackoffPolicy(base=0.5, cap=config.reconnect_max_delay_s)
        self._backoff = Backoff(policy)
        self._session: ServerSession | None = None
        self._previous_token: ua.NodeId | None = None
        self.session_resumed = False
        """Whether the last connect resumed the previous session (Part 4, 6.7) instead of
        creating a new one (which loses what the server queued while the link was down)."""
        self._state_dir: Path | None = config.session_state_dir
        self._own_state_dir = False

    @property
    def subscription_id(self) -> int | None:
        """The server's id of our subscription (kept across a session resume), if any."""
        return self._monitored.subscription_id

    @property
    def decoded(self) -> dict[str, int]:
        """DataChangeNotifications decoded by the fast path and by asyncua, for diagnostics."""
        return dict(self._monitored.decoded)

    async def __aenter__(self) -> Self:
        if self._link.state is ConnectionState.CLOSED:
            raise RuntimeError(f"{self.name}: driver was closed; build a new one")
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="tagway-opcua-"))
            self._own_state_dir = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._own_state_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
        self._link.to(ConnectionState.CLOSED)

    async def run(self, sink: Sink) -> None:
        """Read the server and deliver batches to `sink` until cancelled; reconnect as needed."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._deliver(sink), name=f"opcua-deliver-{self.name}")
            group.create_task(self._link_loop(), name=f"opcua-link-{self.name}")

    async def write(self, tag: str, value: Value) -> Value:
        """Write a setpoint as the node's DataType and read it back; the value read back.

        Raises `DriverConfigError` for an unknown or read-only tag, `CodecError` when the value
        does not fit the node's type, and `WriteError` when the server refuses or is unreachable
        or the value read back is not good.
        """
        item = self._items.get(tag)
        if item is None:
            raise DriverConfigError(f"{self.name}: no tag {tag!r}")
        if not item.tag.writable:
            raise DriverConfigError(f"{self.name}.{tag} is not writable (set writable: true)")
        session = self._session
        if session is None or self._link.state is not ConnectionState.CONNECTED:
            raise WriteError(f"{self.name}.{tag}: not connected ({self._link.state})")
        if item.node is None:
            raise WriteError(f"{self.name}.{tag}: node {item.tag.node_id} is not on this server")
        try:
            await session.write_value(item.node, value)
            (back,) = await session.read([item.node])
        except _LINK_ERRORS as exc:
            raise WriteError(f"{self.name}.{tag}: {exc}") from exc
        read_back = plain_value(back.Value.Value if back.Value is not None else None)
        if quality_of(back.StatusCode) is not Quality.GOOD or read_back is None:
            raise WriteError(
                f"{self.name}.{tag}: written, but read back {status_reason(back.StatusCode)}"
            )
        return read_back

    async def _deliver(self, sink: Sink) -> None:
        while True:
            batch = await self._buffer.get()
            self._counters.readings += len(batch)  # counted when handed over, as in Modbus
            await sink(batch)

    async def _link_loop(self) -> None:
        if self._state_dir is None:
            raise RuntimeError(f"{self.name}: use the driver as an async context manager")
        state_file = self._state_dir / f"{_safe(self.name)}.session.json"
        while True:
            self._link.to(ConnectionState.CONNECTING)
            try:
                session = await ServerSession.open(
                    self.config,
                    self._counters,
                    state_file=state_file,
                    previous_token=self._previous_token,
                )
            except _LINK_ERRORS as exc:
                await self._outage(str(exc))
                continue
            self._previous_token = session.token
            self.session_resumed = session.resumed
            started = time.monotonic()
            try:
                reason = await self._serve(session)
            except _LINK_ERRORS as exc:
                reason = str(exc)
            except BaseException:
                self._session = None
                await session.close()  # stopping: an orderly goodbye, the server frees our session
                raise
            self._session = None
            await session.abandon()  # lost: leave the session on the server for the resume
            if time.monotonic() - started >= _STABLE_S:
                self._backoff.reset()  # a flapping server keeps backing off; a stable one resets
            await self._outage(reason)

    async def _serve(self, session: ServerSession) -> str:
        """Set up and run one session; returns why it ended."""
        bad = await self._prepare(session)
        bad += await self._monitored.attach(session)
        self._session = session
        self._link.to(ConnectionState.CONNECTED)
        self._buffer.put(bad)
        async with asyncio.TaskGroup() as group:
            poller = group.create_task(self._poll(session), name=f"opcua-poll-{self.name}")
            await self._watch(session)
            poller.cancel()
        return session.lost_reason

    async def _prepare(self, session: ServerSession) -> list[Reading]:
        """Resolve every tag's node on this server and learn units; bad readings for failures."""
        bad: list[Reading] = []
        for item in self._items.values():
            try:
                item.node = session.resolve(item.tag.node)
            except CodecError as exc:
                item.node = None
                self._counters.errors += 1
                bad.append(self._bad(item.tag, str(exc)))
        await self._learn_units(session)
        return bad

    async def _learn_units(self, session: ServerSession) -> None:
        lookup: list[ItemState] = []
        for item in self._items.values():
            item.unit = item.tag.unit
            if item.unit is None and item.node is not None and self.config.read_engineering_units:
                lookup.append(item)
        if not lookup:
            return
        try:
            units = await session.engineering_units([i.node for i in lookup if i.node is not None])
        except DeviceError as exc:
            _log.warning("%s: cannot read EngineeringUnits: %s", self.name, exc)
            return
        for item, unit in zip(lookup, units, strict=True):
            item.unit = unit

    async def _poll(self, session: ServerSession) -> None:
        try:
            await self._poller.run(session)
        except _LINK_ERRORS as exc:
            session.mark_lost(f"poll failed: {exc}")

    async def _watch(self, session: ServerSession) -> None:
        """Return when the session is lost: asyncua reported it, or the subscription went silent."""
        watching_subscription = bool(self._monitored.items)
        while not session.lost.is_set():
            try:
                async with asyncio.timeout(self.config.keepalive_interval_s):
                    await session.lost.wait()
            except TimeoutError:
                pass
            silent = self._monitored.silent_for()
            if watching_subscription and silent > self._monitored.silence_limit():
                session.mark_lost(f"no publish response or keep-alive for {silent:.1f} s")

    async def _outage(self, reason: str) -> None:
        _log.warning("%s: link down: %s", self.name, reason)
        self._link.to(ConnectionState.BACKOFF, error=reason)
        self._buffer.put([self._bad(tag, f"link down: {reason}") for tag in self.config.tags])
        await asyncio.sleep(self._backoff.next_delay())

    def _bad(self, tag: OpcUaTag, reason: str) -> Reading:
        item = self._items[tag.name]
        return Reading(
            self.name, tag.name, now_us(), 0, Quality.BAD, item.unit, self.config.simulated, reason
        )


def _safe(name: str) -> str:
    """A file-name-safe form of a device name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
