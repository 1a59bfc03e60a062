"""The pymodbus boundary: one async client per device, raw read responses, errors translated.

Decisions taken after reading pymodbus 3.16.1:

- `reconnect_delay=0` turns off pymodbus's own reconnect task (`ModbusProtocol.connection_lost`
  starts one otherwise); the driver reconnects with `protocols.backoff`, so the two never fight.
- `retries=0` in pymodbus: its retry loop re-sends even after the link is gone and waits a full
  timeout each time. `ModbusClient` retries itself and stops as soon as the link is down.
  pymodbus still closes a link after 3 consecutive unanswered requests, which we want: the
  close arrives through `trace_connect(False)` and the driver reconnects.
- Read responses are decoded into our own PDU classes (`DecodePDU.register`, per client) that
  keep the payload bytes: pymodbus's own classes unpack each register into a Python int and
  format the whole list for a debug line even when debug logging is off.
- The unit id keyword is `device_id` (`slave` is gone in 3.x). An exception response is a
  returned `ExceptionResponse` (`isError()`), not a raised error; a timeout is a raised
  `ModbusIOException`; a request on a closed client raises `ConnectionException`.
- RTU over TCP is `AsyncModbusTcpClient(framer=FramerType.RTU)`; serial RTU needs pyserial.
- Its `asyncio.wait_for` can swallow a cancellation on Python 3.11: see `raise_if_cancelling`.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from protocols.driver import DriverCounters
from protocols.errors import (
    ConnectError,
    DeviceError,
    DeviceTimeout,
    DriverConfigError,
    WriteError,
)
from protocols.modbus.config import ModbusDeviceConfig, Table

EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
ILLEGAL_DATA_ADDRESS: Final = 2
MAX_REGISTERS_PER_WRITE: Final = 123  # Modbus spec, FC16
FUNCTION_CODES: Final[dict[str, int]] = {
    "coil": 1,
    "discrete_input": 2,
    "holding_register": 3,
    "input_register": 4,
}


class _RawReadResponse(ModbusPDU):
    """A read response that keeps its data bytes instead of a list of ints."""

    rtu_byte_count_pos = 2  # RTU framing finds the length in the byte count field

    def __init__(self, dev_id: int = 0, transaction_id: int = 0) -> None:
        super().__init__(dev_id=dev_id, transaction_id=transaction_id)
        self.payload = b""

    def decode(self, data: bytes) -> None:
        """Keep the data bytes after the byte count."""
        byte_count = data[0]
        self.payload = bytes(data[1 : 1 + byte_count])
        if len(self.payload) != byte_count:
            raise ModbusIOException(
                f"byte count {byte_count} but {len(self.payload)} bytes",
                function_code=self.function_code,
            )

    def __str__(self) -> str:
        return f"{type(self).__name__}({len(self.payload)} bytes)"


class _RawCoils(_RawReadResponse):
    function_code = 1


class _RawDiscreteInputs(_RawReadResponse):
    function_code = 2


class _RawHoldingRegisters(_RawReadResponse):
    function_code = 3


class _RawInputRegisters(_RawReadResponse):
    function_code = 4


_RAW_RESPONSES: Final = (_RawCoils, _RawDiscreteInputs, _RawHoldingRegisters, _RawInputRegisters)

PymodbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient


def exception_reason(code: int) -> str:
    """The reason text a bad reading carries for Modbus exception `code`."""
    return f"modbus exception {code:02d} ({EXCEPTION_NAMES.get(code, 'unknown')})"


class ModbusClient:
    """One connection to one device, with our retries, pacing and errors.

    Args:
        config: the device.
        counters: the driver's counters; requests, timeouts and errors are counted here.
        on_lost: called (synchronously) when pymodbus reports the link closed.
    """

    def __init__(
        self,
        config: ModbusDeviceConfig,
        *,
        counters: DriverCounters,
        on_lost: Callable[[], None],
    ) -> None:
        self._config = config
        self._counters = counters
        self._on_lost = on_lost
        self._last_request_end = 0.0
        self._client = _build(config, self._trace_connect)
        for response_class in _RAW_RESPONSES:
            self._client.register(response_class)
        self._readers = {
            "coil": self._client.read_coils,
            "discrete_input": self._client.read_discrete_inputs,
            "holding_register": self._client.read_holding_registers,
            "input_register": self._client.read_input_registers,
        }

    @property
    def connected(self) -> bool:
        """True while the transport is open."""
        return bool(self._client.connected)

    async def connect(self) -> None:
        """Open the link; raises `ConnectError` with the target if it cannot."""
        target = _target(self._config)
        try:
            ok = await self._client.connect()
            raise_if_cancelling()  # pymodbus's connect also goes through wait_for
        except OSError as exc:  # serial ports raise on open
            raise ConnectError(f"{self._config.name}: cannot connect to {target}: {exc}") from exc
        if not ok:
            raise ConnectError(f"{self._config.name}: cannot connect to {target}")

    def close(self) -> None:
        """Close the link (idempotent)."""
        self._client.close()

    async def read(self, table: Table, start: int, count: int) -> bytes:
        """The data bytes of one read: registers as wire bytes, bits packed LSB first."""
        unit = self._config.unit_id
        read = self._readers[table]
        response = await self._execute(
            lambda: read(start, count=count, device_id=unit), table, start, count
        )
        if not isinstance(response, _RawReadResponse):
            raise DeviceError(f"{self._config.name}: unexpected response {response!s}")
        return response.payload

    async def write_registers(self, address: int, values: Sequence[int]) -> None:
        """FC6 for one register, FC16 for several (or always, with `use_write_multiple`)."""
        if len(values) > MAX_REGISTERS_PER_WRITE:
            raise WriteError(
                f"{self._config.name}: {len(values)} registers at {address} exceed the "
                f"{MAX_REGISTERS_PER_WRITE} one FC16 write may carry"
            )
        unit = self._config.unit_id
        if len(values) == 1 and not self._config.use_write_multiple:
            await self._execute(
                lambda: self._client.write_register(address, values[0], device_id=unit),
                "holding_register",
                address,
                1,
            )
        else:
            await self._execute(
                lambda: self._client.write_registers(address, values, device_id=unit),
                "holding_register",
                address,
                len(values),
            )

    async def write_coil(self, address: int, value: bool) -> None:
        """FC5 (or FC15 with `use_write_multiple`)."""
        unit = self._config.unit_id
        if self._config.use_write_multiple:
            await self._execute(
                lambda: self._client.write_coils(address, [value], device_id=unit),
                "coil",
                address,
                1,
            )
        else:
            await self._execute(
                lambda: self._client.write_coil(address, value, device_id=unit), "coil", address, 1
            )

    async def _execute(
        self, send: Callable[[], Awaitable[ModbusPDU]], table: str, start: int, count: int
    ) -> ModbusPDU:
        name = self._config.name
        last: ModbusIOException | None = None
        for _ in range(self._config.retries + 1):
            if not self._client.connected:
                raise ConnectError(f"{name}: not connected")
            if self._config.inter_request_delay:
                await self._pace()
            self._counters.requests += 1
            try:
                response = await send()
                raise_if_cancelling()
            except ConnectionException as exc:
                raise ConnectError(f"{name}: link lost: {exc}") from exc
            except ModbusIOException as exc:
                self._counters.timeouts += 1
                last = exc
                continue
            finally:
                if self._config.inter_request_delay:
                    self._last_request_end = asyncio.get_running_loop().time()
            if response.isError():
                self._counters.errors += 1
                code = response.exception_code
                raise DeviceError(
                    f"{name}: {table} {start}+{count}: {exception_reason(code)}", code=code
                )
            return response
        raise DeviceTimeout(
            f"{name}: {table} {start}+{count}: timeout, no answer within "
            f"{self._config.timeout:g} s ({self._config.retries + 1} attempts)"
        ) from last

    async def _pace(self) -> None:
        # Inter-request delay: slow devices and RTU gateways need silence between frames.
        wait = (
            self._last_request_end
            + self._config.inter_request_delay
            - asyncio.get_running_loop().time()
        )
        if wait > 0:
            await asyncio.sleep(wait)

    def _trace_connect(self, connected: bool) -> None:
        if not connected:
            self._on_lost()


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that pymodbus swallowed.

    pymodbus awaits each response with `asyncio.wait_for`, which in Python 3.11 returns the
    result instead of raising when the cancellation arrives just as the response does
    (CPython gh-86296, fixed in 3.12). The task still counts the request (`cancelling()`), so we
    honour it here; otherwise a busy driver could ignore its shutdown.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def check_transport_support(config: ModbusDeviceConfig) -> None:
    """Raise `DriverConfigError` when the installed libraries cannot serve `config.transport`."""
    if config.transport == "rtu" and importlib.util.find_spec("serial") is None:
        raise DriverConfigError(
            f"{config.name}: transport 'rtu' (serial) needs the pyserial package, "
            "which is not installed"
        )


def _target(config: ModbusDeviceConfig) -> str:
    if config.transport == "rtu":
        return f"{config.serial_port} ({config.baudrate} {config.parity}{config.stopbits})"
    return f"{config.host}:{config.port} ({config.transport})"


def _build(config: ModbusDeviceConfig, trace_connect: Callable[[bool], None]) -> PymodbusClient:
    if config.transport == "rtu":
        try:
            return AsyncModbusSerialClient(
                config.serial_port or "",
                framer=FramerType.RTU,
                baudrate=config.baudrate,
                bytesize=config.bytesize,
                parity=config.parity,
                stopbits=config.stopbits,
                name=config.name,
                reconnect_delay=0,
                timeout=config.timeout,
                retries=0,
                trace_connect=trace_connect,
            )
        except RuntimeError as exc:  # pymodbus raises this when pyserial is missing
            raise DriverConfigError(
                f"{config.name}: transport 'rtu' needs pyserial: {exc}"
            ) from exc
    return AsyncModbusTcpClient(
        config.host or "",
        port=config.port,
        framer=FramerType.RTU if config.transport == "rtu_over_tcp" else FramerType.SOCKET,
        name=config.name,
        reconnect_delay=0,
        timeout=config.timeout,
        retries=0,
        trace_connect=trace_connect,
    )
