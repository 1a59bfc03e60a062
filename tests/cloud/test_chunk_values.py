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
              st.sampled_from(list(Quality)), st.one_of(st.none(), any_text)),
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
    if all(type(v) is int for v in values) and (
        INT_MIN <= min(values) <= max(values) < 2**63 or 0 <= min(values) <= max(values) <= INT_MAX
    ):  # integers of one width come back exactly (past 2**53 through the exact column)
        return [(v, True) for v in values]
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
    items: list[tuple[str, int, Any, Quality, str | None]],
) -> None:
    _round_trip(items)


@pytest.mark.slow
@settings(max_examples=10_000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(rows)
def test_encoding_never_fails_and_every_value_comes_back_or_is_bad_at_length(
    items: list[tuple[str, int, Any, Quality, str | None]],
) -> None:
    _round_trip(items)


def _round_trip(items: list[tuple[str, int, Any, Quality, str | None]]) -> None:
    readings = [Reading("dev", tag, T0 + ts, value, q, reason=why)
                for tag, ts, value, q, why in items]  # fmt: skip
    back = chunk.decode(chunk.encode(readings))  # type: ignore[arg-type]  # hostile on purpose
    assert sum(len(s.ts) for s in back) == len(readings)
    for series in back:
        tag = series.tag.encode("utf-8", "backslashreplace").decode()
        mine = [r for r in readings
                if r.tag.encode("utf-8", "backslashreplace").decode() == tag]  # fmt: skip
        expected = _expected([r.value for r in mine])
        assert series.ts == [r.ts for r in mine]
        reasons = series.reasons or [None] * len(mine)
        for got, quality, why, reading, (value, kept) in zip(
            series.values, series.qualities, reasons, mine, expected, strict=True
        ):
            assert got == value, (reading.value, got)
            assert type(got) is not float or not isinstance(value, int) or abs(value) <= 2**53
            assert quality == (reading.quality.code if kept else Quality.BAD.code)
            sent = reading.reason or None
            assert why == (sent and sent.encode("utf-8", "backslashreplace").decode())


@settings(max_examples=200)
@given(rows)
def test_the_pipeline_entry_marks_what_no_chunk_carries_bad_with_the_reason(
    items: list[tuple[str, int, Any, Quality, str | None]],
) -> None:
    readings = [Reading("dev", "t", T0 + ts, value, q) for _, ts, value, q, _ in items]
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


EXACT_VALUES = [1152939101356429315, 2**63 - 1, -(2**63), 2**53 + 1, -(2**53) - 1, 0]
UNSIGNED = [2**64 - 1, 2**63, 2**53 + 1, 0]


def test_64_bit_integers_come_back_exactly_at_the_edge_and_in_the_cloud() -> None:
    from cloud.contract import CHUNKS, LeasedChunk, decode_batch, encode_chunk_batch  # noqa: PLC0415
    from edge.chunk import decode_readings  # noqa: PLC0415

    readings = [
        Reading("plc", "counter", T0 + i, v, reason=None) for i, v in enumerate(EXACT_VALUES)
    ]
    readings += [Reading("plc", "energy_wh", T0 + i, v) for i, v in enumerate(UNSIGNED)]
    down = Reading("plc", "down", T0, 0, Quality.BAD, reason="modbus exception 02")
    readings += [Reading("plc", "flow", T0, 1.5), down]
    data = chunk.encode(readings)  # type: ignore[arg-type]
    back = {(r.tag, r.ts): r for r in decode_readings(data)}
    for r in readings:
        got = back[(r.tag, r.ts)]
        assert (got.value, type(got.value) is int or r.tag in ("flow", "down")) == (r.value, True)
    assert back[("down", T0)].reason == "modbus exception 02"
    body = encode_chunk_batch(gateway_id="1", seq=1, created_at=T0, dropped={},
                              chunks=[LeasedChunk("telemetry", len(readings), data)])  # fmt: skip
    series = {s.tag: s for s in decode_batch(body, content_type=CHUNKS).series}
    assert series["counter"].values.tolist() == EXACT_VALUES  # type: ignore[union-attr]
    assert series["energy_wh"].values.tolist() == UNSIGNED  # type: ignore[union-attr]
    assert series["flow"].values.tolist() == [1.5]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/vnd.tagway.batch+msgpack"]
)
def test_64_bit_integers_come_back_exactly_in_the_older_batch_format(content_type: str) -> None:
    from cloud.contract import Batch, SeriesColumns, decode_batch, encode_batch  # noqa: PLC0415

    batch = Batch("1", 1, T0, [
        SeriesColumns("plc", "counter", list(range(T0, T0 + len(EXACT_VALUES))), EXACT_VALUES),
        SeriesColumns("plc", "energy_wh", list(range(T0, T0 + len(UNSIGNED))), UNSIGNED),
    ])  # fmt: skip
    body = encode_batch(batch, content_type=content_type, content_encoding="zstd")
    back = decode_batch(body, content_type=content_type, content_encoding="zstd").series
    assert [s.values.tolist() for s in back] == [EXACT_VALUES, UNSIGNED]  # type: ignore[union-attr]
