"""Modbus TCP servers: one listening port per simulated device (as if each had its own IP).

Built on pymodbus 3.16's `SimDevice` datastore: the four tables are separate blocks, and the
device's `action` hook runs on every request that passes pymodbus's address checks. The hook
refreshes the register image from the model, answers injected exception codes, holds answers
back for the slow-answer fault, and turns setpoint writes into model writes.

Requests are counted per device and function code from the PDU trace (before any check), so a
driver test can prove how many requests a poll needed. A link drop closes the listener and
every connection; when it ends, the device listens again on the same port.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sim.errors import ServeError
from firmware_sim.faults import LinkState
from firmware_sim.modbus_frames import FrameModbusDevice
from firmware_sim.register_image import BIT_TABLES, TABLE_OF_FUNCTION, RegisterImage
from firmware_sim.register_map import Table
from firmware_sim.simulation import PlantModel

log = logging.getLogger(__name__)

Framing = Literal["socket", "rtu"]
_FRAMERS = {"socket": FramerType.SOCKET, "rtu": FramerType.RTU}


class ModbusDevice:
    """One simulated device served over Modbus on its own TCP port."""

    def __init__(
        self, *, model: PlantModel, device: str, host: str, port: int, framing: Framing
    ) -> None:
        """Prepare the server; call `listen()` to bind.

        Args:
            model: the plant model the registers are read from and written to.
            device: the device's name in the model.
            host: address to bind.
            port: port to bind; 0 picks a free one, kept across link drops.
            framing: `socket` (Modbus TCP, MBAP header) or `rtu` (RTU frames with CRC over TCP).
        """
        self.model = model
        self.device = device
        self.host = host
        self.port = port
        self.framing = framing
        self.image = RegisterImage(model.maps[device])
        self.unit_id = model.maps[device].unit_id
        self.requests: Counter[int] = Counter()
        self.state = LinkState.DROPPED
        self._server: ModbusTcpServer | None = None
        self._held: set[asyncio.Task[object]] = set()
        self._link_lock = asyncio.Lock()  # the watcher and a test may both move the link
        self._sim_device = SimDevice(
            id=self.unit_id,
            simdata=(
                self._block("coil"),
                self._block("discrete_input"),
                self._block("holding_register"),
                self._block("input_register"),
            ),
            action=self._on_request,
        )

    def _block(self, table: Table) -> list[SimData]:
        initial = self.image.initial(table)
        kind = DataType.BITS if table in BIT_TABLES else DataType.REGISTERS
        return [SimData(0, values=initial, datatype=kind)]

    async def listen(self) -> None:
        """Bind and accept connections (again, after a link drop)."""
        async with self._link_lock:
            if self.state is LinkState.DROPPED:
                await self._listen()

    async def _listen(self) -> None:
        server = ModbusTcpServer(
            self._sim_device,
            address=(self.host, self.port),
            framer=_FRAMERS[self.framing],
            trace_pdu=self._count,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise ServeError(f"Modbus {self.device}: cannot listen on port {self.port}") from exc
        listener = server.transport  # the asyncio.Server pymodbus created
        if isinstance(listener, asyncio.Server):
            self.port = listener.sockets[0].getsockname()[1]
        self._server = server
        self.state = LinkState.LISTENING

    async def drop(self) -> None:
        """Close the listener and every open connection (the device's link is down)."""
        async with self._link_lock:
            await self._drop()

    async def _drop(self) -> None:
        for task in self._held:
            task.cancel()
        self._held.clear()
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        self.state = LinkState.DROPPED

    def _count(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests[pdu.function_code] += 1
        return pdu

    async def _on_request(  # noqa: PLR0917 - the signature pymodbus's SimDevice.action calls
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        del start_address
        table = TABLE_OF_FUNCTION[function_code]
        faults = self.model.faults
        if (delay := faults.delay_s(self.device)) > 0:
            await self._hold(delay)
        if (code := faults.modbus_exception(self.device, table, address, count)) is not None:
            return ExcCodes(code)
        fresh = self.image.refresh(
            table, self.model.generation, lambda: self.model.reported(self.device)
        )
        if fresh is not None:
            registers[: len(fresh)] = fresh
        if set_values is None:
            return None
        return self._write(table, address, set_values, registers)

    def _write(
        self, table: Table, address: int, written: list[int] | list[bool], registers: list[int]
    ) -> ExcCodes | None:
        current = registers if table not in BIT_TABLES else []
        values = self.image.decode_write(table, address, written, current)
        if values is None:
            return ExcCodes.ILLEGAL_ADDRESS
        for tag, value in values.items():
            self.model.write(self.device, tag, value)
        return None

    async def _hold(self, delay: float) -> None:
        # The request task is pymodbus's; remember it so a link drop can end it with the link.
        task = asyncio.current_task()
        if task is None:
            return
        self._held.add(task)
        try:
            await asyncio.sleep(delay)
        finally:
            self._held.discard(task)


class ModbusPlantServer:
    """All devices' Modbus servers, and the watcher that drops and restores their links."""

    def __init__(
        self,
        *,
        model: PlantModel,
        host: str = "127.0.0.1",
        base_port: int = 0,
        framing: Framing = "socket",
        frames: bool = False,
    ) -> None:
        """One `ModbusDevice` per model device; ports `base_port + i`, or free ones if 0.

        With `frames`, each device is a `FrameModbusDevice` instead: its registers frozen at
        start and served from prepared responses (cheap, for benchmarks; no faults, no writes).
        """
        if frames and framing != "socket":
            raise ServeError("prepared Modbus frames are served over Modbus TCP only, not RTU")
        self.model = model
        self.devices: dict[str, ModbusDevice | FrameModbusDevice] = {}
        for i, name in enumerate(model.devices):
            port = base_port + i if base_port else 0
            self.devices[name] = (
                FrameModbusDevice(model=model, device=name, host=host, port=port)
                if frames
                else ModbusDevice(model=model, device=name, host=host, port=port, framing=framing)
            )

    async def start(self) -> None:
        """Bind every device's port."""
        for device in self.devices.values():
            if not self.model.faults.link_down(device.device):
                await device.listen()

    async def stop(self) -> None:
        """Close every port and connection."""
        for device in self.devices.values():
            await device.drop()

    async def watch_links(self, interval: float = 0.05) -> None:
        """Follow link-drop faults until cancelled: drop or restore each device's port."""
        while True:
            await self.watch_links_once()
            await asyncio.sleep(interval)

    async def watch_links_once(self) -> None:
        """Bring every device's port in line with the link faults in force now."""
        for device in self.devices.values():
            down = self.model.faults.link_down(device.device)
            if down and device.state is LinkState.LISTENING:
                await device.drop()
            elif not down and device.state is LinkState.DROPPED:
                try:
                    await device.listen()
                except ServeError:
                    # The port may linger for a moment after a drop; the next round retries.
                    log.warning("Modbus %s: port %d not free yet", device.device, device.port)

    def request_counts(self) -> dict[str, dict[int, int]]:
        """Requests received per device and function code since start (or the last reset)."""
        return {name: dict(dev.requests) for name, dev in self.devices.items()}

    def reset_counts(self) -> None:
        """Start counting from zero."""
        for device in self.devices.values():
            device.requests.clear()
