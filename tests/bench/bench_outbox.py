"""Benchmark of the outbox against raw SQLite on the same disk, in the same run.

For 1, 16 and 64 KiB payloads under synchronous FULL and NORMAL, it pushes chunks through
append -> lease -> ack in rounds the size of the uplink's default lease (1 MiB, at most 1000
chunks: 1000, 64 and 16 chunks): one append and commit per chunk, as the pipeline does, then
one default lease and its ack. It measures the same commit pattern with a bare apsw loop on a
bare table: one single-row INSERT commit per chunk, then one transaction that SELECTs the
round's payloads and DELETEs them.
Outbox and baseline alternate append by append (and lease by lease) on two files open side by
side, so drift on a shared machine hits both alike.
``ratio`` = outbox chunks/s / baseline chunks/s (target >= 0.8).

It then measures what the event loop suffers: `AsyncOutbox` appends, leases and acks 1 KiB and
64 KiB chunks while a 1 ms ticker records how late the loop runs it (the largest stall, in ms).
Two references go with it: the same ticker's lateness on an idle loop (what the machine itself
adds: on a busy CI box this is not zero) and the longest single blocking `Outbox.append` call
(what running the outbox on the loop, without the worker thread, would cost).

Run: ``python tests/bench/bench_outbox.py [--quick]``. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import apsw

from store_forward import AsyncOutbox, Lane, Outbox, OutboxSettings, Synchronous
from store_forward.outbox import DEFAULT_LEASE_BYTES, DEFAULT_LEASE_CHUNKS

ROUND = 32  # chunks per round in the event-loop measurement


def batch_for(size: int) -> int:
    """Chunks per lease: what the uplink's default lease (1 MiB, at most 1000 chunks) takes."""
    return min(DEFAULT_LEASE_CHUNKS, DEFAULT_LEASE_BYTES // size)


KIB = 1024
SIZES = (1 * KIB, 16 * KIB, 64 * KIB)
# Chunks per measured run, sized so the whole benchmark stays near a minute on a slow disk.
CHUNKS = {
    (Synchronous.FULL, 1 * KIB): 2000,
    (Synchronous.FULL, 16 * KIB): 1280,
    (Synchronous.FULL, 64 * KIB): 768,
    (Synchronous.NORMAL, 1 * KIB): 8000,
    (Synchronous.NORMAL, 16 * KIB): 3072,
    (Synchronous.NORMAL, 64 * KIB): 1024,
}


def _fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def measure_case(
    workdir: Path, sync: Synchronous, payload: bytes, chunks: int
) -> tuple[float, float]:
    """Seconds spent by the outbox and by the raw baseline on `chunks` chunks each.

    Both files are open at once and the two alternate call by call, so a neighbour's load on
    the shared disk or CPU falls on both alike.
    """
    outbox_db, baseline_db = workdir / "outbox.db", workdir / "baseline.db"
    _fresh(outbox_db)
    _fresh(baseline_db)
    settings = OutboxSettings(quota_bytes=1 << 40, synchronous=sync)
    conn = apsw.Connection(str(baseline_db))
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute(f"PRAGMA synchronous={sync.name}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        with Outbox(outbox_db, settings) as outbox:
            ours = raw = 0.0
            batch = batch_for(len(payload))
            for _ in range(chunks // batch):
                ours_round, raw_round = _round(outbox, conn, payload, batch)
                ours += ours_round
                raw += raw_round
    finally:
        conn.close()
    return ours, raw


def _round(
    outbox: Outbox, conn: apsw.Connection, payload: bytes, batch: int
) -> tuple[float, float]:
    """One lease's worth through both, alternating append by append; their seconds."""
    clock = time.perf_counter
    ours = raw = 0.0
    for _ in range(batch):
        start = clock()
        outbox.append(payload, count=100, lane=Lane.TELEMETRY)
        middle = clock()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t(payload) VALUES (?)", (payload,))
        conn.execute("COMMIT")
        ours += middle - start
        raw += clock() - middle
    start = clock()
    acked = outbox.ack(outbox.lease())
    middle = clock()
    conn.execute("BEGIN")
    rows = conn.execute("SELECT id, payload FROM t ORDER BY id LIMIT ?", (batch,)).fetchall()
    conn.executemany("DELETE FROM t WHERE id = ?", [(row[0],) for row in rows])
    conn.execute("COMMIT")
    ours += middle - start
    raw += clock() - middle
    if acked != batch or len(rows) != batch:
        raise RuntimeError("a round lost chunks during the benchmark")
    return ours, raw


class _Ticker:
    """Records how late a 1 ms timer fires: the longest time the loop could not run."""

    def __init__(self) -> None:
        self.late_ms: list[float] = []
        self.running = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            before = loop.time()
            await asyncio.sleep(0.001)
            self.late_ms.append((loop.time() - before - 0.001) * 1000)

    def figures(self) -> tuple[float, float]:
        """The largest lateness and the 99th percentile, ms."""
        ordered = sorted(self.late_ms) or [0.0]
        return ordered[-1], ordered[int(0.99 * (len(ordered) - 1))]


async def _stall(path: Path, payload: bytes, rounds: int) -> tuple[_Ticker, _Ticker]:
    """The loop's lateness with the loop idle, and while AsyncOutbox works."""
    _fresh(path)
    idle, busy = _Ticker(), _Ticker()
    async with asyncio.TaskGroup() as group:
        group.create_task(idle.run(), name="bench-idle-ticker")
        await asyncio.sleep(0.3)
        idle.running = False
    async with (
        AsyncOutbox(path, OutboxSettings(quota_bytes=1 << 40)) as outbox,
        asyncio.TaskGroup() as group,
    ):
        group.create_task(busy.run(), name="bench-stall-ticker")
        for _ in range(rounds):
            for _ in range(ROUND):
                await outbox.append(payload, count=100, lane=Lane.TELEMETRY)
            await outbox.ack(await outbox.lease(max_chunks=ROUND))
        busy.running = False
    return idle, busy


def _blocking_append_max_ms(path: Path, payload: bytes, rounds: int) -> float:
    _fresh(path)
    worst = 0.0
    with Outbox(path, OutboxSettings(quota_bytes=1 << 40)) as outbox:
        for _ in range(rounds * ROUND):
            start = time.perf_counter()
            outbox.append(payload, count=100, lane=Lane.TELEMETRY)
            worst = max(worst, (time.perf_counter() - start) * 1000)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the chunks")
    parser.add_argument("--dir", default=None, help="directory on the disk to measure")
    args = parser.parse_args()
    scale = 4 if args.quick else 1
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="bench-outbox-", dir=Path.cwd()))
    outbox_db, baseline_db = workdir / "outbox.db", workdir / "baseline.db"
    cases: dict[str, dict[str, float]] = {}
    print(f"{'case':<14}{'chunks':>7}{'chunks/s':>11}{'MiB/s':>9}{'raw chunks/s':>14}{'ratio':>7}")
    for sync in (Synchronous.FULL, Synchronous.NORMAL):
        for size in SIZES:
            batch = batch_for(size)
            chunks = max(1, CHUNKS[(sync, size)] // scale // batch) * batch
            payload = os.urandom(size)
            ours, raw = measure_case(workdir, sync, payload, chunks)
            rate, raw_rate = chunks / ours, chunks / raw
            name = f"{sync.value}_{size // KIB}KiB"
            cases[name] = {
                "chunks_per_s": round(rate, 1),
                "mib_per_s": round(rate * size / (1 << 20), 2),
                "baseline_chunks_per_s": round(raw_rate, 1),
                "ratio": round(rate / raw_rate, 3),
            }
            row = cases[name]
            print(
                f"{name:<14}{chunks:>7}{row['chunks_per_s']:>11}{row['mib_per_s']:>9}"
                f"{row['baseline_chunks_per_s']:>14}{row['ratio']:>7}"
            )
    stall = {}
    for size in (1 * KIB, 64 * KIB):
        payload = os.urandom(size)
        idle, busy = asyncio.run(_stall(outbox_db, payload, 8 // scale + 1))
        stall[f"{size // KIB}KiB"] = {
            "loop_stall_max_ms": round(busy.figures()[0], 2),
            "loop_stall_p99_ms": round(busy.figures()[1], 2),
            "idle_loop_lateness_max_ms": round(idle.figures()[0], 2),
            "blocking_append_max_ms": round(_blocking_append_max_ms(outbox_db, payload, 4), 2),
        }
        print(f"event loop, {size // KIB} KiB: {stall[f'{size // KIB}KiB']}")
    for db in (outbox_db, baseline_db):
        _fresh(db)
    if not args.dir:
        workdir.rmdir()
    ratios = [case["ratio"] for case in cases.values()]
    print(
        json.dumps(
            {
                "bench": "outbox",
                "cases": cases,
                "min_ratio": min(ratios),
                "target_ratio": 0.8,
                "meets_target": min(ratios) >= 0.8,
                "loop_stall_max_ms": max(s["loop_stall_max_ms"] for s in stall.values()),
                "event_loop": stall,
                "python": sys.version.split()[0],
                "sqlite": apsw.sqlite_lib_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
