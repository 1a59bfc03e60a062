"""Pure Modbus value codec: register bytes and coil bits in, typed values out, and back.

No I/O here. Registers travel as the bytes of the response (big-endian per register, as on the
wire), because slicing bytes with a precompiled `struct.Struct` is far cheaper than handling one
Python int per register.

Word/byte orders (for any multi-register width; `A` is the most significant byte):

    ABCD  registers big-endian word order, bytes big-endian in each register (Modbus standard)
    CDAB  word order reversed, bytes big-endian
    BADC  word order big-endian, bytes swapped inside each register
    DCBA  both reversed: fully little-endian

Every order is one `struct` read over one of two buffers: the wire bytes, or the wire bytes with
each register's two bytes swapped. ABCD is big-endian over the wire bytes, DCBA little-endian over
them; BADC is big-endian over the swapped bytes, CDAB little-endian over them. This holds for
16-, 32- and 64-bit values alike, so a whole block decodes with a handful of `unpack_from` calls.
Single-register types follow the same rule (BADC/DCBA swap the two bytes; CDAB changes nothing),
and a `bit` tag reads its bit from the register value after the order is applied.

Strings: `length` registers, two ASCII characters each, NUL-padded. ABCD keeps the wire order,
BADC swaps the bytes in each register, DCBA reverses all bytes, CDAB reverses the register order.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Final

from protocols.errors import CodecError
from protocols.modbus.config import BIT_TABLES, ModbusTag, WordOrder
from protocols.reading import Value

# order -> (read from the byte-swapped buffer?, struct byte order)
_LAYOUT: Final[dict[str, tuple[bool, str]]] = {
    "ABCD": (False, ">"),
    "DCBA": (False, "<"),
    "BADC": (True, ">"),
    "CDAB": (True, "<"),
}
_STRING_REVERSED: Final = frozenset({"CDAB", "DCBA"})

_STRUCT_CODE: Final[dict[str, str]] = {
    "bit": "H",
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "int64": "q",
    "uint64": "Q",
    "float64": "d",
}
_FLOAT_TYPES: Final = frozenset({"float32", "float64"})


def swap_register_bytes(data: bytes) -> bytes:
    """Swap the two bytes of every register (`data` has an even length)."""
    out = bytearray(len(data))
    out[0::2] = data[1::2]
    out[1::2] = data[0::2]
    return bytes(out)


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """Register values (0..65535) as wire bytes."""
    try:
        return struct.pack(f">{len(registers)}H", *registers)
    except struct.error as exc:
        raise CodecError(f"register values out of 0..65535: {list(registers)!r}") from exc


def bytes_to_registers(data: bytes) -> list[int]:
    """Wire bytes as register values."""
    return list(struct.unpack(f">{len(data) // 2}H", data))


def string_layout(order: WordOrder) -> tuple[bool, bool]:
    """(read from the swapped buffer?, reverse the bytes?) for a string in `order`."""
    return _LAYOUT[order][0], order in _STRING_REVERSED


class RegisterBlockDecoder:
    """A decode plan compiled once for one register read (`start`, `count`) and its tags.

    Tags are grouped by buffer and byte order; each group is split into lanes of non-overlapping
    fields, and each lane is one `struct.Struct` with pad bytes between fields. Decoding a block is
    then one `unpack_from` per lane plus a fix-up only for bit, scaled and string tags.

    Args:
        start: the first register address of the read.
        count: the number of registers read.
        tags: the tags inside [start, start + count); `tags` gives them back in output order.
    """

    def __init__(self, start: int, count: int, tags: Sequence[ModbusTag]) -> None:
        self.start = start
        self.count = count
        self.byte_count = 2 * count
        lanes = [
            (swapped, _lane_struct(endian, start, lane), lane)
            for (swapped, endian), group in sorted(_group_by_layout(tags).items())
            for lane in _lanes(group)
        ]
        ordered = [tag for _, _, lane in lanes for tag in lane]
        self.tags: tuple[ModbusTag, ...] = tuple(ordered)
        self._lanes = tuple((swapped, unpacker) for swapped, unpacker, _ in lanes)
        self._needs_swap = any(swapped for swapped, _ in self._lanes)
        self._bits = tuple((i, t.bit or 0) for i, t in enumerate(ordered) if t.type == "bit")
        self._scaled = tuple((i, t.scale, t.offset) for i, t in enumerate(ordered) if t.scaled)
        self._strings = tuple(
            (i, t.order in _STRING_REVERSED) for i, t in enumerate(ordered) if t.type == "string"
        )
        for tag in ordered:
            if tag.address < start or tag.end > start + count:
                raise CodecError(f"tag {tag.name!r} lies outside registers {start}+{count}")

    def decode(self, data: bytes) -> list[Value]:
        """Values of `tags`, in order, from the response's register bytes."""
        if len(data) != self.byte_count:
            raise CodecError(
                f"expected {self.byte_count} bytes for registers {self.start}+{self.count}, "
                f"got {len(data)}"
            )
        swapped = swap_register_bytes(data) if self._needs_swap else data
        values: list[Value] = []
        for use_swapped, unpacker in self._lanes:
            values.extend(unpacker.unpack_from(swapped if use_swapped else data))
        for i, bit in self._bits:
            values[i] = (int(values[i]) >> bit) & 1 == 1
        for i, scale, offset in self._scaled:
            values[i] = values[i] * scale + offset  # type: ignore[operator]  # numeric by config
        for i, reverse in self._strings:
            raw: bytes = values[i]  # type: ignore[assignment]  # struct "s" gives bytes
            values[i] = _decode_text(raw[::-1] if reverse else raw)
        return values


class BitBlockDecoder:
    """A decode plan for one coil/discrete-input read: each tag's byte index and bit mask.

    Args:
        start: the first bit address of the read.
        count: the number of bits read.
        tags: the `bool` tags inside [start, start + count).
    """

    def __init__(self, start: int, count: int, tags: Sequence[ModbusTag]) -> None:
        self.start = start
        self.count = count
        self.byte_count = (count + 7) // 8
        self.tags: tuple[ModbusTag, ...] = tuple(sorted(tags, key=lambda t: t.address))
        for tag in self.tags:
            if tag.address < start or tag.address >= start + count:
                raise CodecError(f"tag {tag.name!r} lies outside bits {start}+{count}")
        # Modbus packs bits LSB first: bit k of the read is bit (k % 8) of byte k // 8.
        self._masks = tuple(
            ((t.address - start) >> 3, 1 << ((t.address - start) & 7)) for t in self.tags
        )

    def decode(self, data: bytes) -> list[Value]:
        """Values of `tags`, in order, from the response's packed bit bytes."""
        if len(data) != self.byte_count:
            raise CodecError(
                f"expected {self.byte_count} bytes for bits {self.start}+{self.count}, "
                f"got {len(data)}"
            )
        return [data[index] & mask != 0 for index, mask in self._masks]


def decode_registers(tag: ModbusTag, registers: Sequence[int]) -> Value:
    """Decode one register tag from its own registers (the reference path; blocks use
    `RegisterBlockDecoder`)."""
    if len(registers) != tag.width:
        raise CodecError(f"tag {tag.name!r} needs {tag.width} registers, got {len(registers)}")
    decoder = RegisterBlockDecoder(tag.address, tag.width, [tag])
    return decoder.decode(registers_to_bytes(registers))[0]


def encode_registers(tag: ModbusTag, value: Value) -> list[int]:
    """The registers that make `tag` read back as `value` (scale and offset inverted)."""
    if tag.table in BIT_TABLES or tag.type == "bit":
        raise CodecError(f"tag {tag.name!r} ({tag.type}) is not a register value")
    swapped, endian = _LAYOUT[tag.order]
    if tag.type == "string":
        data = _encode_text(tag, value)
        swapped, reverse = string_layout(tag.order)
        if reverse:
            data = data[::-1]
    else:
        raw = _to_raw(tag, value)
        try:
            data = struct.pack(endian + _STRUCT_CODE[tag.type], raw)
        except (struct.error, OverflowError) as exc:
            raise CodecError(f"tag {tag.name!r}: {value!r} does not fit {tag.type}") from exc
    if swapped:
        data = swap_register_bytes(data)
    return bytes_to_registers(data)


def encode_bit(register: int, bit: int, value: Value) -> int:
    """`register` with `bit` set to `value` (for bit-in-register writes)."""
    flag = _to_bool(value)
    return (register | (1 << bit)) if flag else (register & ~(1 << bit) & 0xFFFF)


def encode_bool(tag: ModbusTag, value: Value) -> bool:
    """A coil value; refuses anything that is not a bool or 0/1."""
    try:
        return _to_bool(value)
    except CodecError as exc:
        raise CodecError(f"tag {tag.name!r}: {exc}") from None


def _to_bool(value: Value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise CodecError(f"{value!r} is not a boolean (true/false or 0/1)")


def _to_raw(tag: ModbusTag, value: Value) -> int | float:
    if isinstance(value, str):
        raise CodecError(f"tag {tag.name!r} ({tag.type}) cannot take text {value!r}")
    number = (float(value) - tag.offset) / tag.scale if tag.scaled else value
    if tag.type in _FLOAT_TYPES:
        return float(number)
    if isinstance(number, float):
        if not math.isfinite(number):
            raise CodecError(f"tag {tag.name!r}: {value!r} is not a finite number")
        if not tag.scaled and not number.is_integer():
            raise CodecError(f"tag {tag.name!r} ({tag.type}): {value!r} is not an integer")
        # A scaled setpoint lands on the nearest raw step; the read-back shows which one.
        return round(number)
    return int(number)


def _encode_text(tag: ModbusTag, value: Value) -> bytes:
    if not isinstance(value, str):
        raise CodecError(f"tag {tag.name!r} (string) needs text, got {value!r}")
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise CodecError(f"tag {tag.name!r}: {value!r} is not ASCII") from exc
    size = 2 * tag.width
    if len(data) > size:
        raise CodecError(f"tag {tag.name!r}: {value!r} is longer than {size} characters")
    return data.ljust(size, b"\x00")


def _decode_text(data: bytes) -> str:
    return data.rstrip(b"\x00").decode("ascii", errors="replace")


def _group_by_layout(tags: Sequence[ModbusTag]) -> dict[tuple[bool, str], list[ModbusTag]]:
    groups: dict[tuple[bool, str], list[ModbusTag]] = {}
    for tag in tags:
        if tag.table in BIT_TABLES:
            raise CodecError(f"tag {tag.name!r} is on {tag.table}, not a register table")
        key = (string_layout(tag.order)[0], ">") if tag.type == "string" else _LAYOUT[tag.order]
        groups.setdefault(key, []).append(tag)
    return groups


def _lanes(tags: list[ModbusTag]) -> list[list[ModbusTag]]:
    """Split tags into lists of non-overlapping fields sorted by address (first fit)."""
    lanes: list[list[ModbusTag]] = []
    for tag in sorted(tags, key=lambda t: (t.address, t.end)):
        for lane in lanes:
            if lane[-1].end <= tag.address:
                lane.append(tag)
                break
        else:
            lanes.append([tag])
    return lanes


def _lane_struct(endian: str, start: int, lane: list[ModbusTag]) -> struct.Struct:
    parts = [endian]
    position = start
    for tag in lane:
        if tag.address > position:
            parts.append(f"{2 * (tag.address - position)}x")
        parts.append(f"{2 * tag.width}s" if tag.type == "string" else _STRUCT_CODE[tag.type])
        position = tag.end
    return struct.Struct("".join(parts))
