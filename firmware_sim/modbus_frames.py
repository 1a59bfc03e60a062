"""A cheap Modbus TCP server for benchmarks: unchanging registers served from prepared frames.

`python -m firmware_sim plant --modbus-frames` serves each device's register image as the model
stood at start, frozen. Every distinct read request (function, address, count) is answered once
from the image and the response PDU kept; later requests cost a dict look-up and one write, so a
benchmark measures the gateway polling it, not the simulator. What it gives up: values never
change after start, there are no faults (exception codes, slow answers, link drops), and writes
are refused with exception 1 (illegal function). Modbus TCP (MBAP) framing only.

It keeps `ModbusDevice`'s outside (port, unit id, request counts, `listen`/`drop`), so the plant,
the CLI and the inventory treat both alike.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from typing import Final

from firmware_sim.errors import ServeError
from firmware_sim.faults import LinkState
from firmware_sim.model import Value
from firmware_sim.register_image import BIT_TABLES, RegisterImage
from firmware_sim.register_map import Table
from firmware_sim.simulation import PlantModel

_READS: Final[dict[int, Table]] = {
    1: "coil", 2: "discrete_input", 3: "holding_register", 4: "input_register",
}  # fmt: skip
_MAX_COUNT: Final = {1: 2000, 2: 2000, 3: 125, 4: 125}
_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_REQUEST = struct.Struct(">BHH")  # function, address, count


def _exception(function: int, code: int) -> bytes:
    return bytes((function | 0x80, code))


class FrameImage:
    """One device's frozen tables and the response PDUs prepared from them.

    Args:
        image: the device's register image (layout and encoding).
        values: the device's engineering values, frozen at this moment.
    """

    def __init__(self, image: RegisterImage, values: dict[str, Value]) -> None:
        self._registers: dict[Table, list[int]] = {}
        self._bits: dict[Table, list[bool]] = {}
        for table in _READS.values():
            words = image.refresh(table, 0, lambda: values) or []
            if table in BIT_TABLES:
                self._bits[table] = [bool(words[i // 16] >> (i % 16) & 1)
                                     for i in range(len(words) * 16)]  # fmt: skip
            else:
                self._registers[table] = words
        self._responses: dict[bytes, bytes] = {}

    def answer(self, request: bytes) -> bytes:
        """The response PDU for a request PDU (prepared once per distinct request)."""
        response = self._responses.get(request)
        if response is None:
            response = self._responses[request] = self._build(request)
        return response

    def _build(self, request: bytes) -> bytes:
        function = request[0] if request else 0
        table = _READS.get(function)
        if table is None or len(request) != _REQUEST.size:
            return _exception(function, 1)  # illegal function: reads only
        _, address, count = _REQUEST.unpack(request)
        if not 1 <= count <= _MAX_COUNT[function]:
            return _exception(function, 3)  # illegal data value
        if table in BIT_TABLES:
            bits = self._bits[table][address : address + count]
            if address + count > len(self._bits[table]):
                return _exception(function, 2)  # illegal data address
            packed = bytearray((count + 7) // 8)
            for i, bit in enumerate(bits):
                if bit:
                    packed[i // 8] |= 1 << (i % 8)
            return bytes((function, len(packed))) + bytes(packed)
        registers = self._registers[table]
        if address + count > len(registers):
            return _exception(function, 2)
        words = registers[address : address + count]
        return bytes((function, 2 * count)) + struct.pack(f">{count}H", *words)


class _FrameProtocol(asyncio.Protocol):
    """One client connection: MBAP frames in, prepared responses out."""

    def __init__(self, device: FrameModbusDevice) -> None:
        self._device = device
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):  # always, for a TCP server
            self._transport = transport
            self._device.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._device.connections.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        device = self._device
        out = []
        while len(buffer) >= _MBAP.size:
            tid, _, length, unit = _MBAP.unpack_from(buffer)
            end = 6 + length
            if length < 2 or len(buffer) < end:
                break
            request = buffer[_MBAP.size : end]
            buffer = buffer[end:]
            if unit not in (device.unit_id, 0):
                continue  # not ours: a real gateway on a shared line stays silent too
            device.requests[request[0]] += 1
            response = device.frames.answer(request)
            out.append(_MBAP.pack(tid, 0, len(response) + 1, unit) + response)
        self._buffer = buffer
        if out and self._transport is not None:
            self._transport.write(b"".join(out))


class FrameModbusDevice:
    """One simulated device served from prepared frames on its own TCP port."""

    def __init__(self, *, model: PlantModel, device: str, host: str, port: int) -> None:
        """Freeze the device's registers now; call `listen()` to bind.

        Args:
            model: the plant model the registers are read from (once).
            device: the device's name in the model.
            host: address to bind.
            port: port to bind; 0 picks a free one, kept across link drops.
        """
        self.model = model
        self.device = device
        self.host = host
        self.port = port
        self.framing = "socket"
        self.image = RegisterImage(model.maps[device])
        self.unit_id = model.maps[device].unit_id
        self.frames = FrameImage(self.image, dict(model.reported(device)))
        self.requests: Counter[int] = Counter()
        self.state = LinkState.DROPPED
        self.connections: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None

    async def listen(self) -> None:
        """Bind and accept connections."""
        if self.state is not LinkState.DROPPED:
            return
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _FrameProtocol(self), self.host, self.port, reuse_address=True
            )
        except OSError as exc:
            raise ServeError(f"Modbus {self.device}: cannot listen on port {self.port}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        self.state = LinkState.LISTENING

    async def drop(self) -> None:
        """Close the listener and every open connection."""
        if self._server is not None:
            self._server.close()
            for transport in list(self.connections):
                transport.close()
            await self._server.wait_closed()
            self._server = None
        self.state = LinkState.DROPPED
