"""Chunks round-trip exactly, stay small, and refuse damage loudly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import chunk
from protocols.reading import Quality, Reading

T0 = 1_795_000_000_000_000


def test_round_trip_keeps_every_field() -> None:
    readings = [
        Reading("pump1", "flow", T0, 12.5, Quality.GOOD, "m3/h", True),
        Reading("pump1", "running", T0, True, simulated=True),
        Reading("pump1", "mode", T0, "AUTO", Quality.UNCERTAIN, simulated=True),
        Reading("pump1", "flow", T0 + 250_000, 12.75, Quality.BAD, "m3/h", True),
        Reading("tank1", "level", T0 + 3_000_000_000, 0.1),  # 50 min later: wide offsets
    ]
    back = chunk.decode_readings(chunk.encode(readings))
    key = lambda r: (r.device, r.tag, r.ts)  # noqa: E731 - a sort key reads best inline
    expected = [r._replace(value=float(r.value) if not isinstance(r.value, str) else r.value)
                for r in readings]  # fmt: skip
    assert sorted(back, key=key) == sorted(expected, key=key)


def test_float64_values_are_exact_and_float32_values_are_narrowed() -> None:
    precise = [Reading("d", "t", T0 + i, 0.1 * i) for i in range(100)]
    assert [r.value for r in chunk.decode_readings(chunk.encode(precise))] == [
        0.1 * i for i in range(100)
    ]
    noise = np.random.default_rng(3).normal(50, 2, 1000)
    f32 = [Reading("d", "t", T0 + i, float(np.float32(v))) for i, v in enumerate(noise)]
    f64 = [Reading("d", "t", T0 + i, float(v)) for i, v in enumerate(noise)]
    assert chunk.decode_readings(chunk.encode(f32)) == f32  # narrowing loses nothing
    assert len(chunk.encode(f32)) < 0.6 * len(chunk.encode(f64))


def test_a_polled_plant_costs_few_bytes_per_reading() -> None:
    rng = np.random.default_rng(1)
    readings = []
    for cycle in range(4):  # four polls of 2,500 tags land in one chunk at most
        ts = T0 + cycle * 250_000
        readings.extend(
            Reading(f"pump{d}", f"reg{t}", ts, float(np.float32(100 + rng.normal(0, 0.5))))
            for d in range(50)
            for t in range(50)
        )
    size = len(chunk.encode(readings))
    assert size / len(readings) < 8  # names are per chunk; values carry real noise


def test_damaged_chunks_are_refused_with_a_clear_error() -> None:
    data = chunk.encode([Reading("d", "t", T0, 1.0)])
    with pytest.raises(chunk.ChunkError, match=r"not valid|cannot be decoded"):
        chunk.decode(data[:-3])
    with pytest.raises(chunk.ChunkError, match=r"not valid|cannot be decoded"):
        chunk.decode(b"garbage")


def test_an_empty_flush_is_not_a_chunk() -> None:
    with pytest.raises(ValueError, match="at least one reading"):
        chunk.encode([])


values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.booleans(),
)


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 10**10), values,
                  st.sampled_from(list(Quality))),
        min_size=1, max_size=50,
    )
)  # fmt: skip
def test_numeric_round_trip_is_exact(rows: list[tuple[str, int, float, Quality]]) -> None:
    readings = [Reading("dev", tag, T0 + ts, value, q) for tag, ts, value, q in rows]
    back = chunk.decode_readings(chunk.encode(readings))
    by_tag = lambda rs: sorted(((r.tag, r.ts, r.value, r.quality) for r in rs), key=repr)  # noqa: E731
    want = [(r.tag, r.ts, float(r.value), r.quality) for r in readings]
    assert by_tag(back) == sorted(want, key=repr)


def test_nan_and_inf_become_bad_readings_instead_of_poisoning_the_batch() -> None:
    readings = [
        Reading("d", "a", T0, float("nan")),
        Reading("d", "mode", T0, "AUTO"),
        Reading("d", "b", T0, float("inf"), Quality.UNCERTAIN),
        Reading("d", "c", T0, 2.5),
    ]
    back = {r.tag: r for r in chunk.decode_readings(chunk.encode(readings))}
    assert (back["a"].value, back["a"].quality) == (0.0, Quality.BAD)
    assert (back["b"].value, back["b"].quality) == (0.0, Quality.BAD)
    assert (back["c"].value, back["c"].quality) == (2.5, Quality.GOOD)
    assert (back["mode"].value, back["mode"].quality) == ("AUTO", Quality.GOOD)


def test_the_uplinks_plain_decoding_agrees_with_the_readings() -> None:
    readings = [
        Reading("p", "flow", T0, 1.5, unit="m3/h", simulated=True),
        Reading("p", "mode", T0, "AUTO"),
        Reading("p", "flow", T0 + 10, 2.5, Quality.BAD, "m3/h", True),
    ]
    plain = {(s["device"], s["tag"]): s for s in chunk.decode_plain(chunk.encode(readings))}
    assert plain[("p", "flow")] == {"device": "p", "tag": "flow", "ts": [T0, T0 + 10],
                                    "values": [1.5, 2.5], "qualities": [0, 2], "unit": "m3/h",
                                    "simulated": True}  # fmt: skip
    assert plain[("p", "mode")] == {"device": "p", "tag": "mode", "ts": [T0], "values": ["AUTO"]}


# A chunk written by release 0.1.0 (format version 1), as it may still lie in an outbox after an
# upgrade: flow 12.5 good and 0.1 bad (float64, so the whole chunk was float64), mode "AUTO".
V1_CHUNK = bytes.fromhex(
    "28b52ffd20a1dd0400f40889a17601a27430cf0006608b015f3000a673657269657386a664657669636592a570"
    "756d7031a374616792a4666c6f77a46d6f6465a4756e697492a46d332f68c0a373696d92c3c3a5636f756e7492"
    "0201a4746578749101a27473c40c0000000090d00300a374737704a36e756dc410009a009929b9403fa46e756d"
    "7708a374787491a44155544fa171c403000200030072b45c254067284f"
)


def test_chunks_written_by_the_previous_release_still_decode() -> None:
    assert chunk.decode_readings(V1_CHUNK) == [
        Reading("pump1", "flow", T0, 12.5, Quality.GOOD, "m3/h", True),
        Reading("pump1", "flow", T0 + 250_000, 0.1, Quality.BAD, "m3/h", True),
        Reading("pump1", "mode", T0, "AUTO", Quality.GOOD, None, True),
    ]


def test_one_float64_series_does_not_widen_the_float32_ones() -> None:
    noise = np.random.default_rng(5).normal(50, 2, 2000)
    f32 = [Reading("d", f"t{i}", T0, float(np.float32(v))) for i, v in enumerate(noise)]
    precise = Reading("d", "precise", T0, 0.1)  # not exact in float32
    mixed = chunk.encode([*f32, precise])
    assert chunk.decode_readings(mixed) == [*f32, precise]
    assert len(mixed) < len(chunk.encode(f32)) + 64  # the float32 series stay 4 bytes wide


def test_a_flush_of_repeated_polls_comes_back_grouped_by_series_in_time_order() -> None:
    polls = [
        Reading(f"dev{d}", f"tag{t}", T0 + p * 20_000, float(p * 100 + t), simulated=True)
        for p in range(5)
        for d in range(3)
        for t in range(40)
    ]
    back = chunk.decode(chunk.encode(polls))
    assert [(s.device, s.tag) for s in back] == [
        (f"dev{d}", f"tag{t}") for d in range(3) for t in range(40)
    ]  # series in order of first appearance
    assert all(s.ts == [T0 + p * 20_000 for p in range(5)] for s in back)
    assert back[41].values == [float(p * 100 + 1) for p in range(5)]


def test_tag_names_sharing_prefixes_come_back_exactly() -> None:
    names = ["aux_0009", "aux_0010", "aux_001", "a", "aux_0010x", "température", "temp", "ümlaut"]
    readings = [Reading("d", name, T0, float(i)) for i, name in enumerate(names)]
    assert chunk.decode_readings(chunk.encode(readings)) == readings


def test_tag_names_are_front_coded_per_device_and_round_trip_across_flushes() -> None:
    """Each device's run of tag names is coded on its own (issue 23: a run repeats every flush
    and is coded once), so names shared across devices and a device split between two chunks
    still decode to exactly what was encoded."""
    polls = [
        [Reading(device, f"aux_{t:04d}", T0 + c, float(t)) for t in range(300)]
        for c in range(2) for device in ("pump1", "pump2", "tank1")
    ]  # fmt: skip
    flat = [r for poll in polls for r in poll]
    for part in (flat[:450], flat[450:1000], flat[1000:]):
        assert chunk.decode_readings(chunk.encode(part)) == part
    odd = [Reading("pump\ud8001", "a\ud800b", T0, 1.0), Reading("pump2", "a\ud800c", T0, 2.0)]
    names = [(r.device, r.tag) for r in chunk.decode_readings(chunk.encode(odd))]
    assert names == [("pump\\ud8001", "a\\ud800b"), ("pump2", "a\\ud800c")]


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["t", "u", "v"]),
                  st.integers(0, 10**10),
                  st.one_of(values, st.text(max_size=5), st.integers(2**53, 2**63 - 1)),
                  st.sampled_from(list(Quality)), st.sampled_from([None, "m3/h"])),
        min_size=1, max_size=40,
    )
)  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_the_publishers_rows_agree_with_the_readings(
    rows: list[tuple[str, str, int, object, Quality, str | None]],
) -> None:
    """`decode_rows` (the Sparkplug publisher's path) gives what `decode_readings` gives, for
    every mix of numeric, text and exact-integer series."""
    readings = [Reading(d, t, T0 + ts, v, q, unit)  # type: ignore[arg-type]
                for d, t, ts, v, q, unit in rows]  # fmt: skip
    data = chunk.encode(readings)
    expected = [(r.device, r.tag, r.ts, r.value, r.quality.code, r.unit)
                for r in chunk.decode_readings(data)]  # fmt: skip
    assert chunk.decode_rows(data) == expected
