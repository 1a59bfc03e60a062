"""Several processes on one outbox file: a stats reader beside a writer, and SIGKILL at random
moments of a writer and of a leasing reader. After every kill the file must open without
recovery, pass ``PRAGMA integrity_check``, hold every chunk whose append returned (or its
drop must be counted), and keep figures that match its contents.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import pytest

from store_forward import Lane, Outbox, OutboxSettings, read_stats

from . import outbox_child

ROOT = Path(__file__).resolve().parents[2]
CI_KILLS = 10
SLOW_KILLS = 50
MAX_BATCH = 4  # the writer's largest append_many


def _spawn(role: str, db: Path, log: Path, quota: int, seed: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.store_forward.outbox_child",
                role,
                str(db),
                str(quota),
                str(seed),
            ],
            stdout=out,
            env=env,
            cwd=ROOT,
        )


def _fork(role: str, db: Path, log: Path, quota: int, seed: int) -> int:
    """Start `role` in a forked child writing to `log`. Forking skips the interpreter start and
    imports (most of a second on a busy CI box), so 10 kills stay quick; the child is still a
    separate process that SIGKILL takes down mid-write. No connection is open across the fork."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            out = os.open(log, os.O_WRONLY | os.O_APPEND)
            os.dup2(out, 1)
            outbox_child.main([role, str(db), str(quota), str(seed)])
        finally:
            os._exit(70)
    return pid


def _kill_forked_at_random(pid: int, log: Path, rng: random.Random) -> None:
    start_size = log.stat().st_size
    deadline = time.monotonic() + 30
    while log.stat().st_size == start_size:  # wait until it is really working
        done, status = os.waitpid(pid, os.WNOHANG)
        assert done == 0, f"child died on its own: status {status}"
        assert time.monotonic() < deadline, "child never got going"
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.2))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL


def _lines(log: Path) -> list[list[str]]:
    """Complete lines only: a kill can cut the last one short."""
    text = log.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [line.split() for line in complete.splitlines()]


def _integrity(db: Path) -> list[str]:
    conn = apsw.Connection(str(db))
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def _everything(outbox: Outbox) -> dict[int, tuple[Lane, int, int]]:
    """Every waiting chunk by id (lane, bytes, count), leased and given back at once."""
    lease = outbox.lease(max_chunks=1_000_000, max_bytes=1 << 40)
    outbox.release(lease)
    return {c.id: (c.lane, len(c.payload), c.count) for c in lease.chunks}


@dataclass
class Appended:
    by_lane: dict[Lane, list[int]] = field(default_factory=lambda: defaultdict(list))
    size: dict[int, tuple[int, int]] = field(default_factory=dict)


def _appended(log: Path) -> Appended:
    result = Appended()
    for kind, lane, chunk_id, size, count in _lines(log):
        assert kind == "A"
        result.by_lane[Lane(lane)].append(int(chunk_id))
        result.size[int(chunk_id)] = (int(size), int(count))
    return result


def _check_after_writer_kill(db: Path, log: Path, kills: int) -> None:
    assert _integrity(db) == ["ok"]
    appended = _appended(log)
    with Outbox(db, OutboxSettings(quota_bytes=QUOTA)) as outbox:
        assert outbox.recovery is None, outbox.recovery
        present = _everything(outbox)
        stats = outbox.stats()
    unreported = set(present) - set(appended.size)
    # Only the call in flight at each kill may have committed without reporting.
    assert len(unreported) <= MAX_BATCH * kills
    for chunk_id, (size, count) in appended.size.items():
        if chunk_id in present:
            assert present[chunk_id][1:] == (size, count)
    for lane in Lane:
        returned = appended.by_lane[lane]
        here = sorted(i for i, (chunk_lane, _, _) in present.items() if chunk_lane is lane)
        missing = [i for i in returned if i not in present]
        figures = stats.lanes[lane]
        if lane is Lane.ALARM:
            assert not missing, "an alarm whose append returned is gone"
            assert figures.dropped_chunks == 0
        # Nothing vanished without being counted, and drops took the oldest first.
        assert len(missing) <= figures.dropped_chunks
        assert len(here) + figures.dropped_chunks >= len(returned)
        if missing and here:
            assert max(missing) < min(here)
        assert figures.chunks == len(here)
        assert figures.bytes == sum(present[i][1] for i in here)
        assert figures.readings == sum(present[i][2] for i in here)
    assert stats.used_bytes <= QUOTA


QUOTA = 400 * 1024  # small enough that the writer makes the quota drop telemetry


def _run_writer_kills(tmp_path: Path, kills: int) -> None:
    rng = random.Random(kills)
    db, log = tmp_path / "outbox.db", tmp_path / "writer.log"
    log.touch()
    for kill in range(1, kills + 1):
        _kill_forked_at_random(_fork("writer", db, log, QUOTA, rng.randrange(1 << 30)), log, rng)
        _check_after_writer_kill(db, log, kill)
    assert sum(len(ids) for ids in _appended(log).by_lane.values()) > kills


def test_writer_killed_at_random_moments_loses_nothing_it_accepted(tmp_path: Path) -> None:
    _run_writer_kills(tmp_path, CI_KILLS)


@pytest.mark.slow
def test_writer_killed_fifty_times_loses_nothing_it_accepted(tmp_path: Path) -> None:
    _run_writer_kills(tmp_path, SLOW_KILLS)


def _check_after_reader_kill(db: Path, logs: list[Path], original: dict[int, int]) -> None:
    """`logs`: one per reader run so far, the one just killed last."""
    assert _integrity(db) == ["ok"]
    leased: dict[int, list[int]] = {}
    ack_tried: set[int] = set()
    acked: set[int] = set()
    settled: set[int] = set()  # leases acked or released, or from readers checked before
    for log in logs:
        settled.update(leased)
        _replay_reader(_lines(log), leased, ack_tried, acked, settled)
    with Outbox(db) as outbox:
        assert outbox.recovery is None
        now_free = outbox.lease(max_chunks=1_000_000, max_bytes=1 << 40)
        outbox.release(now_free)
        stats = outbox.stats()
    with Outbox(db, clock=lambda: time.time() + 61) as later:  # past every lease's timeout
        present = _everything(later)
    assert not acked & set(present), "an acked chunk came back"
    assert set(original) - set(present) <= ack_tried, "a chunk vanished without an ack"
    # The dead reader's leases were live a moment ago: none of those chunks went out twice.
    still_held = {
        i for lease_id, ids in leased.items() if lease_id not in settled for i in ids
    } - ack_tried
    assert not still_held & set(now_free.chunk_ids)
    assert stats.chunks == len(present)
    assert sum(f.readings for f in stats.lanes.values()) == sum(original[i] for i in present)


def _replay_reader(
    lines: list[list[str]],
    leased: dict[int, list[int]],
    ack_tried: set[int],
    acked: set[int],
    settled: set[int],
) -> None:
    for kind, lease_id, *rest in lines:
        if kind == "L":
            leased[int(lease_id)] = [int(i) for i in rest]
        elif kind == "a":
            ack_tried.update(leased[int(lease_id)])
        elif kind == "K":
            acked.update(leased[int(lease_id)])
            settled.add(int(lease_id))
        elif kind == "R":
            settled.add(int(lease_id))


def _run_reader_kills(tmp_path: Path, kills: int) -> None:
    rng = random.Random(kills + 1)
    db = tmp_path / "outbox.db"
    logs: list[Path] = []
    original: dict[int, int] = {}
    for kill in range(kills):
        with Outbox(db) as outbox:  # top up, so every reader finds work
            batch = [(rng.randbytes(500), n, Lane.TELEMETRY) for n in range(1, 41)]
            for chunk_id, (_, count, _) in zip(outbox.append_many(batch), batch, strict=True):
                original[chunk_id] = count
        log = tmp_path / f"reader-{kill}.log"
        log.touch()
        logs.append(log)
        _kill_forked_at_random(_fork("reader", db, log, 1 << 30, rng.randrange(1 << 30)), log, rng)
        _check_after_reader_kill(db, logs, original)


def test_reader_killed_while_holding_leases_loses_nothing(tmp_path: Path) -> None:
    _run_reader_kills(tmp_path, CI_KILLS)


@pytest.mark.slow
def test_reader_killed_fifty_times_loses_nothing(tmp_path: Path) -> None:
    _run_reader_kills(tmp_path, SLOW_KILLS)


def test_stats_from_another_process_while_the_writer_appends(tmp_path: Path) -> None:
    db, log = tmp_path / "outbox.db", tmp_path / "writer.log"
    log.touch()
    Outbox(db, OutboxSettings(quota_bytes=1 << 30)).close()
    child = _spawn("writer", db, log, 1 << 30, 7)
    try:
        started = time.monotonic()
        while not log.stat().st_size:  # a fresh interpreter: give it time to start
            assert child.poll() is None
            assert time.monotonic() < started + 30
            time.sleep(0.01)
        seen: list[int] = []
        reported: list[int] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            before = len(_lines(log))
            chunks = read_stats(db).chunks
            seen.append(chunks)
            reported.append(before)
            assert chunks >= before  # everything reported before the read is in it
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    assert seen == sorted(seen)  # a snapshot never goes backwards
    assert seen[-1] > seen[0], "the writer made no progress while stats were read"
    assert read_stats(db).chunks >= len(_lines(log))


@dataclass
class Deliveries:
    """What each consumer was handed, from the log: per chunk id, the leases that held it."""

    leases: dict[str, dict[int, list[int]]] = field(default_factory=lambda: defaultdict(dict))
    acked: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))


def _consumer_lines(log: Path) -> tuple[Appended, Deliveries]:
    appended, seen = Appended(), Deliveries()
    for kind, *rest in _lines(log):
        if kind == "A":
            lane, chunk_id, size, count = rest
            appended.by_lane[Lane(lane)].append(int(chunk_id))
            appended.size[int(chunk_id)] = (int(size), int(count))
        elif kind == "D":
            seen.leases[rest[0]][int(rest[1])] = [int(i) for i in rest[2:]]
        elif kind == "K":
            seen.acked[rest[0]].add(int(rest[1]))
    return appended, seen


def _check_consumers(log: Path, drained: dict[str, list[int]], stats: object) -> None:
    from store_forward import OutboxStats  # noqa: PLC0415

    assert isinstance(stats, OutboxStats)
    appended, seen = _consumer_lines(log)
    lane_of = {i: lane for lane, ids in appended.by_lane.items() for i in ids}
    for name in outbox_child.CONSUMERS:
        times: dict[int, int] = defaultdict(int)
        unacked: dict[int, int] = defaultdict(int)  # deliveries whose ack never returned
        for lease_id, ids in seen.leases[name].items():
            for chunk_id in ids:
                times[chunk_id] += 1
                unacked[chunk_id] += lease_id not in seen.acked[name]
        for chunk_id in drained[name]:
            times[chunk_id] += 1
        # Duplicated only where a kill came between handing a lease out and its ack.
        for chunk_id, n in times.items():
            assert n - 1 <= unacked[chunk_id], f"{name} got chunk {chunk_id} {n} times"
        missing = [i for i in appended.size if i not in times]
        assert not [i for i in missing if lane_of[i] is Lane.ALARM], f"{name} lost an alarm"
        lost = sum(appended.size[i][1] for i in missing)
        assert lost <= stats.consumers[name].dropped_total, f"{name} lost uncounted readings"
        assert stats.consumers[name].pending_chunks == 0


def _run_consumer_kills(tmp_path: Path, kills: int) -> None:
    rng = random.Random(kills + 2)
    db, log = tmp_path / "outbox.db", tmp_path / "consumers.log"
    log.touch()
    for _ in range(kills):
        seed = rng.randrange(1 << 30)
        _kill_forked_at_random(_fork("consumers", db, log, QUOTA, seed), log, rng)
        assert _integrity(db) == ["ok"]
    settings = OutboxSettings(quota_bytes=QUOTA, consumers=outbox_child.CONSUMERS)
    drained: dict[str, list[int]] = {}
    with Outbox(db, settings) as outbox:
        assert outbox.recovery is None
        outbox.forget_leases()
        for name in outbox_child.CONSUMERS:
            lease = outbox.lease(max_chunks=1_000_000, max_bytes=1 << 40, consumer=name)
            drained[name] = list(lease.chunk_ids)
            outbox.ack(lease)
        stats = outbox.stats()
    assert stats.chunks == 0
    _check_consumers(log, drained, stats)
    appended, seen = _consumer_lines(log)
    assert len(appended.size) > kills
    assert seen.leases["sparkplug"], "the Sparkplug consumer never got a lease"


def test_both_consumers_killed_at_random_moments_lose_and_repeat_nothing(tmp_path: Path) -> None:
    _run_consumer_kills(tmp_path, CI_KILLS)


@pytest.mark.slow
def test_both_consumers_killed_fifty_times_lose_and_repeat_nothing(tmp_path: Path) -> None:
    _run_consumer_kills(tmp_path, SLOW_KILLS)
