"""Several consumers of one outbox: the cloud uplink and the Sparkplug publisher each at their own
durable position, one down never blocking the other, drops counted per consumer."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from store_forward import InvalidChunk, Lane, Outbox, OutboxSettings, read_stats

from .conftest import FakeClock, OpenOutbox

BOTH = ("uplink", "sparkplug")


def test_each_consumer_gets_every_chunk_and_a_chunk_goes_when_both_acked(
    open_outbox: OpenOutbox,
) -> None:
    outbox = open_outbox(consumers=BOTH)
    ids = [outbox.append(bytes([i]) * 10, count=i + 1, lane=Lane.TELEMETRY) for i in range(3)]
    cloud = outbox.lease()
    assert cloud.consumer == "uplink"
    assert list(cloud.chunk_ids) == ids
    # The uplink holding them does not hide them from the Sparkplug publisher.
    spark = outbox.lease(consumer="sparkplug")
    assert (spark.consumer, list(spark.chunk_ids)) == ("sparkplug", ids)
    assert outbox.ack(cloud) == 0  # still needed by the publisher: nothing deleted yet
    assert not outbox.lease()  # ... but gone from the uplink's queue for good
    assert outbox.stats().chunks == 3
    assert outbox.ack(spark) == 3
    assert outbox.stats().chunks == 0
    assert not outbox.lease(consumer="sparkplug")


def test_one_consumer_down_never_blocks_the_other(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox(consumers=BOTH)
    for i in range(50):
        outbox.append(b"x" * 100, count=10, lane=Lane.TELEMETRY)
        lease = outbox.lease()  # the uplink keeps up; the publisher's broker is down
        assert len(lease) == 1, f"round {i}: the uplink got {len(lease)} chunks"
        outbox.ack(lease)
    figures = outbox.stats().consumers
    assert (figures["uplink"].pending_chunks, figures["sparkplug"].pending_chunks) == (0, 50)
    assert figures["sparkplug"].pending_readings == 500
    backlog = outbox.lease(consumer="sparkplug", max_chunks=100)  # the broker is back
    assert len(backlog) == 50
    outbox.ack(backlog)
    assert outbox.stats().chunks == 0


def test_positions_survive_a_reopen(db_path: Path, clock: FakeClock) -> None:
    settings = OutboxSettings(consumers=BOTH)
    with Outbox(db_path, settings, clock=clock) as outbox:
        first, second = (outbox.append(b"p" * 20, count=1, lane=Lane.EVENT) for _ in range(2))
        outbox.ack(outbox.lease(max_chunks=1))
        outbox.ack(outbox.lease(consumer="sparkplug", max_chunks=2))
    with Outbox(db_path, settings, clock=clock) as outbox:
        assert outbox.lease().chunk_ids == (second,)
        assert not outbox.lease(consumer="sparkplug")
        assert first not in {c.id for c in outbox.lease().chunks}


def test_drops_are_counted_per_consumer_and_never_take_a_chunk_being_sent(
    open_outbox: OpenOutbox,
) -> None:
    outbox = open_outbox(consumers=BOTH, quota_bytes=1000)
    ids = [outbox.append(b"t" * 200, count=5, lane=Lane.TELEMETRY) for _ in range(4)]
    outbox.ack(outbox.lease(max_chunks=2))  # the uplink sent the two oldest
    sending = outbox.lease(consumer="sparkplug", max_chunks=1)  # the publisher is on the first
    assert sending.chunk_ids == (ids[0],)
    outbox.append(b"n" * 400, count=7, lane=Lane.TELEMETRY)  # needs 200 more bytes than free
    figures = outbox.stats()
    # The first chunk is in the publisher's hands: the second went instead. The uplink had
    # sent it, so only the publisher lost it.
    assert figures.lanes[Lane.TELEMETRY].dropped_chunks == 1
    assert figures.consumers["sparkplug"].dropped_readings[Lane.TELEMETRY] == 5
    assert figures.consumers["uplink"].dropped_readings[Lane.TELEMETRY] == 0
    assert outbox.ack(sending) == 1  # sent by both now
    rest = outbox.lease(consumer="sparkplug", max_chunks=10)
    assert rest.chunk_ids[:2] == (ids[2], ids[3])


def test_a_drop_counts_for_every_consumer_that_had_not_sent_it(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox(consumers=BOTH, quota_bytes=500)
    outbox.append(b"a" * 300, count=3, lane=Lane.TELEMETRY)
    outbox.append(b"b" * 300, count=4, lane=Lane.TELEMETRY)
    figures = outbox.stats()
    assert {name: c.dropped_total for name, c in figures.consumers.items()} == {
        "uplink": 3,
        "sparkplug": 3,
    }
    assert figures.dropped_readings == 3  # one chunk dropped, whoever missed it


def test_quarantine_is_the_refusing_consumers_only(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox(consumers=BOTH)
    chunk = outbox.append(b"bad" * 10, count=2, lane=Lane.TELEMETRY)
    assert outbox.quarantine(outbox.lease(), "422: invalid") == 1
    assert not outbox.lease()
    assert outbox.lease(consumer="sparkplug").chunk_ids == (chunk,)  # it still gets it
    assert outbox.requeue_quarantine() == 1
    assert outbox.lease().chunk_ids == (chunk,)


def test_a_new_consumer_starts_at_the_end_and_a_removed_one_is_forgotten(
    db_path: Path, clock: FakeClock
) -> None:
    with Outbox(db_path, OutboxSettings(), clock=clock) as outbox:
        old = outbox.append(b"o" * 10, count=1, lane=Lane.TELEMETRY)
    with Outbox(db_path, OutboxSettings(consumers=BOTH), clock=clock) as outbox:
        new = outbox.append(b"n" * 10, count=1, lane=Lane.TELEMETRY)
        published = outbox.lease(consumer="sparkplug")
        assert published.chunk_ids == (new,)
        assert outbox.lease().chunk_ids == (old, new)
        outbox.ack(published)
    # The publisher is switched off: chunks only it still needed would otherwise stay forever.
    with Outbox(db_path, OutboxSettings(consumers=("sparkplug",)), clock=clock) as outbox:
        assert outbox.stats().chunks == 0
        with pytest.raises(InvalidChunk, match="no consumer 'uplink'"):
            outbox.lease(consumer="uplink")


def test_opening_without_naming_consumers_keeps_the_files_own(
    db_path: Path, clock: FakeClock
) -> None:
    """`tagway buffer requeue-quarantine` (or any tool) opens the outbox on the side without the
    agent's settings: that must not forget the Sparkplug publisher and delete its backlog."""
    with Outbox(db_path, OutboxSettings(consumers=BOTH), clock=clock) as outbox:
        chunk = outbox.append(b"s" * 10, count=3, lane=Lane.TELEMETRY)
        outbox.ack(outbox.lease())  # the cloud has it; the publisher does not yet
    with Outbox(db_path, OutboxSettings(), clock=clock) as outbox:
        assert outbox.consumers == BOTH
        assert outbox.stats().chunks == 1
    with Outbox(db_path, OutboxSettings(consumers=BOTH), clock=clock) as outbox:
        assert outbox.lease(consumer="sparkplug").chunk_ids == (chunk,)


def test_other_processes_read_the_consumer_figures(db_path: Path) -> None:
    with Outbox(db_path, OutboxSettings(consumers=BOTH)) as outbox:
        outbox.append(b"z" * 10, count=9, lane=Lane.ALARM)
        outbox.ack(outbox.lease())
    figures = read_stats(db_path).consumers
    assert (figures["uplink"].pending_readings, figures["sparkplug"].pending_readings) == (0, 9)


def test_a_schema_1_outbox_upgrades_in_place_with_its_chunks_pending_for_the_uplink(
    db_path: Path,
) -> None:
    from store_forward import schema  # noqa: PLC0415

    conn = apsw.Connection(str(db_path))
    conn.execute(schema.MIGRATIONS[0].sql)
    conn.execute("PRAGMA user_version=1")
    conn.execute(
        "INSERT INTO chunk(id, count, size, created, payload) VALUES (?, 6, 3, 0, x'010203')",
        ((Lane.TELEMETRY.rank << schema.LANE_SHIFT) | 1,),
    )
    conn.execute("UPDATE lane_counter SET dropped_readings = 11 WHERE lane = 2")
    conn.close()
    with Outbox(db_path, OutboxSettings(consumers=BOTH)) as outbox:
        figures = outbox.stats()
        assert figures.schema_version == schema.SCHEMA_VERSION
        assert figures.consumers["uplink"].pending_readings == 6
        assert figures.consumers["uplink"].dropped_readings[Lane.TELEMETRY] == 11
        assert figures.consumers["sparkplug"].pending_readings == 0  # it starts at the end
        lease = outbox.lease()
        assert [c.payload for c in lease.chunks] == [b"\x01\x02\x03"]
        assert outbox.ack(lease) == 1


@pytest.mark.parametrize("consumers", [(), ("a", "a"), ("",)])
def test_consumer_names_are_checked(consumers: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="consumer"):
        OutboxSettings(consumers=consumers)
