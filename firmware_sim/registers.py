"""Pure register codec: engineering values to 16-bit Modbus registers and back.

The vocabulary is the one tagway's Modbus driver uses (see the register maps in `maps/`):
engineering value = raw * scale + offset, and for multi-register types the word/byte `order`:

- ``ABCD``: registers big-endian (most significant word first), bytes big-endian in each one;
- ``CDAB``: word order reversed, bytes big-endian in each register;
- ``BADC``: word order big-endian, bytes swapped inside each register;
- ``DCBA``: both reversed, i.e. fully little-endian.

For 64-bit types the same rule applies over four registers. Strings are ASCII, two characters per
register (first character in the high byte), NUL-padded to ``length`` registers.
"""

from __future__ import annotations

import math
import struct
from typing import Final, Literal

from firmware_sim.errors import EncodingError

RegisterType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

# struct format and width in registers for the numeric types.
_FORMATS: Final[dict[str, tuple[str, int]]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def width(register_type: RegisterType, length: int = 1) -> int:
    """Number of registers a value of this type occupies."""
    if register_type == "string":
        return length
    return _FORMATS[register_type][1]


def _reorder(big_endian: bytes, order: WordOrder) -> bytes:
    """Turn big-endian bytes into the wire byte sequence for `order` (an involution)."""
    if order == "ABCD":
        return big_endian
    words = [big_endian[i : i + 2] for i in range(0, len(big_endian), 2)]
    if order == "CDAB":
        return b"".join(reversed(words))
    if order == "BADC":
        return b"".join(w[::-1] for w in words)
    return big_endian[::-1]


def _to_registers(data: bytes) -> list[int]:
    return list(struct.unpack(f">{len(data) // 2}H", data))


def _from_registers(registers: list[int]) -> bytes:
    return struct.pack(f">{len(registers)}H", *registers)


def encode(
    value: float | int | str,
    register_type: RegisterType,
    *,
    order: WordOrder = "ABCD",
    scale: float = 1.0,
    offset: float = 0.0,
    length: int = 1,
) -> list[int]:
    """Registers (as sent on the wire, first register first) holding `value`.

    Integers are rounded to the nearest raw step and clamped to the type's range, as a device's
    firmware would saturate; NaN and infinities are refused for integer types.
    """
    if register_type == "string":
        text = str(value).encode("ascii", errors="replace")[: 2 * length]
        return _to_registers(text.ljust(2 * length, b"\0"))
    if isinstance(value, str):
        raise EncodingError(f"{register_type} cannot hold the string {value!r}")
    fmt, _ = _FORMATS[register_type]
    # Integers pass through exactly when unscaled: a float detour would corrupt 64-bit counters.
    unscaled = scale == 1 and offset == 0
    raw: float | int = value if unscaled and isinstance(value, int) else (value - offset) / scale
    if register_type not in ("float32", "float64"):
        if not math.isfinite(raw):
            raise EncodingError(f"{register_type} cannot hold {value!r}")
        low, high = _INT_RANGES[register_type]
        raw = min(max(round(raw), low), high)
    return _to_registers(_reorder(struct.pack(f">{fmt}", raw), order))


def decode(
    registers: list[int],
    register_type: RegisterType,
    *,
    order: WordOrder = "ABCD",
    scale: float = 1.0,
    offset: float = 0.0,
) -> float | int | str:
    """Engineering value of `registers` (the inverse of `encode`)."""
    if register_type == "string":
        return _from_registers(registers).rstrip(b"\0").decode("ascii", errors="replace")
    fmt, count = _FORMATS[register_type]
    if len(registers) != count:
        raise EncodingError(f"{register_type} needs {count} registers, got {len(registers)}")
    (raw,) = struct.unpack(f">{fmt}", _reorder(_from_registers(registers), order))
    if scale == 1 and offset == 0:
        return raw  # type: ignore[no-any-return]  # struct yields int or float by format
    return float(raw * scale + offset)
