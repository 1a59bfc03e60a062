"""AsyncOutbox: the same outbox for the event loop, on one worker thread that close() joins."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import apsw
import pytest

from store_forward import (
    SCHEMA_VERSION,
    AsyncOutbox,
    Lane,
    OutboxClosed,
    OutboxSettings,
    SchemaTooNew,
    Synchronous,
)
from store_forward.aio import WORKER_THREAD_PREFIX


def _workers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(WORKER_THREAD_PREFIX)]


async def test_round_trip_and_the_worker_thread_is_joined(db_path: Path) -> None:
    async with AsyncOutbox(db_path, OutboxSettings(synchronous=Synchronous.NORMAL)) as outbox:
        assert len(_workers()) == 1
        alarm = await outbox.append(b"a", count=1, lane=Lane.ALARM)
        ids = await outbox.append_many([(b"t", 5, Lane.TELEMETRY), (b"e", 2, Lane.EVENT)])
        lease = await outbox.lease(max_chunks=2)
        assert lease.chunk_ids == (alarm, ids[1])
        assert await outbox.quarantine(lease, "413 too large") == 2
        assert [q.reason for q in await outbox.quarantined()] == ["413 too large"] * 2
        assert await outbox.requeue_quarantine() == 2
        lease = await outbox.lease()
        assert await outbox.release(lease) == 3
        assert await outbox.ack(await outbox.lease()) == 3
        assert (await outbox.stats()).chunks == 0
    assert _workers() == []
    with pytest.raises(OutboxClosed):
        await outbox.append(b"x", count=1, lane=Lane.ALARM)
    await outbox.close()  # idempotent


async def test_the_loop_keeps_running_while_an_append_waits_for_the_disk(db_path: Path) -> None:
    settings = OutboxSettings(synchronous=Synchronous.NORMAL, busy_timeout_s=5)
    async with AsyncOutbox(db_path, settings) as outbox:
        other = apsw.Connection(str(db_path))  # another process's writer, holding the lock
        try:
            other.execute("BEGIN IMMEDIATE")
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, other.execute, "COMMIT")
            worst = 0.0
            append = asyncio.create_task(
                outbox.append(b"x", count=1, lane=Lane.EVENT), name="test-append"
            )
            started = loop.time()
            while not append.done():
                before = loop.time()
                await asyncio.sleep(0.001)
                worst = max(worst, loop.time() - before)
            await append
            assert loop.time() - started >= 0.25  # it really waited for the lock...
            assert worst < 0.1  # ...without holding up the loop
        finally:
            other.close()


async def test_cancelling_a_call_leaves_a_consistent_outbox_and_no_thread(db_path: Path) -> None:
    settings = OutboxSettings(synchronous=Synchronous.NORMAL, busy_timeout_s=5)
    outbox = AsyncOutbox(db_path, settings)
    await outbox.open()
    other = apsw.Connection(str(db_path))
    try:
        other.execute("BEGIN IMMEDIATE")
        append = asyncio.create_task(
            outbox.append(b"x", count=1, lane=Lane.EVENT), name="test-append"
        )
        await asyncio.sleep(0.05)
        append.cancel()
        with pytest.raises(asyncio.CancelledError):
            await append
        other.execute("COMMIT")
        # The commit in flight ran to its end on the worker: the chunk is there, counted once.
        stats = await outbox.stats()
        assert stats.lanes[Lane.EVENT].chunks == 1
    finally:
        other.close()
        await outbox.close()
    assert _workers() == []


async def test_a_failed_open_raises_and_leaves_no_thread(db_path: Path) -> None:
    async with AsyncOutbox(db_path):
        pass
    conn = apsw.Connection(str(db_path))
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        async with AsyncOutbox(db_path):
            pass
    assert _workers() == []
