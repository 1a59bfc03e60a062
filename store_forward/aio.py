"""`AsyncOutbox`: the outbox for the agent's event loop.

Every call runs on one worker thread that owns the SQLite connection, so a commit's disk sync,
a WAL checkpoint or a lock wait never blocks the loop: what the loop pays is handing the call
over, taking the result back, and waiting for the GIL while the worker runs Python code
(`tests/bench/bench_outbox.py` measures the largest stall next to an idle loop's). One
thread also serialises the calls, which is what one SQLite connection needs. The thread
exists between `open()` and `close()` (or the ``async with`` block) and is joined on close.

A call whose awaiting task is cancelled still runs to its end on the worker: an append that
was cancelled may have committed. That is safe (the uplink and the cloud tolerate a chunk
appended twice) and cannot be avoided, since a commit in flight cannot be recalled.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import ParamSpec, TypeVar

from .errors import OutboxClosed
from .model import (
    DEFAULT_CONSUMER,
    ChunkId,
    Lane,
    Lease,
    OutboxSettings,
    OutboxStats,
    QuarantinedChunk,
    RecoveryEvent,
    RefusedReadings,
)
from .outbox import DEFAULT_LEASE_BYTES, DEFAULT_LEASE_CHUNKS, Outbox

P = ParamSpec("P")
T = TypeVar("T")

WORKER_THREAD_PREFIX = "tagway-outbox"


class AsyncOutbox:
    """The `Outbox` API as coroutines, run on a private worker thread.

    Args:
        path: the database file.
        settings: as for `Outbox`.
        clock: as for `Outbox`.

    Use as ``async with AsyncOutbox(path) as outbox:``; opening may take a while on a large
    file (the startup check) and runs on the worker too.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: OutboxSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = Path(path)
        self._settings = settings if settings is not None else OutboxSettings()
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._outbox: Outbox | None = None

    @property
    def recovery(self) -> RecoveryEvent | None:
        """Set when opening found a damaged file and moved it aside."""
        return self._outbox.recovery if self._outbox is not None else None

    @property
    def consumers(self) -> tuple[str, ...]:
        """The consumers reading this outbox, the default one first (those the settings name,
        or, with none named, those the file has once it is open)."""
        if self._outbox is not None:
            return self._outbox.consumers
        return self._settings.consumers or (DEFAULT_CONSUMER,)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def open(self) -> None:
        """Start the worker thread and open the outbox on it."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=WORKER_THREAD_PREFIX)
        opening = executor.submit(Outbox, self._path, self._settings, clock=self._clock)
        try:
            self._outbox = await asyncio.wrap_future(opening)
        except BaseException:
            # Cancelled or failed: an outbox that opened after all must not stay open.
            opening.add_done_callback(_close_opened)
            executor.shutdown(wait=True)
            raise
        self._executor = executor

    async def close(self) -> None:
        """Close the outbox and join the worker thread. Idempotent."""
        executor, self._executor = self._executor, None
        outbox, self._outbox = self._outbox, None
        if executor is None:
            return
        try:
            if outbox is not None:
                await asyncio.wrap_future(executor.submit(outbox.close))
        finally:
            # The worker is idle once close() has run, so this join is immediate.
            executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncOutbox:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def append(self, payload: bytes, *, count: int, lane: Lane) -> ChunkId:
        """`Outbox.append` on the worker; returns after the commit."""
        outbox = self._require_open()
        return await self._run(partial(outbox.append, payload, count=count, lane=lane))

    async def append_many(self, chunks: Iterable[tuple[bytes, int, Lane]]) -> list[ChunkId]:
        """`Outbox.append_many` on the worker; returns after the commit."""
        outbox = self._require_open()
        return await self._run(partial(outbox.append_many, list(chunks)))

    async def lease(
        self,
        *,
        max_bytes: int = DEFAULT_LEASE_BYTES,
        max_chunks: int = DEFAULT_LEASE_CHUNKS,
        newest_first: bool = False,
        consumer: str | None = None,
    ) -> Lease:
        """`Outbox.lease` on the worker."""
        outbox = self._require_open()
        return await self._run(
            partial(outbox.lease, max_bytes=max_bytes, max_chunks=max_chunks,
                    newest_first=newest_first, consumer=consumer)
        )  # fmt: skip

    async def forget_leases(self) -> int:
        """`Outbox.forget_leases` on the worker."""
        return await self._run(self._require_open().forget_leases)

    async def ack(self, lease: Lease) -> int:
        """`Outbox.ack` on the worker."""
        return await self._run(partial(self._require_open().ack, lease))

    async def renew(self, lease: Lease) -> bool:
        """`Outbox.renew` on the worker."""
        return await self._run(partial(self._require_open().renew, lease))

    async def release(self, lease: Lease) -> int:
        """`Outbox.release` on the worker."""
        return await self._run(partial(self._require_open().release, lease))

    async def quarantine(self, lease: Lease, reason: str) -> int:
        """`Outbox.quarantine` on the worker."""
        return await self._run(partial(self._require_open().quarantine, lease, reason))

    async def requeue_quarantine(self) -> int:
        """`Outbox.requeue_quarantine` on the worker."""
        return await self._run(self._require_open().requeue_quarantine)

    async def record_refused(self, refused: Sequence[RefusedReadings]) -> None:
        """`Outbox.record_refused` on the worker."""
        await self._run(partial(self._require_open().record_refused, refused))

    async def refused(self) -> list[RefusedReadings]:
        """`Outbox.refused` on the worker."""
        return await self._run(self._require_open().refused)

    async def quarantined(self) -> list[QuarantinedChunk]:
        """`Outbox.quarantined` on the worker."""
        return await self._run(self._require_open().quarantined)

    async def stats(self) -> OutboxStats:
        """`Outbox.stats` on the worker."""
        return await self._run(self._require_open().stats)

    def _require_open(self) -> Outbox:
        if self._outbox is None:
            raise OutboxClosed(f"outbox {self._path} is not open")
        return self._outbox

    async def _run(self, call: Callable[[], T]) -> T:
        executor = self._executor
        if executor is None:
            raise OutboxClosed(f"outbox {self._path} is not open")
        return await asyncio.wrap_future(executor.submit(call))


def _close_opened(opening: Future[Outbox]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
