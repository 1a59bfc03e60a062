"""The Modbus codec against literal register values, and round trips for every type and order."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import CodecError
from protocols.modbus.codec import (
    BitBlockDecoder,
    RegisterBlockDecoder,
    decode_registers,
    encode_bit,
    encode_registers,
    registers_to_bytes,
)
from protocols.modbus.config import ModbusTag
from tests.protocols.modbus.literals import LITERALS, ORDERS


def tag(type_: str, order: str = "ABCD", address: int = 0, **extra: Any) -> ModbusTag:
    return ModbusTag(
        name=extra.pop("name", f"t{address}"),
        table="holding_register",
        address=address,
        type=type_,  # type: ignore[arg-type]
        order=order,  # type: ignore[arg-type]
        **extra,
    )


@pytest.mark.parametrize(
    ("type_", "value", "order", "registers"),
    [(t, v, o, regs) for t, v, by_order in LITERALS for o, regs in by_order.items()],
)
def test_literal_registers_decode_and_encode(
    type_: str, value: Any, order: str, registers: list[int]
) -> None:
    t = tag(type_, order)
    assert decode_registers(t, registers) == value
    assert encode_registers(t, value) == registers


@pytest.mark.parametrize(
    ("order", "registers"),
    [
        ("ABCD", [0x4142, 0x2043, 0x0000]),
        ("BADC", [0x4241, 0x4320, 0x0000]),
        ("CDAB", [0x0000, 0x2043, 0x4142]),
        ("DCBA", [0x0000, 0x4320, 0x4241]),
    ],
)
def test_string_orders(order: str, registers: list[int]) -> None:
    t = tag("string", order, length=3)
    assert decode_registers(t, registers) == "AB C"
    assert encode_registers(t, "AB C") == registers


def test_bit_in_register_reads_each_bit() -> None:
    register = 0b1000_0000_0000_0101
    got = [decode_registers(tag("bit", bit=b), [register]) for b in range(16)]
    assert got == [b in (0, 2, 15) for b in range(16)]
    assert encode_bit(register, 1, True) == 0b1000_0000_0000_0111
    assert encode_bit(register, 15, False) == 0b0000_0000_0000_0101


def test_scale_and_offset_apply_both_ways() -> None:
    t = tag("int16", scale=0.1, offset=-40.0)
    assert decode_registers(t, [655]) == pytest.approx(25.5)
    assert encode_registers(t, 25.5) == [655]
    # Unscaled integers stay integers.
    assert isinstance(decode_registers(tag("uint16"), [7]), int)


def test_block_decoder_handles_gaps_overlaps_and_mixed_orders() -> None:
    tags = [
        tag("float32", "CDAB", address=10, name="flow"),
        tag("int16", address=13, name="level"),  # register 12 is a gap
        tag("bit", address=13, bit=0, name="level_bit0"),  # overlaps `level`
        tag("uint64", "DCBA", address=14, name="energy"),
        tag("string", "BADC", address=18, length=2, name="label"),
    ]
    regs = [0] * 12
    regs[0:2] = encode_registers(tags[0], 2.5)
    regs[3] = 0x0007
    regs[4:8] = encode_registers(tags[3], 123456789012)
    regs[8:10] = encode_registers(tags[4], "P-1")
    decoder = RegisterBlockDecoder(10, 12, tags)
    decoded = dict(
        zip([t.name for t in decoder.tags], decoder.decode(registers_to_bytes(regs)), strict=True)
    )
    assert decoded == {
        "flow": 2.5,
        "level": 7,
        "level_bit0": True,
        "energy": 123456789012,
        "label": "P-1",
    }


def test_block_decoder_refuses_a_short_response() -> None:
    decoder = RegisterBlockDecoder(0, 2, [tag("float32")])
    with pytest.raises(CodecError, match="expected 4 bytes"):
        decoder.decode(b"\x00\x00")


def test_bit_block_decoder_unpacks_lsb_first() -> None:
    tags = [ModbusTag(name=f"c{a}", table="coil", address=a, type="bool") for a in (100, 102, 109)]
    decoder = BitBlockDecoder(100, 10, tags)
    # bits 100..109: byte0 = 0b0000_0101 (100 and 102 on), byte1 = 0b10 (109 on)
    assert decoder.decode(bytes([0b0000_0101, 0b0000_0010])) == [True, True, True]
    assert decoder.decode(bytes([0b0000_0100, 0b0000_0000])) == [False, True, False]


@pytest.mark.parametrize(
    ("type_", "value", "match"),
    [
        ("int16", 40000, "does not fit"),
        ("uint16", -1, "does not fit"),
        ("int32", 1.5, "not an integer"),
        ("float32", "hot", "cannot take text"),
        ("int16", math.nan, "not a finite"),
    ],
)
def test_encode_refuses_values_that_do_not_fit(type_: str, value: Any, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        encode_registers(tag(type_), value)


def test_encode_refuses_too_long_or_non_ascii_text() -> None:
    with pytest.raises(CodecError, match="longer than 4"):
        encode_registers(tag("string", length=2), "ABCDE")
    with pytest.raises(CodecError, match="not ASCII"):
        encode_registers(tag("string", length=2), "é")


INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


@given(
    type_=st.sampled_from(sorted(INT_RANGES)),
    order=st.sampled_from(ORDERS),
    data=st.data(),
)
def test_integer_round_trip(type_: str, order: str, data: st.DataObject) -> None:
    low, high = INT_RANGES[type_]
    value = data.draw(st.integers(low, high))
    t = tag(type_, order)
    registers = encode_registers(t, value)
    assert len(registers) == t.width
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode_registers(t, registers) == value


@given(order=st.sampled_from(ORDERS), value=st.floats(allow_nan=False, width=32))
def test_float32_round_trip(order: str, value: float) -> None:
    t = tag("float32", order)
    assert decode_registers(t, encode_registers(t, value)) == value


@given(order=st.sampled_from(ORDERS), value=st.floats(allow_nan=False))
def test_float64_round_trip(order: str, value: float) -> None:
    t = tag("float64", order)
    assert decode_registers(t, encode_registers(t, value)) == value


@given(
    order=st.sampled_from(ORDERS),
    text=st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=10),
)
def test_string_round_trip(order: str, text: str) -> None:
    t = tag("string", order, length=5)
    assert decode_registers(t, encode_registers(t, text)) == text


@given(registers=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
def test_float32_orders_are_the_documented_permutations(registers: list[int]) -> None:
    """Decoding in each order equals ABCD decoding of the hand-permuted registers."""
    hi, lo = registers
    swap = lambda r: ((r & 0xFF) << 8) | (r >> 8)  # noqa: E731 - a one-line helper reads best
    as_abcd = {
        "ABCD": [hi, lo],
        "CDAB": [lo, hi],
        "BADC": [swap(hi), swap(lo)],
        "DCBA": [swap(lo), swap(hi)],
    }
    for order, permuted in as_abcd.items():
        expected = struct.unpack(">I", registers_to_bytes(permuted))[0]
        assert decode_registers(tag("uint32", order), registers) == expected


TYPED_VALUES = {
    "int16": st.integers(-(2**15), 2**15 - 1),
    "uint32": st.integers(0, 2**32 - 1),
    "int64": st.integers(-(2**63), 2**63 - 1),
    "float32": st.floats(allow_nan=False, width=32),
    "float64": st.floats(allow_nan=False),
    "string": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6),
}


@given(data=st.data())
def test_block_decoder_equals_per_tag_decoding_on_random_layouts(data: st.DataObject) -> None:
    """Many tags, mixed types and orders, random gaps: one block decode equals tag by tag."""
    tags: list[ModbusTag] = []
    values: list[Any] = []
    address = data.draw(st.integers(0, 5))
    start = address
    for i in range(data.draw(st.integers(1, 12))):
        type_ = data.draw(st.sampled_from(sorted(TYPED_VALUES)))
        order = data.draw(st.sampled_from(ORDERS))
        extra = {"length": 3} if type_ == "string" else {}
        tags.append(tag(type_, order, address=address, name=f"t{i}", **extra))
        values.append(data.draw(TYPED_VALUES[type_]))
        address = tags[-1].end + data.draw(st.integers(0, 3))
    registers = [0] * (address - start)
    for t, value in zip(tags, values, strict=True):
        registers[t.address - start : t.end - start] = encode_registers(t, value)
    decoder = RegisterBlockDecoder(start, len(registers), tags)
    decoded = dict(
        zip(
            [t.name for t in decoder.tags],
            decoder.decode(registers_to_bytes(registers)),
            strict=True,
        )
    )
    assert decoded == {t.name: v for t, v in zip(tags, values, strict=True)}
