"""Unit tests of the outbox: order, leases, acks, persistence, schema."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from store_forward import (
    SCHEMA_VERSION,
    InvalidChunk,
    Lane,
    Outbox,
    OutboxClosed,
    OutboxMissing,
    OutboxSettings,
    SchemaTooNew,
    Synchronous,
    read_schema_version,
    read_stats,
)

from .conftest import FakeClock, OpenOutbox


def test_lease_hands_out_alarms_then_events_then_telemetry_fifo(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox()
    t1 = outbox.append(b"t1", count=1, lane=Lane.TELEMETRY)
    e1 = outbox.append(b"e1", count=1, lane=Lane.EVENT)
    t2 = outbox.append(b"t2", count=1, lane=Lane.TELEMETRY)
    a1 = outbox.append(b"a1", count=1, lane=Lane.ALARM)
    e2 = outbox.append(b"e2", count=1, lane=Lane.EVENT)
    lease = outbox.lease()
    assert lease.chunk_ids == (a1, e1, e2, t1, t2)
    assert [c.payload for c in lease.chunks] == [b"a1", b"e1", b"e2", b"t1", b"t2"]
    assert [c.lane for c in lease.chunks] == [
        Lane.ALARM, Lane.EVENT, Lane.EVENT, Lane.TELEMETRY, Lane.TELEMETRY,
    ]  # fmt: skip


def test_lease_respects_max_chunks_and_max_bytes(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox()
    ids = outbox.append_many([(bytes(100), 5, Lane.TELEMETRY) for _ in range(5)])
    first = outbox.lease(max_chunks=2)
    assert first.chunk_ids == tuple(ids[:2])
    second = outbox.lease(max_bytes=250)
    assert second.chunk_ids == tuple(ids[2:4])
    assert second.nbytes == 200
    assert second.count == 10
    third = outbox.lease(max_bytes=1)  # an oversized chunk still goes out, alone
    assert third.chunk_ids == (ids[4],)
    assert not outbox.lease()


def test_ack_deletes_for_good_and_release_gives_back(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox()
    a, b = outbox.append_many([(b"a", 1, Lane.TELEMETRY), (b"b", 2, Lane.TELEMETRY)])
    lease_a = outbox.lease(max_chunks=1)
    lease_b = outbox.lease(max_chunks=1)
    assert (lease_a.chunk_ids, lease_b.chunk_ids) == ((a,), (b,))
    assert outbox.ack(lease_a) == 1
    assert outbox.ack(lease_a) == 0  # a second ack deletes nothing
    assert outbox.release(lease_b) == 1
    again = outbox.lease()
    assert again.chunk_ids == (b,)
    assert outbox.ack(again) == 1
    assert outbox.stats().chunks == 0


def test_expired_lease_is_handed_out_again(open_outbox: OpenOutbox, clock: FakeClock) -> None:
    outbox = open_outbox(lease_timeout_s=30)
    chunk = outbox.append(b"x", count=1, lane=Lane.EVENT)
    first = outbox.lease()
    clock.advance(29.9)
    assert not outbox.lease()  # still live: never in two live leases
    assert outbox.stats().leased_chunks == 1
    clock.advance(0.2)
    assert outbox.stats().leased_chunks == 0
    second = outbox.lease()
    assert second.chunk_ids == (chunk,)
    assert outbox.release(first) == 0  # expired and forgotten: nothing to give back
    assert outbox.stats().leased_chunks == 1  # ...and the newer lease still holds it
    # The first upload got through after all: the cloud has the chunk, so it goes for good.
    assert outbox.ack(first) == 1
    assert outbox.ack(second) == 0
    assert not outbox.lease()


def test_expired_lease_not_yet_handed_out_can_still_be_acked(
    open_outbox: OpenOutbox, clock: FakeClock
) -> None:
    outbox = open_outbox(lease_timeout_s=5)
    outbox.append(b"x", count=1, lane=Lane.EVENT)
    lease = outbox.lease()
    clock.advance(60)
    assert outbox.ack(lease) == 1
    assert not outbox.lease()


def test_chunks_and_counters_survive_reopen(open_outbox: OpenOutbox, db_path: Path) -> None:
    outbox = open_outbox()
    ids = outbox.append_many([(b"p" * 10, 3, Lane.ALARM), (b"q" * 20, 4, Lane.TELEMETRY)])
    outbox.close()
    with pytest.raises(OutboxClosed):
        outbox.append(b"x", count=1, lane=Lane.ALARM)
    reopened = open_outbox()
    stats = reopened.stats()
    assert stats.lanes[Lane.ALARM].chunks == 1
    assert stats.lanes[Lane.ALARM].readings == 3
    assert stats.lanes[Lane.TELEMETRY].bytes == 20
    assert reopened.lease().chunk_ids == tuple(ids)


def test_chunk_ids_are_never_reused(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox()
    seen = set()
    for _ in range(3):
        chunk = outbox.append(b"x", count=1, lane=Lane.TELEMETRY)
        assert chunk not in seen
        seen.add(chunk)
        assert outbox.ack(outbox.lease()) == 1
        outbox.close()
        outbox = open_outbox()  # drained and reopened: the next id must still be new
    assert len(seen) == 3


def test_append_many_is_all_or_nothing(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox()
    with pytest.raises(InvalidChunk):
        outbox.append_many([(b"ok", 1, Lane.EVENT), (b"", 1, Lane.EVENT)])
    with pytest.raises(InvalidChunk):
        outbox.append(b"x", count=-1, lane=Lane.EVENT)
    with pytest.raises(InvalidChunk):
        outbox.append(b"x", count=1, lane="event")  # type: ignore[arg-type]
    with pytest.raises(InvalidChunk):
        outbox.lease(max_chunks=0)
    assert outbox.stats().chunks == 0
    assert outbox.append_many([]) == []


def test_quarantine_moves_a_lease_aside_and_requeue_restores_order(
    open_outbox: OpenOutbox, db_path: Path
) -> None:
    outbox = open_outbox()
    ids = outbox.append_many([(b"a" * 10, 2, Lane.TELEMETRY), (b"b" * 10, 3, Lane.TELEMETRY)])
    bad = outbox.lease(max_chunks=1)
    assert outbox.quarantine(bad, "422 values.temp: not a number") == 1
    assert outbox.ack(bad) == 0
    listed = outbox.quarantined()
    assert [(q.id, q.reason, q.count) for q in listed] == [
        (ids[0], "422 values.temp: not a number", 2)
    ]
    stats = read_stats(db_path)
    assert stats.lanes[Lane.TELEMETRY].quarantined_chunks == 1
    assert stats.lanes[Lane.TELEMETRY].chunks == 1
    assert stats.used_bytes == 20  # quarantine still counts against the quota
    assert outbox.lease().chunk_ids == (ids[1],)
    assert outbox.requeue_quarantine() == 1
    assert outbox.quarantined() == []
    assert outbox.stats().lanes[Lane.TELEMETRY].chunks == 2


def test_stats_report_lanes_ages_and_file(open_outbox: OpenOutbox, clock: FakeClock) -> None:
    outbox = open_outbox(quota_bytes=10_000)
    outbox.append(b"x" * 100, count=7, lane=Lane.EVENT)
    clock.advance(12.5)
    outbox.append(b"y" * 50, count=1, lane=Lane.EVENT)
    outbox.lease(max_chunks=1)
    stats = outbox.stats()
    event = stats.lanes[Lane.EVENT]
    assert (event.chunks, event.readings, event.bytes) == (2, 8, 150)
    assert event.oldest_age_s == pytest.approx(12.5)
    assert event.leased_chunks == 1
    assert stats.lanes[Lane.ALARM].oldest_age_s is None
    assert stats.quota_bytes == 10_000
    assert stats.used_bytes == 150
    assert stats.file_bytes > 0
    assert stats.schema_version == SCHEMA_VERSION


def test_another_writer_is_seen_before_the_quota_check(
    open_outbox: OpenOutbox, db_path: Path
) -> None:
    first = open_outbox(quota_bytes=1000)
    second = open_outbox(quota_bytes=1000)
    a = first.append(b"x" * 400, count=1, lane=Lane.TELEMETRY)
    b = second.append(b"y" * 400, count=1, lane=Lane.TELEMETRY)
    reloads = first.reloads
    c = first.append(b"z" * 400, count=1, lane=Lane.TELEMETRY)  # must drop a, not overflow
    assert first.reloads == reloads + 1  # it noticed the other writer and recounted
    assert len({a, b, c}) == 3
    assert first.stats().used_bytes == 800
    assert second.lease().chunk_ids == (b, c)
    assert first.stats().lanes[Lane.TELEMETRY].dropped_chunks == 1


def test_schema_version_and_migrations_are_recorded(open_outbox: OpenOutbox, db_path: Path) -> None:
    open_outbox().close()
    conn = apsw.Connection(str(db_path))
    try:
        assert conn.execute("PRAGMA user_version").fetchall() == [(SCHEMA_VERSION,)]
        rows = conn.execute("SELECT version FROM schema_migration").fetchall()
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    finally:
        conn.close()


def test_a_file_from_a_newer_schema_is_refused_and_left_alone(
    open_outbox: OpenOutbox, db_path: Path, clock: FakeClock
) -> None:
    outbox = open_outbox()
    outbox.append(b"keep me", count=1, lane=Lane.ALARM)
    outbox.close()
    conn = apsw.Connection(str(db_path))
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    before = sorted(p.name for p in db_path.parent.iterdir())
    with pytest.raises(SchemaTooNew) as caught:
        Outbox(db_path, clock=clock)
    assert caught.value.found == SCHEMA_VERSION + 1
    assert caught.value.supported == SCHEMA_VERSION
    assert "newer tagway" in str(caught.value)
    with pytest.raises(SchemaTooNew):
        read_stats(db_path)
    assert read_schema_version(db_path) == SCHEMA_VERSION + 1  # readable, for installers
    assert sorted(p.name for p in db_path.parent.iterdir()) == before


@pytest.mark.parametrize("sync", list(Synchronous))
def test_synchronous_setting_is_applied(db_path: Path, sync: Synchronous) -> None:
    with Outbox(db_path, OutboxSettings(synchronous=sync)) as outbox:
        outbox.append(b"x", count=1, lane=Lane.ALARM)
        level = outbox._conn.execute("PRAGMA synchronous").fetchall()[0][0]  # type: ignore[union-attr]
        assert level == {Synchronous.FULL: 2, Synchronous.NORMAL: 1}[sync]
        outbox.lease()  # leases relax to NORMAL and must restore the setting
        level = outbox._conn.execute("PRAGMA synchronous").fetchall()[0][0]  # type: ignore[union-attr]
        assert level == {Synchronous.FULL: 2, Synchronous.NORMAL: 1}[sync]


def test_read_stats_never_creates_an_outbox(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    with pytest.raises(OutboxMissing):
        read_stats(missing)
    assert not missing.exists()


def test_newest_first_hands_out_live_telemetry_but_keeps_alarms_first(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        old = [outbox.append(b"old%d" % i, count=1, lane=Lane.TELEMETRY) for i in range(5)]
        alarm = outbox.append(b"alarm", count=1, lane=Lane.ALARM)
        new = outbox.append(b"new", count=1, lane=Lane.TELEMETRY)
        lease = outbox.lease(max_chunks=3, newest_first=True)
        assert lease.chunk_ids == (alarm, new, old[-1])
        rest = outbox.lease(max_chunks=10)
        assert rest.chunk_ids == tuple(old[:-1])  # oldest first, and never in two leases


def test_forget_leases_frees_chunks_held_by_a_dead_process(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        chunk = outbox.append(b"x", count=1, lane=Lane.TELEMETRY)
        assert outbox.lease().chunk_ids == (chunk,)
    with Outbox(tmp_path / "o.db") as outbox:  # the next life of the agent
        assert not outbox.lease()  # still held until the lease timeout...
        assert outbox.forget_leases() == 1
        assert outbox.lease().chunk_ids == (chunk,)  # ...unless the owner forgets them at start
