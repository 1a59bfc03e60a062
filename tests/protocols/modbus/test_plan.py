"""Read coalescing: minimal request counts, limits, gaps, and splits learned from exception 02."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.modbus.config import ModbusTag
from protocols.modbus.plan import ReadPlan, Window, coalesce


def reg(address: int, type_: str = "int16", name: str | None = None, **extra: Any) -> ModbusTag:
    return ModbusTag(
        name=name or f"r{address}_{type_}_{extra.get('bit', '')}",
        table="holding_register",
        address=address,
        type=type_,  # type: ignore[arg-type]
        **extra,
    )


def coil(address: int) -> ModbusTag:
    return ModbusTag(name=f"c{address}", table="coil", address=address, type="bool")


def layout(plan: ReadPlan) -> list[tuple[str, int, int]]:
    return [(b.table, b.start, b.count) for b in plan.blocks]


def test_contiguous_registers_fill_125_per_read() -> None:
    plan = ReadPlan([reg(a) for a in range(250)])
    assert layout(plan) == [("holding_register", 0, 125), ("holding_register", 125, 125)]


def test_a_value_never_straddles_two_reads() -> None:
    # 62 float32 fill 124 registers; the 63rd would need registers 124..125.
    plan = ReadPlan([reg(2 * i, "float32") for i in range(63)])
    assert layout(plan) == [("holding_register", 0, 124), ("holding_register", 124, 2)]


def test_gaps_up_to_the_limit_are_filled() -> None:
    assert len(ReadPlan([reg(0), reg(4)], max_register_gap=3).blocks) == 1
    assert len(ReadPlan([reg(0), reg(5)], max_register_gap=3).blocks) == 2
    assert len(ReadPlan([reg(0), reg(1)], max_register_gap=0).blocks) == 1


def test_tables_are_read_separately_and_bits_by_2000() -> None:
    tags = [coil(a) for a in range(0, 4000, 2)] + [reg(0)]
    plan = ReadPlan(tags, max_bit_gap=1)
    assert layout(plan) == [
        ("coil", 0, 1999),
        ("coil", 2000, 1999),
        ("holding_register", 0, 1),
    ]


def test_overlapping_tags_share_a_read() -> None:
    tags = [reg(10, "uint16", name="word"), *[reg(10, "bit", bit=b) for b in range(16)]]
    plan = ReadPlan(tags)
    assert layout(plan) == [("holding_register", 10, 1)]
    assert len(plan.blocks[0].tags) == 17


def test_exception_02_splits_at_the_gaps_and_is_remembered() -> None:
    plan = ReadPlan([reg(0), reg(1), reg(5), reg(9)], max_register_gap=8)
    assert layout(plan) == [("holding_register", 0, 10)]
    parts = plan.split(plan.blocks[0])
    assert [(b.start, b.count) for b in parts] == [(0, 2), (5, 1), (9, 1)]
    assert layout(plan) == [("holding_register", s, c) for s, c in [(0, 2), (5, 1), (9, 1)]]
    assert plan.cuts["holding_register"] == {2, 6}


def test_exception_02_on_contiguous_tags_bisects_down_to_the_bad_tag() -> None:
    plan = ReadPlan([reg(a) for a in range(8)])
    bad_address = 5
    reads = 0
    pending = list(plan.blocks)
    refused: list[int] = []
    while pending:
        block = pending.pop()
        reads += 1
        if block.start <= bad_address < block.end:
            parts = plan.split(block)
            if not parts:
                refused.extend(t.address for t in block.tags)
            pending.extend(parts)
    assert refused == [bad_address]
    assert reads <= 2 * 3 + 1  # a bisection: about two reads per level of log2(8)
    # The neighbours keep as few reads as the learned cuts allow.
    assert sum(1 for b in plan.blocks if b.start <= bad_address < b.end) == 1
    assert len(plan.blocks) <= 4


def test_a_single_tag_cannot_be_split() -> None:
    plan = ReadPlan([reg(3, "float64")])
    assert plan.split(plan.blocks[0]) == ()


# --- proof against brute force -------------------------------------------------------------


def brute_force_minimum(
    spans: list[tuple[int, int]], max_count: int, max_gap: int, cuts: set[int]
) -> int:
    """The minimum number of valid reads covering every span, by exhaustive search."""
    covered = {a for s, e in spans for a in range(s, e)}
    starts = sorted({s for s, _ in spans})
    ends = sorted({e for _, e in spans})
    candidates: list[frozenset[int]] = []
    for s in starts:
        for e in ends:
            if e <= s or e - s > max_count:
                continue
            if any(s < c < e and not any(a < c < b for a, b in spans) for c in cuts):
                continue
            run = longest_uncovered_run(covered, s, e)
            if run > max_gap:
                continue
            members = frozenset(i for i, (a, b) in enumerate(spans) if s <= a and b <= e)
            candidates.append(members)
    everyone = frozenset(range(len(spans)))
    for k in range(1, len(spans) + 1):
        for combo in itertools.combinations(set(candidates), k):
            if frozenset().union(*combo) == everyone:
                return k
    raise AssertionError("no cover found")


def longest_uncovered_run(covered: set[int], start: int, end: int) -> int:
    longest = current = 0
    for address in range(start, end):
        current = 0 if address in covered else current + 1
        longest = max(longest, current)
    return longest


def assert_valid(
    windows: list[Window],
    spans: list[tuple[int, int]],
    max_count: int,
    max_gap: int,
    cuts: set[int],
) -> None:
    covered = {a for s, e in spans for a in range(s, e)}
    served = set()
    for w in windows:
        assert 1 <= w.count <= max_count
        assert longest_uncovered_run(covered, w.start, w.end) <= max_gap
        assert not any(w.start < c < w.end and not any(a < c < b for a, b in spans) for c in cuts)
        for i in w.members:
            assert w.start <= spans[i][0]
            assert spans[i][1] <= w.end
        served.update(w.members)
    assert served == set(range(len(spans)))


layouts = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from([1, 1, 2, 4])).map(lambda t: (t[0], t[0] + t[1])),
    min_size=1,
    max_size=7,
)


@settings(max_examples=300, deadline=None)
@given(
    spans=layouts,
    max_count=st.integers(4, 16),
    max_gap=st.integers(0, 6),
    cuts=st.sets(st.integers(1, 44), max_size=3),
)
def test_coalesce_matches_the_brute_force_minimum(
    spans: list[tuple[int, int]], max_count: int, max_gap: int, cuts: set[int]
) -> None:
    windows = coalesce(spans, max_count=max_count, max_gap=max_gap, cuts=cuts)
    assert_valid(windows, spans, max_count, max_gap, cuts)
    assert len(windows) == brute_force_minimum(spans, max_count, max_gap, cuts)


def test_coalesce_is_fast_for_ten_thousand_sparse_tags() -> None:
    spans = [(a, a + 2) for a in range(0, 60_000, 6)]
    windows = coalesce(spans, max_count=125, max_gap=3, cuts=range(1000, 60_000, 997))
    assert len(windows) >= len(spans) * 6 // 125
