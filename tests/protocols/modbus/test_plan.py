"""Read coalescing: minimal request counts, limits, gaps, and splits learned from exception 02."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.modbus.config import ModbusTag
from protocols.modbus.plan import ReadBlock, ReadPlan, Window, coalesce


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


def refused_by(refused: set[int]) -> Callable[[ReadBlock], bool]:
    """A device that refuses any read touching one of `refused` (the per-address model)."""
    return lambda block: any(block.start <= a < block.end for a in refused)


def run_cycle(plan: ReadPlan, fails: Callable[[ReadBlock], bool]) -> tuple[int, int, set[str]]:
    """One poll cycle as the driver runs it: (requests, refusals, tags read good)."""
    requests = refusals = 0
    good: set[str] = set()

    def read(block: ReadBlock) -> bool:
        nonlocal requests, refusals
        requests += 1
        if not fails(block):
            good.update(t.name for t in block.tags)
            return True
        refusals += 1
        parts = plan.split(block)
        clean = all([read(part) for part in parts])  # noqa: C419 - read every part
        if parts:
            plan.settle(block, clean=clean)
        return False

    for block in plan.blocks:
        read(block)
    return requests, refusals, good


def test_exception_02_in_a_gap_cuts_only_that_gap() -> None:
    plan = ReadPlan([reg(0), reg(1), reg(5), reg(9)], max_register_gap=8)
    assert layout(plan) == [("holding_register", 0, 10)]
    requests, refusals, good = run_cycle(plan, refused_by({3}))
    assert good == {t.name for b in plan.blocks for t in b.tags}  # every tag read this cycle
    assert (requests, refusals) == (5, 2)  # [0,10) and [0,6) refused; [0,2), [5,6), [9,10)
    assert layout(plan) == [("holding_register", 0, 2), ("holding_register", 5, 5)]
    assert plan.cuts["holding_register"] == {2}
    assert run_cycle(plan, refused_by({3}))[:2] == (2, 0)  # remembered: no refusal again


def test_exception_02_on_contiguous_tags_isolates_the_bad_tag() -> None:
    plan = ReadPlan([reg(a) for a in range(8)])
    _, _, good = run_cycle(plan, refused_by({5}))
    assert good == {f"r{a}_int16_" for a in range(8) if a != 5}
    assert layout(plan) == [("holding_register", s, c) for s, c in [(0, 5), (5, 1), (6, 2)]]
    assert run_cycle(plan, refused_by({5}))[:2] == (3, 1)  # the bad tag alone stays bad


def test_a_boundary_the_device_will_not_cross_is_remembered() -> None:
    # Every address exists, but reads may not cross 4 (two memory areas in the device).
    plan = ReadPlan([reg(a) for a in range(8)])
    crossing = lambda block: block.start < 4 < block.end  # noqa: E731 - reads best inline
    requests, refusals, good = run_cycle(plan, crossing)
    assert (requests, refusals, len(good)) == (3, 1, 8)
    assert layout(plan) == [("holding_register", 0, 4), ("holding_register", 4, 4)]


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


@settings(max_examples=200, deadline=None)
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


def brute_force_with_refusals(
    spans: list[tuple[int, int]], max_count: int, max_gap: int, refused: set[int]
) -> int:
    """The fewest reads when any read touching a refused address fails, unless it reads exactly
    one tag (which then stays bad, but a read is still spent on it)."""
    covered = {a for s, e in spans for a in range(s, e)}
    candidates: list[frozenset[int]] = []
    for s in {s for s, _ in spans}:
        for e in {e for _, e in spans}:
            if e <= s or e - s > max_count or longest_uncovered_run(covered, s, e) > max_gap:
                continue
            members = frozenset(i for i, (a, b) in enumerate(spans) if s <= a and b <= e)
            touches = any(s <= a < e for a in refused)
            if not touches or (len(members) == 1 and spans[next(iter(members))] == (s, e)):
                candidates.append(members)
    everyone = frozenset(range(len(spans)))
    for k in range(1, len(spans) + 1):
        for combo in itertools.combinations(set(candidates), k):
            if frozenset().union(*combo) == everyone:
                return k
    raise AssertionError("no cover found")


def _place(steps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    spans, address = [], 0
    for gap, width in steps:
        address += gap
        spans.append((address, address + width))
        address += width
    return spans


disjoint_layouts = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from([1, 1, 2, 4])), min_size=1, max_size=7
).map(_place)


@settings(max_examples=120, deadline=None)
@given(
    spans=disjoint_layouts,
    max_gap=st.integers(0, 4),
    refused=st.sets(st.integers(0, 30), max_size=3),
)
def test_after_refusals_the_plan_settles_on_the_minimum(
    spans: list[tuple[int, int]], max_gap: int, refused: set[int]
) -> None:
    tags = [reg(s, {1: "int16", 2: "int32", 4: "int64"}[e - s], name=f"t{s}") for s, e in spans]
    plan = ReadPlan(tags, max_registers=12, max_register_gap=max_gap)
    fails = refused_by(refused)
    refused_tags = {t.name for t in tags if any(t.address <= a < t.end for a in refused)}
    for _ in range(2 + len(refused)):
        _, _, good = run_cycle(plan, fails)
        assert good == {t.name for t in tags} - refused_tags  # no neighbour is ever blacked out
    requests, refusals, _ = run_cycle(plan, fails)
    assert refusals == len(refused_tags)  # stable: only the refused tags themselves fail
    assert requests == len(plan.blocks)
    assert requests == brute_force_with_refusals(spans, 12, max_gap, refused)
