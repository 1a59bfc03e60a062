"""The chunk codec carries any value a flush can hold: what it can carry comes back, what it
cannot comes back as a bad reading, and encoding never raises on content."""

from __future__ import annotations

import decimal
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.contract import chunk
from edge.pipeline.encodable import INT_MAX, INT_MIN, encodable, refusal
from protocols.reading import Quality, Reading

T0 = 1_795_000_000_000_000

# Every Python type a decoder or an expression could hand over, at every magnitude: integers far
# past 64 bits (JSON allows any length), text with lone surrogates (JSON's "\ud800"), and types
# no decoder should produce but a bug could.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
any_value = st.one_of(
    st.floats(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([10**400, -(10**400), 2**64, INT_MAX, INT_MIN, INT_MIN - 1, 2**53 + 1]),
    st.booleans(),
    any_text,
    st.none(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.decimals(allow_nan=False),
)
rows = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "\ud800x"]), st.integers(0, 10**10), any_value,
              st.sampled_from(list(Quality))),
    min_size=1, max_size=40,
)  # fmt: skip


def _expected(values: list[Any]) -> list[tuple[Any, bool]]:
    """What each value of one series becomes (value, still carries its quality)."""
    if any(isinstance(v, str) for v in values):  # a text series: numbers travel as text
        out: list[tuple[Any, bool]] = []
        for v in values:
            try:
                text = v if isinstance(v, str) else str(v)
                text.encode("utf-8")
            except (UnicodeEncodeError, ValueError):
                out.append(("", False))
            else:
                out.append((text, True))
        return out
    out = []
    for v in values:
        try:
            number = float(v)
        except (OverflowError, TypeError, ValueError):
            number = math.nan
        out.append((number, True) if math.isfinite(number) else (0.0, False))
    return out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_encoding_never_fails_and_every_value_comes_back_or_is_bad(
    items: list[tuple[str, int, Any, Quality]],
) -> None:
    readings = [Reading("dev", tag, T0 + ts, value, q) for tag, ts, value, q in items]
    back = chunk.decode(chunk.encode(readings))  # type: ignore[arg-type]  # hostile on purpose
    assert sum(len(s.ts) for s in back) == len(readings)
    for series in back:
        tag = series.tag.encode("utf-8", "backslashreplace").decode()
        mine = [r for r in readings
                if r.tag.encode("utf-8", "backslashreplace").decode() == tag]  # fmt: skip
        expected = _expected([r.value for r in mine])
        assert series.ts == [r.ts for r in mine]
        for got, quality, reading, (value, kept) in zip(
            series.values, series.qualities, mine, expected, strict=True
        ):
            assert got == value, (reading.value, got)
            assert quality == (reading.quality.code if kept else Quality.BAD.code)


@settings(max_examples=200)
@given(rows)
def test_the_pipeline_entry_marks_what_no_chunk_carries_bad_with_the_reason(
    items: list[tuple[str, int, Any, Quality]],
) -> None:
    readings = [Reading("dev", "t", T0 + ts, value, q) for _, ts, value, q in items]
    checked = encodable(readings)
    assert len(checked) == len(readings)
    for before, after in zip(readings, checked, strict=True):
        reason = refusal(before.value)
        if reason is None:
            assert after is before
        else:
            assert (after.quality, after.reason) == (Quality.BAD, reason)
            assert refusal(after.value) is None
    # What passed the entry check is carried exactly as the reading says (floats aside, which
    # the codec narrows only when nothing is lost).
    chunk.decode(chunk.encode(checked))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (10**400, "integer of 1329 bits does not fit 64 bits"),
        (-(2**63) - 1, "integer of 64 bits does not fit 64 bits"),
        (2**64, "integer of 65 bits does not fit 64 bits"),
        ("a\x00b", "NUL"),
        ("\ud800", "lone surrogate"),
        (None, "type NoneType cannot be stored"),
        (decimal.Decimal(1), "type Decimal cannot be stored"),
    ],
)
def test_values_past_what_a_chunk_carries_are_bad_readings_that_say_why(
    value: Any, reason: str
) -> None:
    good = Reading("d", "ok", T0, 2**64 - 1)
    (kept, refused) = encodable([good, Reading("d", "t", T0, value)])
    assert kept is good
    assert refused.quality is Quality.BAD
    assert refused.reason is not None
    assert reason in refused.reason
