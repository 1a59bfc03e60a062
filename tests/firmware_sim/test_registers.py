"""The register codec against literal register values (no I/O)."""

from __future__ import annotations

import pytest

from firmware_sim.registers import decode, encode

# 123.456 as float32 is 0x42F6E979: A=0x42 B=0xF6 C=0xE9 D=0x79.
FLOAT_123_456 = {
    "ABCD": [0x42F6, 0xE979],
    "CDAB": [0xE979, 0x42F6],
    "BADC": [0xF642, 0x79E9],
    "DCBA": [0x79E9, 0xF642],
}


@pytest.mark.parametrize(("order", "registers"), FLOAT_123_456.items())
def test_float32_in_every_word_order(order: str, registers: list[int]) -> None:
    assert encode(123.456, "float32", order=order) == registers  # type: ignore[arg-type]
    assert decode(registers, "float32", order=order) == pytest.approx(123.456, rel=1e-7)  # type: ignore[arg-type]


def test_int64_and_uint64_over_four_registers() -> None:
    assert encode(0x0102030405060708, "uint64", order="ABCD") == [0x0102, 0x0304, 0x0506, 0x0708]
    assert encode(0x0102030405060708, "uint64", order="CDAB") == [0x0708, 0x0506, 0x0304, 0x0102]
    assert encode(0x0102030405060708, "uint64", order="BADC") == [0x0201, 0x0403, 0x0605, 0x0807]
    assert encode(0x0102030405060708, "uint64", order="DCBA") == [0x0807, 0x0605, 0x0403, 0x0201]
    assert encode(-2, "int64") == [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]
    assert decode([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], "int64") == -2


def test_scaled_and_offset_integers_round_to_the_raw_step() -> None:
    assert encode(42.37, "int16", scale=0.1) == [424]
    assert encode(-5.0, "int16", scale=0.1) == [0xFFCE]
    assert decode([0xFFCE], "int16", scale=0.1) == pytest.approx(-5.0)
    # temperature = raw * 0.1 - 50: 21.5 degC is raw 715
    assert encode(21.5, "uint16", scale=0.1, offset=-50) == [715]
    assert decode([715], "uint16", scale=0.1, offset=-50) == pytest.approx(21.5)


def test_integers_saturate_like_firmware() -> None:
    assert encode(70000, "uint16") == [0xFFFF]
    assert encode(-1, "uint32") == [0, 0]


def test_strings_are_two_ascii_chars_per_register_nul_padded() -> None:
    assert encode("SP1", "string", length=3) == [0x5350, 0x3100, 0x0000]
    assert decode([0x5350, 0x3100, 0x0000], "string") == "SP1"


def test_float64_abcd() -> None:
    assert encode(1.0, "float64") == [0x3FF0, 0, 0, 0]
