"""The supervisor: one named task per configured device, each restarted with capped, jittered
backoff when its driver fails, so one failing device never stops another.

`_supervise` and `TaskSupervisor` are the places in the agent that catch broad exceptions: they
log and count what they caught, and restart the driver or the auxiliary task (uplink, channel,
UNS...). Drivers, the MQTT broker and onnxruntime are imported where they are first needed: a
gateway that reads only Modbus does not pay the memory of asyncua and amqtt (tens of MB).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import assert_never

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never

from edge.clock import ClockCheck, ClockFault, ClockSync, ClockWindow
from edge.config import Device, ModbusDevice, MqttSource, OpcUaDevice
from edge.dead_letters import DeadLetterStore
from edge.errors import EdgeError
from protocols.backoff import Backoff, BackoffPolicy
from protocols.driver import ConnectionState, Driver, Sink
from protocols.reading import Reading, Value, now_us

log = logging.getLogger(__name__)

_GOOD_RUN_S = 60.0  # a driver that ran this long before failing starts its backoff small again
_NO_CLOCK_CHECK = ClockWindow(max_ahead_us=2**62, max_age_us=2**62)


@dataclass(slots=True)
class DriverSlot:
    """One configured device and the driver currently serving it."""

    config: Device
    driver: Driver | None = None  # None between a failure and the restart
    restarts: int = 0
    crashes: int = 0
    last_crash: str | None = None
    last_crash_at: float | None = None
    started_at: float = field(default_factory=time.time)
    clock: ClockCheck = field(default_factory=lambda: ClockCheck(_NO_CLOCK_CHECK, ClockFault.KEEP))
    """The plausibility check of this device's timestamps, and its count (kept over restarts)."""

    @property
    def name(self) -> str:
        """The device name."""
        return self.config.name

    @property
    def state(self) -> str:
        """The link state, or `stopped` between restarts."""
        return self.driver.link.state.value if self.driver is not None else "stopped"

    @property
    def healthy(self) -> bool:
        """Connected right now."""
        return self.driver is not None and self.driver.link.state is ConnectionState.CONNECTED

    def error(self) -> SlotError:
        """What is wrong now, and what the device last recovered from.

        A healthy link has no current error. A crash belongs to the driver instance before the
        restart, so it is current until the new instance connects, then history.
        """
        link = self.driver.link if self.driver is not None else None
        if link is not None and (link.last_error or link.recovered_from):
            return SlotError(link.last_error, link.last_error_at, link.recovered_from)
        if self.last_crash is None:
            return SlotError(None, None, None)
        if self.healthy:
            return SlotError(None, self.last_crash_at, self.last_crash)
        return SlotError(self.last_crash, self.last_crash_at, None)


@dataclass(frozen=True, slots=True)
class SlotError:
    """A device's error as operators see it (local API, `tagway status`, status documents).

    Attributes:
        current: what is wrong now; None while the device is healthy.
        at: when the last error happened (seconds since the epoch).
        recovered_from: the error the device has since recovered from, if any.
    """

    current: str | None
    at: float | None
    recovered_from: str | None


class DeviceNotRunning(EdgeError, LookupError):
    """A write named a device that has no running driver."""


class TaskSupervisor:
    """Runs the agent's auxiliary tasks (uplink, channel, UNS, fleet, notifications...) in `group`,
    each restarted after a capped, jittered backoff when it raises: a bug in one of them never
    stops the drivers or the pipeline. A stop (cancellation) still stops.

    Args:
        group: the agent's task group; each task runs in it under its own name.
        backoff: the restart policy (the drivers' one).
    """

    def __init__(self, *, group: asyncio.TaskGroup, backoff: BackoffPolicy) -> None:
        self.restarts: dict[str, int] = {}
        self.last_failure: dict[str, str] = {}
        self._group = group
        self._backoff = backoff

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` as task `name`; call it again after a backoff each time it raises."""
        self.restarts.setdefault(name, 0)
        return self._group.create_task(self._supervise(name, run), name=name)

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(self._backoff)
        started = time.monotonic()

        def wait(_: RetryCallState) -> float:
            if time.monotonic() - started > _GOOD_RUN_S:
                backoff.reset()
            return backoff.next_delay()

        def failed(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            self.last_failure[name] = f"{type(exc).__name__}: {exc}"
            log.error("task %s failed; restarting", name, exc_info=exc)

        # Exception, not BaseException: a CancelledError is re-raised by tenacity at once.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception), wait=wait, stop=stop_never,
            before_sleep=failed, reraise=True,
        )  # fmt: skip
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.restarts[name] += 1
                started = time.monotonic()
                await run()


class Supervisor:
    """Runs the devices' drivers in `group`, delivering their readings to `sink`.

    Args:
        group: the agent's task group; each driver runs in it as task `driver:<name>`.
        sink: where drivers deliver readings (the pipeline's `accept`).
        dead_letters: where MQTT sources put messages they cannot decode.
        backoff: the restart policy for failed drivers.
        clock_window: the plausible window of source timestamps (None: no check).
        clock_fault: the default policy for readings outside it (a device may set its own).
        clock_sync: counts readings accepted while the gateway clock is not synchronized.
    """

    def __init__(
        self,
        *,
        group: asyncio.TaskGroup,
        sink: Sink,
        dead_letters: DeadLetterStore,
        backoff: BackoffPolicy,
        clock_window: ClockWindow | None = None,
        clock_fault: ClockFault = ClockFault.RESTAMP,
        clock_sync: ClockSync | None = None,
    ) -> None:
        self.slots: dict[str, DriverSlot] = {}
        self._group = group
        self._sink = sink
        self._clock_window = clock_window
        self._clock_fault = clock_fault
        self._clock_sync = clock_sync
        self._dead_letters = dead_letters
        self._backoff = backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.tasks = TaskSupervisor(group=group, backoff=backoff)  # the auxiliary tasks

    def start(self, devices: Iterable[Device]) -> None:
        """Start a supervised driver for each device (replacing a slot of the same name)."""
        for device in devices:
            slot = self.slots[device.name] = DriverSlot(device)
            if self._clock_window is not None:
                slot.clock = ClockCheck(self._clock_window, device.clock_fault or self._clock_fault)
            self._tasks[slot.name] = self._group.create_task(
                self._supervise(slot), name=f"driver:{slot.name}"
            )

    async def stop(self, names: Iterable[str], *, forget: bool = False) -> None:
        """Stop these devices' drivers: cancel, and wait until they have closed. With `forget`,
        their slots go too (a device removed from the config)."""
        tasks = [self._tasks.pop(name) for name in names if name in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if forget:
            for name in names:
                self.slots.pop(name, None)

    async def stop_all(self) -> None:
        """Stop every driver (shutdown: drivers stop before the pipeline's last flush)."""
        await self.stop(tuple(self._tasks))

    async def write(self, device: str, tag: str, value: Value) -> Value:
        """Write a setpoint through the device's running driver; the value read back.

        Only `edge.writes.WriteDoor` calls this: the door checks the tag's limits and audits.

        Raises:
            DeviceNotRunning: no such device, or its driver is between restarts.
            ProtocolError: the driver refused or the device did not confirm.
        """
        slot = self.slots.get(device)
        if slot is None or slot.driver is None:
            raise DeviceNotRunning(f"device {device!r} is not running")
        return await slot.driver.write(tag, value)

    async def _supervise(self, slot: DriverSlot) -> None:
        """Run one driver forever; restart it with backoff when it fails."""
        backoff = Backoff(self._backoff)
        sink = self._checked_sink(slot)
        while True:
            driver = self._build_driver(slot.config)
            slot.driver = driver
            started = time.monotonic()
            try:
                async with driver:
                    await driver.run(sink)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the supervisor is where failures stop
                slot.crashes += 1
                slot.last_crash = f"{type(exc).__name__}: {exc}"
                slot.last_crash_at = time.time()
                log.exception("driver %s failed; restarting", slot.name)
            if time.monotonic() - started > _GOOD_RUN_S:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())
            slot.restarts += 1

    def _checked_sink(self, slot: DriverSlot) -> Sink:
        """The pipeline's sink behind this device's clock check (and the sync count)."""
        check, sync, sink = slot.clock, self._clock_sync, self._sink

        async def checked(readings: list[Reading]) -> None:
            readings = check(readings, now_us())
            if sync is not None:
                sync.count(len(readings))
            await sink(readings)

        return checked

    def _build_driver(self, device: Device) -> Driver:
        if isinstance(device, ModbusDevice):
            from protocols.modbus.driver import ModbusDriver  # noqa: PLC0415 - see the top

            return ModbusDriver(device)
        if isinstance(device, OpcUaDevice):
            from protocols.opcua.driver import OpcUaDriver  # noqa: PLC0415

            return OpcUaDriver(device)
        if isinstance(device, MqttSource):
            from protocols.mqtt.driver import MqttDriver  # noqa: PLC0415

            return MqttDriver(device, dead_letters=self._dead_letters.put)
        assert_never(device)
