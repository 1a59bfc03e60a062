"""A small, real pymodbus TCP server for the driver tests (until firmware_sim takes over).

It holds plain Python lists of register and bit values (set them with literal numbers), refuses
chosen addresses with an exception code, can answer slowly, and counts every request it receives
by function code, so tests can assert on what went over the wire.

pymodbus 3.16 wants either its deprecated contexts or its new SimDevice; both hide the values
behind layers we would have to trust. A `ModbusServerContext` subclass with `old_simulator` set
is served directly: the server calls our `async_getValues`/`async_setValues` for every request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer

# Which table each function code touches (reads, single and multiple writes).
_TABLE_OF_FC = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 4: "input_register"}
_TABLE_OF_FC.update(dict.fromkeys((3, 6, 16), "holding_register"))
SIZE = 65536


class PlantMemory(ModbusServerContext):
    """The four Modbus tables as lists, plus fault injection and request counting."""

    def __init__(self) -> None:
        # Deliberately not calling super().__init__: it insists on the deprecated device
        # contexts. These two attributes are what ModbusBaseServer inspects.
        self.old_simulator = True
        self.simdevices = []
        self.tables: dict[str, list[int]] = {
            "coil": [0] * SIZE,
            "discrete_input": [0] * SIZE,
            "holding_register": [0] * SIZE,
            "input_register": [0] * SIZE,
        }
        self.refuse: dict[tuple[str, int], int] = {}  # (table, address) -> exception code
        self.ignore_writes: set[tuple[str, int]] = set()  # acknowledged but not stored
        self.delay = 0.0
        self.requests: Counter[int] = Counter()  # function code -> requests received
        self.log: list[tuple[int, int, int]] = []  # (function code, address, count)
        self.stopping = asyncio.Event()

    def put(self, table: str, address: int, values: Sequence[int]) -> None:
        """Store literal values from `address` on."""
        self.tables[table][address : address + len(values)] = list(values)

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus hook, called for every PDU: count the requests received."""
        if not sending:
            self.requests[pdu.function_code] += 1
            self.log.append((pdu.function_code, pdu.address, pdu.count))
        return pdu

    def reset_counts(self) -> None:
        """Forget the requests counted so far."""
        self.requests.clear()
        self.log.clear()

    async def async_getValues(  # noqa: N802 - pymodbus's name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        """Serve a read (or the read-back of a single write)."""
        table = _TABLE_OF_FC[func_code]
        if refused := self._refused(table, address, count):
            return refused
        if self.delay:
            # Wait on the stop event, so a stopping server never leaves a sleeping task behind.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.delay)
        values = self.tables[table][address : address + count]
        if table in ("coil", "discrete_input"):
            return [bool(v) for v in values]
        return values

    async def async_setValues(  # noqa: N802 - pymodbus's name
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        """Serve a write."""
        table = _TABLE_OF_FC[func_code]
        if refused := self._refused(table, address, len(values)):
            return refused
        for offset, value in enumerate(values):
            if (table, address + offset) not in self.ignore_writes:
                self.tables[table][address + offset] = int(value)
        return None

    def device_ids(self) -> list[int]:
        """Every unit id is served from the same memory."""
        return [0]

    def _refused(self, table: str, address: int, count: int) -> ExcCodes | None:
        for a in range(address, address + count):
            if (table, a) in self.refuse:
                return ExcCodes(self.refuse[(table, a)])
        return None


class ModbusTestServer:
    """A pymodbus TCP server on 127.0.0.1 serving a `PlantMemory`; restartable on its port.

    Args:
        memory: the tables to serve (kept across restarts).
        framer: `FramerType.SOCKET` (Modbus TCP) or `FramerType.RTU` (RTU over TCP).
    """

    def __init__(self, memory: PlantMemory, *, framer: FramerType = FramerType.SOCKET) -> None:
        self.memory = memory
        self.framer = framer
        self.port = 0
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a restart)."""
        self.memory.stopping.clear()
        server = ModbusTcpServer(
            self.memory,
            framer=self.framer,
            address=("127.0.0.1", self.port),
            trace_pdu=self.memory.trace_pdu,
        )
        await server.serve_forever(background=True)
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        self.memory.stopping.set()
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        await asyncio.sleep(0.01)  # let request handlers finish unwinding

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
