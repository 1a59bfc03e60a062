"""Names and codes every Sparkplug B party agrees on, and the ones Ignition made common.

- ``bdSeq`` (NBIRTH, NDEATH) and ``Node Control/Rebirth`` (NBIRTH, NCMD) are the
  specification's.
- ``Quality`` (Int32) and ``engUnit`` (String) as metric properties are the convention of
  Ignition's MQTT modules, which most Sparkplug hosts follow: 192 good, 64 uncertain, 0 bad
  (the OPC DA quality bytes). A host reading another code maps it by the same bands.
"""

from __future__ import annotations

from typing import Final

from protocols.reading import Quality, Value

BD_SEQ: Final = "bdSeq"
REBIRTH: Final = "Node Control/Rebirth"
QUALITY: Final = "Quality"
UNIT: Final = "engUnit"
REASON: Final = "tagway/reason"
"""Why a reading is not good; tagway's own property, other hosts ignore it."""

QUALITY_GOOD: Final = 192
QUALITY_UNCERTAIN: Final = 64
QUALITY_BAD: Final = 0
_CODE: Final = {Quality.GOOD: QUALITY_GOOD, Quality.UNCERTAIN: QUALITY_UNCERTAIN,
                Quality.BAD: QUALITY_BAD}  # fmt: skip


def quality_code(quality: Quality) -> int:
    """The ``Quality`` property value of `quality`."""
    return _CODE[quality]


def quality_of(code: Value | None) -> Quality:
    """The quality a ``Quality`` property means; no property (None) is good, as Sparkplug
    assumes. Bit 31 set (Ignition's bad flag) or a code below 64 is bad."""
    if code is None:
        return Quality.GOOD
    if isinstance(code, bool) or not isinstance(code, int):
        return Quality.BAD
    if code < 0 or code & 0x8000_0000:
        return Quality.BAD
    if code >= QUALITY_GOOD and code < 256:
        return Quality.GOOD
    if code >= QUALITY_UNCERTAIN and code < QUALITY_GOOD:
        return Quality.UNCERTAIN
    return Quality.BAD


__all__ = [
    "BD_SEQ",
    "QUALITY",
    "QUALITY_BAD",
    "QUALITY_GOOD",
    "QUALITY_UNCERTAIN",
    "REASON",
    "REBIRTH",
    "UNIT",
    "quality_code",
    "quality_of",
]
