"""Property test: any sequence of append, lease, ack, release, quarantine, expiry and reopen
keeps the outbox's promises, checked against a plain-Python model.

- nothing acked comes back, nothing unacked is lost (every lease is exactly what the model
  predicts, and at the end everything left is handed out);
- order within a lane is first-in first-out, and lanes go out by priority;
- a chunk is never in two live leases;
- counts and bytes per lane are exact, across reopening the file.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from store_forward import Lane, Lease, Outbox, OutboxSettings, Synchronous

from .conftest import FakeClock

LEASE_TIMEOUT = 30.0


@dataclass
class ModelChunk:
    lane: Lane
    order: int
    count: int
    payload: bytes


class OutboxMachine(RuleBasedStateMachine):
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-stateful-"))
        self.clock = FakeClock()
        self.settings = OutboxSettings(
            synchronous=Synchronous.NORMAL, lease_timeout_s=LEASE_TIMEOUT
        )
        self.outbox = Outbox(self.dir / "outbox.db", self.settings, clock=self.clock)
        self.chunks: dict[int, ModelChunk] = {}
        self.quarantined: dict[int, ModelChunk] = {}
        self.lease_rows: dict[int, tuple[tuple[int, ...], float]] = {}  # id -> (chunks, deadline)
        self.ever: set[int] = set()
        self.gone: set[int] = set()  # acked: must never come back
        self.order = 0

    def teardown(self) -> None:
        try:
            self.clock.advance(LEASE_TIMEOUT + 1)
            self.outbox.requeue_quarantine()
            self.chunks.update(self.quarantined)
            everything = self.outbox.lease(max_chunks=10_000, max_bytes=1 << 30)
            assert list(everything.chunk_ids) == self._expected_order(set(self.chunks))
        finally:
            self.outbox.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _live(self, chunk_id: int) -> bool:
        return any(
            chunk_id in ids and deadline > self.clock.now
            for ids, deadline in self.lease_rows.values()
        )

    def _expected_order(self, ids: set[int]) -> list[int]:
        return sorted(ids, key=lambda i: (self.chunks[i].lane.rank, self.chunks[i].order))

    def _add(self, chunk_id: int, lane: Lane, count: int, payload: bytes) -> None:
        assert chunk_id not in self.ever, "a chunk id was reused"
        self.ever.add(chunk_id)
        self.order += 1
        self.chunks[chunk_id] = ModelChunk(lane, self.order, count, payload)

    @rule(
        lane=st.sampled_from(Lane),
        count=st.integers(0, 1000),
        payload=st.binary(min_size=1, max_size=64),
    )
    def append(self, lane: Lane, count: int, payload: bytes) -> None:
        self._add(self.outbox.append(payload, count=count, lane=lane), lane, count, payload)

    @rule(
        items=st.lists(
            st.tuples(
                st.binary(min_size=1, max_size=64), st.integers(0, 50), st.sampled_from(Lane)
            ),
            min_size=1,
            max_size=4,
        )
    )
    def append_many(self, items: list[tuple[bytes, int, Lane]]) -> None:
        ids = self.outbox.append_many(items)
        for chunk_id, (payload, count, lane) in zip(ids, items, strict=True):
            self._add(chunk_id, lane, count, payload)

    @rule(target=leases, max_chunks=st.integers(1, 6), max_bytes=st.integers(1, 200))
    def lease(self, max_chunks: int, max_bytes: int) -> Lease:
        free = self._expected_order({i for i in self.chunks if not self._live(i)})
        expected: list[int] = []
        total = 0
        for chunk_id in free[:max_chunks]:
            size = len(self.chunks[chunk_id].payload)
            if expected and total + size > max_bytes:
                break
            expected.append(chunk_id)
            total += size
        lease = self.outbox.lease(max_chunks=max_chunks, max_bytes=max_bytes)
        assert list(lease.chunk_ids) == expected
        for chunk in lease.chunks:
            model = self.chunks[chunk.id]
            assert (chunk.payload, chunk.count, chunk.lane) == (
                model.payload, model.count, model.lane,
            )  # fmt: skip
            assert not self._live(chunk.id), "a chunk in two live leases"
        # Leasing forgets expired leases, then records the new one (if it holds anything).
        self.lease_rows = {k: row for k, row in self.lease_rows.items() if row[1] > self.clock.now}
        if lease:
            self.lease_rows[lease.lease_id] = (lease.chunk_ids, lease.deadline)
        return lease

    def _still_here(self, lease: Lease) -> list[int]:
        return [i for i in lease.chunk_ids if i in self.chunks]

    @rule(lease=leases)
    def ack(self, lease: Lease) -> None:
        # The cloud has them: whatever of the lease is still here goes, expired or not.
        here = self._still_here(lease)
        assert self.outbox.ack(lease) == len(here)
        for chunk_id in here:
            del self.chunks[chunk_id]
            self.gone.add(chunk_id)
        self.lease_rows.pop(lease.lease_id, None)

    @rule(lease=leases)
    def release(self, lease: Lease) -> None:
        known = self.lease_rows.pop(lease.lease_id, None) is not None
        expected = len(self._still_here(lease)) if known else 0
        assert self.outbox.release(lease) == expected

    @rule(lease=leases)
    def quarantine(self, lease: Lease) -> None:
        here = self._still_here(lease)
        assert self.outbox.quarantine(lease, "422 bad field") == len(here)
        for chunk_id in here:
            self.quarantined[chunk_id] = self.chunks.pop(chunk_id)
        self.lease_rows.pop(lease.lease_id, None)

    @precondition(lambda self: bool(self.quarantined))
    @rule()
    def requeue(self) -> None:
        assert self.outbox.requeue_quarantine() == len(self.quarantined)
        self.chunks.update(self.quarantined)
        self.quarantined.clear()

    # Steps on both sides of the timeout: drawing floats would mostly hit the range's ends.
    @rule(seconds=st.sampled_from([0.5, 5.0, 15.0, 29.5, 30.5, 61.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reopen(self) -> None:
        self.outbox.close()
        self.outbox = Outbox(self.dir / "outbox.db", self.settings, clock=self.clock)
        assert self.outbox.recovery is None

    @invariant()
    def figures_are_exact(self) -> None:
        stats = self.outbox.stats()
        for lane in Lane:
            mine = [c for c in self.chunks.values() if c.lane is lane]
            quarantined = [c for c in self.quarantined.values() if c.lane is lane]
            figures = stats.lanes[lane]
            assert figures.chunks == len(mine)
            assert figures.readings == sum(c.count for c in mine)
            assert figures.bytes == sum(len(c.payload) for c in mine)
            assert figures.quarantined_chunks == len(quarantined)
            assert figures.quarantined_bytes == sum(len(c.payload) for c in quarantined)
            assert figures.dropped_chunks == 0
        assert stats.leased_chunks == sum(1 for i in self.chunks if self._live(i))
        assert not self.gone & set(self.chunks)


OutboxMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=35, deadline=None)
TestOutboxStateMachine = OutboxMachine.TestCase
