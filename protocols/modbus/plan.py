"""Read coalescing: the fewest Modbus requests that read every tag, and the memory of bad gaps.

Pure logic, no I/O. Per table, the tags are merged into reads of at most `max_count` addresses
(125 registers for FC3/FC4, 2000 bits for FC1/FC2). A read may span a run of unconfigured
addresses (a *gap*) of at most `max_gap`, because reading a few spare registers costs less than
another round trip. A *cut* is an address boundary no read may cross: the start of every gap
longer than `max_gap`, plus every boundary learned from an exception 02 (ILLEGAL DATA ADDRESS:
the device refused an address inside the read).

Greedy is optimal here: take the uncovered tag with the lowest start address `s`; the read
starting at `s` may reach `min(s + max_count, first cut after s)`; take every uncovered tag that
ends within that limit. Any other read covering that tag starts no later and, being subject to
the same limits, ends no later, so it covers nothing more of what is left; and the validity of a
read only shrinks when the read does. The exchange argument then gives the minimum count (the
tests check it against a brute-force search).

Exception 02 (a refused address inside a read) is a search. `ReadPlan.split(block)` adds one
*tentative* cut inside the failed read (at the gap nearest its middle, else at the tag boundary
nearest its middle) and returns the two reads that replace it; the caller reads them at once and
reports with `settle(block, clean=...)`. If both halves read cleanly, the refused address lay in
the gap at the cut: the cut becomes permanent. If a half failed, the failure is explained inside
it (and its own search records it): the tentative cut is dropped, so it costs no request later.
A read that cannot be split (one tag, or overlapping tags) holds a refused address itself: it is
isolated with permanent cuts at both ends and stays bad. Every permanent cut is therefore one that
any working read must respect, so once a cycle runs without refusals the plan is again the
minimum (the tests check this against a brute-force search); with several refused addresses
in one read that can take a few cycles, each of which still returns every readable tag.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocols.modbus.config import BIT_TABLES, ModbusTag, Table


@dataclass(frozen=True, slots=True)
class Window:
    """One read of a table: `count` addresses from `start`, covering the spans `members`."""

    start: int
    count: int
    members: tuple[int, ...]

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


def gap_cuts(spans: Sequence[tuple[int, int]], max_gap: int) -> set[int]:
    """The start of every unconfigured run longer than `max_gap` between configured addresses."""
    cuts: set[int] = set()
    covered_to: int | None = None
    for start, end in sorted(spans):
        if covered_to is not None and start - covered_to > max_gap:
            cuts.add(covered_to)
        covered_to = end if covered_to is None else max(covered_to, end)
    return cuts


def coalesce(
    spans: Sequence[tuple[int, int]],
    *,
    max_count: int,
    max_gap: int,
    cuts: Iterable[int] = (),
    keys: Sequence[int] | None = None,
) -> list[Window]:
    """The fewest reads covering every span ``[start, end)`` (see the module docstring).

    Args:
        spans: address ranges of the tags of one table.
        max_count: the most addresses one read may cover.
        max_gap: the longest unconfigured run a read may span.
        cuts: learned boundaries no read may cross (ignored where they fall inside a span).
        keys: the member id of each span in the result; defaults to its index.
    """
    ids = list(range(len(spans))) if keys is None else list(keys)
    barriers = sorted(gap_cuts(spans, max_gap).union(_outside_spans(cuts, spans)))
    remaining = sorted(range(len(spans)), key=lambda i: spans[i])
    windows: list[Window] = []
    while remaining:
        start = spans[remaining[0]][0]
        limit = start + max_count
        j = bisect.bisect_right(barriers, start)
        if j < len(barriers) and barriers[j] < limit:
            limit = barriers[j]
        covered: list[int] = []
        rest: list[int] = []
        for position, i in enumerate(remaining):
            if spans[i][0] >= limit:
                rest.extend(remaining[position:])
                break
            (covered if spans[i][1] <= limit else rest).append(i)
        if not covered:  # wider than a read: config validation prevents it; read it alone
            covered, rest = [remaining[0]], remaining[1:]
        end = max(spans[i][1] for i in covered)
        windows.append(Window(start, end - start, tuple(ids[i] for i in covered)))
        remaining = rest
    return windows


def _outside_spans(cuts: Iterable[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    """The cuts that fall strictly inside no span (a cut there would make a tag unreadable)."""
    by_start = sorted(spans)
    kept: list[int] = []
    reach = -1  # the furthest end among spans starting before the current cut
    position = 0
    for cut in sorted(set(cuts)):
        while position < len(by_start) and by_start[position][0] < cut:
            reach = max(reach, by_start[position][1])
            position += 1
        if reach <= cut:
            kept.append(cut)
    return kept


@dataclass(frozen=True, slots=True, eq=False)
class ReadBlock:
    """One Modbus read request and the tags it serves.

    Compared and hashed by identity: the driver keys its compiled decoders by block, and hashing
    a hundred tag models per lookup would cost more than the decode.
    """

    table: Table
    start: int
    count: int
    tags: tuple[ModbusTag, ...]

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


class ReadPlan:
    """The reads for one poll group, refined as the device refuses addresses.

    Args:
        tags: the tags of the group (any tables).
        max_registers: the most registers per FC3/FC4 read.
        max_bits: the most bits per FC1/FC2 read.
        max_register_gap: the longest unconfigured register run a read may span.
        max_bit_gap: the same for coils and discrete inputs.
    """

    def __init__(
        self,
        tags: Sequence[ModbusTag],
        *,
        max_registers: int = 125,
        max_bits: int = 2000,
        max_register_gap: int = 0,
        max_bit_gap: int = 0,
    ) -> None:
        self._tables: dict[Table, tuple[ModbusTag, ...]] = {}
        for tag in tags:
            self._tables[tag.table] = (*self._tables.get(tag.table, ()), tag)
        self._limits = {
            table: (max_bits, max_bit_gap)
            if table in BIT_TABLES
            else (max_registers, max_register_gap)
            for table in self._tables
        }
        self._permanent: dict[Table, set[int]] = {table: set() for table in self._tables}
        self._tentative: dict[ReadBlock, int] = {}
        self.blocks: tuple[ReadBlock, ...] = ()
        self._replan()

    @property
    def cuts(self) -> dict[Table, frozenset[int]]:
        """The boundaries learned from exception 02 (permanent ones), per table."""
        return {table: frozenset(cuts) for table, cuts in self._permanent.items()}

    def split(self, block: ReadBlock) -> tuple[ReadBlock, ...]:
        """`block` was refused with exception 02: the reads to try instead (see module doc).

        Returns an empty tuple when the block cannot be split (one tag, or only overlapping
        tags); the block is then isolated for good, since it holds a refused address itself.
        """
        table_tags = self._tables[block.table]
        cut = _cut_nearest_middle(block, table_tags)
        if cut is None:
            self._permanent[block.table].update({block.start, block.end})
            self._replan()
            return ()
        self._tentative[block] = cut
        return self._blocks_for(block.table, block.tags)

    def settle(self, block: ReadBlock, *, clean: bool) -> None:
        """Report how the reads `split(block)` returned went: `clean` if all succeeded."""
        cut = self._tentative.pop(block)
        if clean:
            self._permanent[block.table].add(cut)
        self._replan()

    def _replan(self) -> None:
        self.blocks = tuple(
            block for table, tags in self._tables.items() for block in self._blocks_for(table, tags)
        )

    def _cuts_of(self, table: Table) -> set[int]:
        tentative = {cut for b, cut in self._tentative.items() if b.table == table}
        return self._permanent[table] | tentative

    def _blocks_for(self, table: Table, tags: Sequence[ModbusTag]) -> tuple[ReadBlock, ...]:
        max_count, max_gap = self._limits[table]
        all_tags = self._tables[table]
        # Gaps are judged against every tag of the table, so a subset replans like the whole.
        windows = coalesce(
            [(t.address, t.end) for t in tags],
            max_count=max_count,
            max_gap=max_gap,
            cuts=self._cuts_of(table) | gap_cuts([(t.address, t.end) for t in all_tags], max_gap),
        )
        return tuple(
            ReadBlock(table, w.start, w.count, tuple(tags[i] for i in w.members)) for w in windows
        )


def _cut_nearest_middle(block: ReadBlock, table_tags: Sequence[ModbusTag]) -> int | None:
    """Where to split a refused read: the gap start nearest its middle, else the tag boundary
    nearest its middle; never inside a tag. None if the read cannot be split."""
    middle = block.start + block.count / 2
    gaps = [
        c
        for c in gap_cuts([(t.address, t.end) for t in table_tags], 0)
        if block.start < c < block.end
    ]
    if gaps:
        return min(gaps, key=lambda c: (abs(c - middle), c))
    candidates = {t.address for t in block.tags} | {t.end for t in block.tags}
    valid = [
        c
        for c in candidates
        if block.start < c < block.end and not any(t.address < c < t.end for t in table_tags)
    ]
    return min(valid, key=lambda c: (abs(c - middle), c)) if valid else None
