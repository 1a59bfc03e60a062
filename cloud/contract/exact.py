"""Two optional columns of a telemetry chunk: exact integers, and the readings' reasons.

Both are additive keys of format 2, so a cloud that does not know them still reads the chunk
(the values of an exact series also travel as float64 in its usual column, rounded past 2**53):

- ``"int"``: the values, exactly, of the series listed in ``series["int"]`` (delta-coded ids):
  numeric series whose values are all integers, one of them beyond ±2**53 (where float64 starts
  rounding: an int64 register reading 1152939101356429315 would become 1152939101356429312), and
  all of them in int64 or all in uint64. msgpack carries integers up to 64 bits natively.
- ``"why"``: ``[position, reason, position, reason, ...]`` for readings that carry a reason (a bad
  or uncertain reading says why), positions in chunk order. The cloud does not store reasons; the
  gateway's exports show them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, compress
from typing import Any, Final

EXACT: Final = 2**53
"""Past this magnitude float64 rounds integers."""
INT64: Final = (-(2**63), 2**63 - 1)
UINT64: Final = (0, 2**64 - 1)


def exact_series(values: list[Any], counts: Sequence[int], text: set[int]) -> list[int]:
    """The ids of numeric series that need the exact column (ascending)."""
    ints = list(filter(int.__instancecheck__, values))  # bools too: harmless for min/max
    if not ints or (min(ints) >= -EXACT and max(ints) <= EXACT):
        return []
    out = []
    for sid, start in enumerate(accumulate(counts[:-1], initial=0)):
        if sid in text:
            continue
        mine = values[start : start + counts[sid]]
        if all(type(v) is int for v in mine) and _one_width(mine):
            out.append(sid)
    return out


def _one_width(values: list[int]) -> bool:
    low, high = min(values), max(values)
    if low >= -EXACT and high <= EXACT:
        return False  # float64 holds them exactly
    return (INT64[0] <= low and high <= INT64[1]) or (UINT64[0] <= low and high <= UINT64[1])


def exact_column(values: list[Any], counts: Sequence[int], sids: list[int]) -> list[int]:
    """The exact values of `sids`, series after series."""
    starts = list(accumulate(counts[:-1], initial=0))
    return [v for sid in sids for v in values[starts[sid] : starts[sid] + counts[sid]]]


def why_column(reasons: list[Any]) -> list[Any] | None:
    """``[position, reason, ...]`` of the readings that have a reason; None when none has."""
    if not any(reasons):
        return None
    positions = list(compress(range(len(reasons)), reasons))  # only the readings with a reason
    texts = [str(reasons[at]).encode("utf-8", "backslashreplace").decode("utf-8")
             for at in positions]  # fmt: skip
    return [item for pair in zip(positions, texts, strict=True) for item in pair]


def reasons_of(why: Any, total: int) -> list[str | None] | None:
    """Undo `why_column` for `total` readings; None when the chunk has none. Entries that do not
    fit (a damaged or foreign chunk) are skipped: a reason is an explanation, never data."""
    if not isinstance(why, list) or not why:
        return None
    out: list[str | None] = [None] * total
    for at, reason in zip(why[::2], why[1::2], strict=False):
        if type(at) is int and 0 <= at < total and isinstance(reason, str):
            out[at] = reason
    return out


def check_exact(ints: Any, expected: int) -> list[int]:
    """The exact column of an untrusted chunk: `expected` integers within 64 bits; raises
    ValueError naming what is wrong."""
    if not isinstance(ints, list) or len(ints) != expected:
        raise ValueError("the exact integer column does not add up")
    if not all(type(v) is int for v in ints) or (ints and (min(ints) < INT64[0]
                                                          or max(ints) > UINT64[1])):  # fmt: skip
        raise ValueError("the exact integer column holds a value that is not a 64-bit integer")
    return ints
