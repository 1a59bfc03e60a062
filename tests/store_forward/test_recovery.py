"""Damaged files are moved aside and replaced; a full disk leaves the outbox consistent."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from store_forward import (
    DiskFull,
    Lane,
    Outbox,
    OutboxSettings,
    StartupCheck,
    Synchronous,
    iter_chunks,
    read_stats,
)

from .conftest import FakeClock, OpenOutbox

PAGE = 4096


def _filled(db_path: Path, chunks: int = 200) -> list[int]:
    with Outbox(db_path, OutboxSettings(synchronous=Synchronous.NORMAL)) as outbox:
        return outbox.append_many([(os.urandom(1000), 1, Lane.TELEMETRY)] * chunks)


def _integrity(path: Path) -> list[str]:
    conn = apsw.Connection(str(path))
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def _assert_recovered(outbox: Outbox, db_path: Path, original: bytes, reason: str) -> None:
    event = outbox.recovery
    assert event is not None
    assert reason in event.reason
    assert event.moved_to.parent == db_path.parent
    assert event.moved_to.name == "outbox.db.damaged-20270115T080000000000Z"  # fake clock, UTC
    assert event.moved_to.read_bytes() == original  # moved, not rewritten
    assert outbox.stats().chunks == 0
    chunk = outbox.append(b"life goes on", count=1, lane=Lane.ALARM)
    assert outbox.lease().chunk_ids == (chunk,)
    assert [r.moved_to for r in outbox.stats().recoveries] == [event.moved_to]
    assert [r.reason for r in read_stats(db_path).recoveries] == [event.reason]
    assert _integrity(db_path) == ["ok"]


def test_garbage_file_is_moved_aside(open_outbox: OpenOutbox, db_path: Path) -> None:
    garbage = os.urandom(3 * PAGE)
    db_path.write_bytes(garbage)
    _assert_recovered(open_outbox(), db_path, garbage, "NotADBError")


def test_truncated_file_is_moved_aside(open_outbox: OpenOutbox, db_path: Path) -> None:
    _filled(db_path)
    with db_path.open("r+b") as handle:
        handle.truncate(db_path.stat().st_size // 2 + 100)
    truncated = db_path.read_bytes()
    _assert_recovered(open_outbox(), db_path, truncated, "")


def test_failed_integrity_check_is_moved_aside(open_outbox: OpenOutbox, db_path: Path) -> None:
    _filled(db_path)
    # An orphan page: every row still reads fine, only the check notices.
    data = bytearray(db_path.read_bytes())
    pages = struct.unpack(">I", data[28:32])[0]
    data[28:32] = struct.pack(">I", pages + 1)
    data += bytes(PAGE)
    db_path.write_bytes(bytes(data))
    _assert_recovered(open_outbox(), db_path, bytes(data), "quick_check failed")


def test_without_the_startup_check_a_readable_file_is_kept(
    open_outbox: OpenOutbox, db_path: Path
) -> None:
    ids = _filled(db_path, chunks=10)
    data = bytearray(db_path.read_bytes())
    data[28:32] = struct.pack(">I", struct.unpack(">I", data[28:32])[0] + 1)
    db_path.write_bytes(bytes(data + bytes(PAGE)))
    outbox = open_outbox(startup_check=StartupCheck.NONE)
    assert outbox.recovery is None
    assert outbox.lease().chunk_ids == tuple(ids)


def test_a_foreign_sqlite_file_is_moved_aside(open_outbox: OpenOutbox, db_path: Path) -> None:
    conn = apsw.Connection(str(db_path))
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    original = db_path.read_bytes()
    _assert_recovered(open_outbox(), db_path, original, "without an outbox schema version")


def test_recovery_happens_once_not_in_a_loop(
    open_outbox: OpenOutbox, db_path: Path, clock: FakeClock
) -> None:
    db_path.write_bytes(os.urandom(PAGE))
    first = open_outbox()
    assert first.recovery is not None
    first.close()
    clock.advance(1)
    second = open_outbox()
    assert second.recovery is None
    assert len(second.stats().recoveries) == 1
    assert len(list(db_path.parent.glob("outbox.db.damaged-*"))) == 1


def test_disk_full_raises_and_leaves_the_outbox_consistent(
    open_outbox: OpenOutbox, db_path: Path
) -> None:
    outbox = open_outbox()
    kept = [outbox.append(os.urandom(2000), count=2, lane=Lane.EVENT) for _ in range(20)]
    conn = outbox._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchall()[0][0]
    conn.execute(f"PRAGMA max_page_count={pages + 2}")
    with pytest.raises(DiskFull, match="full"):  # noqa: PT012 - fills the disk until it says so
        for _ in range(50):
            kept.append(outbox.append(os.urandom(2000), count=2, lane=Lane.EVENT))  # noqa: PERF401 - kept must hold the ids appended before the error
    with pytest.raises(DiskFull):
        outbox.append_many([(os.urandom(2000), 2, Lane.EVENT)] * 5)
    stats = outbox.stats()
    assert stats.lanes[Lane.EVENT].chunks == len(kept)
    assert stats.lanes[Lane.EVENT].readings == 2 * len(kept)
    assert _integrity(db_path) == ["ok"]
    conn.execute("PRAGMA max_page_count=1000000")  # space again: business as usual
    kept.append(outbox.append(b"after", count=1, lane=Lane.EVENT))
    assert outbox.lease(max_chunks=1000).chunk_ids == tuple(kept)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), so the disk-full error comes from the kernel."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_raises_disk_full_and_keeps_committed_chunks(
    tiny_disk: Path, clock: FakeClock
) -> None:
    path = tiny_disk / "outbox.db"
    filler = tiny_disk / "someone-elses.log"
    filler.write_bytes(bytes(256 * 1024))
    settings = OutboxSettings(synchronous=Synchronous.FULL, quota_bytes=1 << 30)
    kept: list[int] = []
    with Outbox(path, settings, clock=clock) as outbox:
        with pytest.raises(DiskFull):  # noqa: PT012 - fills the disk until it says so
            for _ in range(100):
                chunk = outbox.append(os.urandom(32 * 1024), count=1, lane=Lane.TELEMETRY)
                kept.append(chunk)
        assert kept
        assert outbox.stats().chunks == len(kept)
        # Read-only while the disk is full (a lease writes, and whether the log has a page to
        # spare depends on where the failed append stopped).
        assert [chunk.id for chunk in iter_chunks(path)] == kept
        filler.unlink()  # the operator frees space: the same outbox carries on
        lease = outbox.lease(max_chunks=1000, max_bytes=1 << 30)
        assert lease.chunk_ids == tuple(kept)
        assert outbox.ack(lease) == len(kept)
        outbox.append(b"after", count=1, lane=Lane.ALARM)
    with Outbox(path, settings, clock=clock) as reopened:
        assert reopened.recovery is None
        assert reopened.stats().chunks == 1
    assert _integrity(path) == ["ok"]
