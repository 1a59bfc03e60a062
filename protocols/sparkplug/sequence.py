"""Sequence numbers (Sparkplug 3.0, sections 5.6 and 6.4.19).

- ``seq``: every message of an edge node after its NBIRTH carries the next number, 0 to 255 and
  round again; NBIRTH itself carries 0 and NDEATH none. A host that sees a number other than
  the one it expects has lost a message and asks for a rebirth.
- ``bdSeq``: the birth/death sequence. Each MQTT session of an edge node gets the next number
  (0 to 255, round again); the NDEATH registered as its will and the NBIRTH that follows carry
  the same value, so a host can tell a late will of an old session from the death of the
  current one.
"""

from __future__ import annotations

from typing import Final

SEQ_MODULO: Final = 256
BIRTH_SEQ: Final = 0


def next_seq(seq: int) -> int:
    """The number after `seq`, wrapping 255 to 0."""
    return (seq + 1) % SEQ_MODULO


class SeqCounter:
    """The ``seq`` of one edge node's session: 0 for the NBIRTH, then 1..255, 0, 1, ..."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = BIRTH_SEQ

    def birth(self) -> int:
        """Start again at 0 (a new NBIRTH); returns 0."""
        self._next = next_seq(BIRTH_SEQ)
        return BIRTH_SEQ

    def take(self) -> int:
        """The number for the next message after the birth."""
        seq = self._next
        self._next = next_seq(seq)
        return seq


__all__ = ["BIRTH_SEQ", "SEQ_MODULO", "SeqCounter", "next_seq"]
