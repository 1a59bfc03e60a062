"""Quota tests: both policies, drop order, persistent drop counters, and the file-size bound.

The stated slack (README): with the default 4 KiB pages the database file stays below
``1.4 x quota + 256 KiB`` for chunks of 1 KiB and more (a 1 KiB row fills about three quarters
of a page; bigger payloads pack into overflow pages almost exactly), and the write-ahead log
below ``4 MiB + one transaction``, since it is checkpointed every 1000 pages and truncated
back to 4 MiB. Freed pages are reused, so the file stops growing once it reaches that size.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from store_forward import Lane, OutboxFull, QuotaPolicy, read_stats

from .conftest import FakeClock, OpenOutbox


def test_reject_new_refuses_and_keeps_everything(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox(quota_bytes=1000, policy=QuotaPolicy.REJECT_NEW)
    kept = outbox.append_many([(bytes(400), 4, Lane.TELEMETRY), (bytes(400), 4, Lane.EVENT)])
    with pytest.raises(OutboxFull) as caught:
        outbox.append(bytes(201), count=1, lane=Lane.ALARM)
    assert (caught.value.needed, caught.value.used, caught.value.quota) == (201, 800, 1000)
    assert "reject_new" in str(caught.value)
    outbox.append(bytes(200), count=1, lane=Lane.ALARM)  # exactly at the quota is fine
    stats = outbox.stats()
    assert stats.used_bytes == 1000
    assert sum(lane.dropped_chunks for lane in stats.lanes.values()) == 0
    assert outbox.lease().chunk_ids[1:] == tuple(reversed(kept))  # alarm, event, telemetry


def test_drop_oldest_drops_telemetry_then_events_never_alarms(
    open_outbox: OpenOutbox, db_path: Path
) -> None:
    outbox = open_outbox(quota_bytes=1000)
    alarm = outbox.append(bytes(300), count=1, lane=Lane.ALARM)
    e1, e2 = outbox.append_many([(bytes(100), 2, Lane.EVENT), (bytes(100), 3, Lane.EVENT)])
    _t1, t2 = outbox.append_many(
        [(bytes(200), 10, Lane.TELEMETRY), (bytes(200), 20, Lane.TELEMETRY)]
    )
    # 900 used; 250 more must free 150: the oldest telemetry (200) goes first.
    t3 = outbox.append(bytes(250), count=30, lane=Lane.TELEMETRY)
    assert outbox.lease().chunk_ids == (alarm, e1, e2, t2, t3)
    stats = outbox.stats()
    assert stats.lanes[Lane.TELEMETRY].dropped_chunks == 1
    assert stats.lanes[Lane.TELEMETRY].dropped_readings == 10


def test_drop_oldest_moves_on_to_events_and_refuses_when_only_alarms_are_left(
    open_outbox: OpenOutbox, db_path: Path, clock: FakeClock
) -> None:
    outbox = open_outbox(quota_bytes=1000, lease_timeout_s=10)
    outbox.append(bytes(500), count=1, lane=Lane.ALARM)
    outbox.append(bytes(200), count=2, lane=Lane.EVENT)
    outbox.append(bytes(300), count=3, lane=Lane.TELEMETRY)
    outbox.append(bytes(500), count=5, lane=Lane.ALARM)  # drops the telemetry and the event
    stats = outbox.stats()
    assert stats.lanes[Lane.TELEMETRY].dropped_readings == 3
    assert stats.lanes[Lane.EVENT].dropped_readings == 2
    assert stats.lanes[Lane.ALARM].chunks == 2
    with pytest.raises(OutboxFull, match="alarms, which are never dropped"):
        outbox.append(bytes(1), count=1, lane=Lane.TELEMETRY)
    with pytest.raises(OutboxFull, match="can never fit"):
        outbox.append(bytes(1001), count=1, lane=Lane.ALARM)
    outbox.close()
    # The counters are in the file: another process sees them, and a restart keeps them.
    assert read_stats(db_path).lanes[Lane.EVENT].dropped_chunks == 1
    assert open_outbox(quota_bytes=1000).stats().lanes[Lane.TELEMETRY].dropped_chunks == 1


def test_chunks_under_a_live_lease_are_not_dropped(
    open_outbox: OpenOutbox, clock: FakeClock
) -> None:
    outbox = open_outbox(quota_bytes=1000, lease_timeout_s=10)
    in_flight = outbox.append(bytes(600), count=6, lane=Lane.TELEMETRY)
    lease = outbox.lease()
    with pytest.raises(OutboxFull, match="being uploaded"):
        outbox.append(bytes(600), count=6, lane=Lane.TELEMETRY)
    clock.advance(11)  # the uploader died: its lease lapsed, so the chunk may go
    newer = outbox.append(bytes(600), count=6, lane=Lane.TELEMETRY)
    assert outbox.ack(lease) == 0
    assert outbox.lease().chunk_ids == (newer,)
    assert in_flight != newer


@pytest.mark.parametrize("size", [1024, 16 * 1024])
def test_file_stays_within_quota_plus_slack(
    open_outbox: OpenOutbox, db_path: Path, size: int
) -> None:
    quota = 2 * 1024 * 1024
    outbox = open_outbox(quota_bytes=quota)
    payload = os.urandom(size)
    appended = 3 * quota // size
    for _ in range(appended):
        outbox.append(payload, count=1, lane=Lane.TELEMETRY)
    stats = outbox.stats()
    assert stats.used_bytes <= quota
    assert stats.used_bytes > quota - size
    telemetry = stats.lanes[Lane.TELEMETRY]
    assert telemetry.chunks + telemetry.dropped_chunks == appended
    db_size = db_path.stat().st_size
    wal = db_path.with_name(db_path.name + "-wal")
    assert db_size <= 1.4 * quota + 256 * 1024, db_size
    assert wal.stat().st_size <= 4 * 1024 * 1024 + 256 * 1024
    # Steady state: another quota's worth through the full outbox does not grow the file.
    for _ in range(quota // size):
        outbox.append(payload, count=1, lane=Lane.TELEMETRY)
    assert db_path.stat().st_size <= 1.4 * quota + 256 * 1024
