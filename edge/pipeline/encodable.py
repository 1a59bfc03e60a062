"""The pipeline's entry check: every value that goes on is one the chunk can carry.

A value comes from a device (an MQTT payload, an OPC UA variant, a Modbus register) or from a
derived expression, so it is whatever the other side sent: a JSON integer of 400 digits, a
string with a lone surrogate (JSON's ``"\\ud800"``), a type no decoder should have produced.
Such a value becomes a bad reading that says why, here, where the reason is still seen (the
latest-value cache, the local API, the TUI); the chunk itself keeps only the quality. The chunk
carries integers from -2**63 to 2**64 - 1 (int64 and uint64), any float (NaN and ±inf become bad
readings in the codec), bools, and text that UTF-8 can carry and a database can store (no NUL).

The check is one C-level pass in the common case (floats, small ints, bools, plain text); only
the readings it refuses take a Python path.
"""

from __future__ import annotations

import operator
from typing import Final

from protocols.reading import Quality, Reading

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1
"""The integers a chunk carries: int64 and uint64, the widest a device register holds."""

_VALUE = operator.itemgetter(3)
_PLAIN: Final = frozenset({float, bool})


def encodable(readings: list[Reading]) -> list[Reading]:
    """`readings`, with every value the chunk cannot carry replaced by a bad reading and its
    reason (the same list object when all are fine)."""
    values = list(map(_VALUE, readings))
    kinds = set(map(type, values))
    if kinds <= _PLAIN:
        return readings
    if int in kinds:
        ints = values if kinds == {int} else list(filter(int.__instancecheck__, values))
        if min(ints) < INT_MIN or max(ints) > INT_MAX:
            return _checked(readings)
    if str in kinds and not all(map(_plain_text, filter(str.__instancecheck__, values))):
        return _checked(readings)
    if kinds - {int, float, bool, str}:
        return _checked(readings)
    return readings


def _plain_text(text: str) -> bool:
    return "\x00" not in text and (text.isascii() or refusal(text) is None)


def _checked(readings: list[Reading]) -> list[Reading]:
    out: list[Reading] = []
    for reading in readings:
        reason = refusal(reading.value)
        if reason is None:
            out.append(reading)
        else:
            value = "" if isinstance(reading.value, str) else 0
            out.append(reading._replace(value=value, quality=Quality.BAD, reason=reason))
    return out


def refusal(value: object) -> str | None:
    """Why a chunk cannot carry `value`, or None if it can."""
    if isinstance(value, bool | float):
        return None
    if isinstance(value, int):
        # str() of an integer past 4,300 digits raises: its size says enough.
        return None if INT_MIN <= value <= INT_MAX else (
            f"integer of {value.bit_length()} bits does not fit 64 bits "
            f"(int64 or uint64: {INT_MIN} to {INT_MAX})"
        )  # fmt: skip
    if isinstance(value, str):
        return _text_refusal(value)
    return f"a value of type {type(value).__name__} cannot be stored (number, bool or text)"


def _text_refusal(text: str) -> str | None:
    if "\x00" in text:
        return "text holds a NUL character, which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text holds a lone surrogate (invalid Unicode), which cannot be stored"
    return None
