"""`tagway buffer`: what an engineer does with the outbox file itself."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from cloud.contract import AlarmRecord
from edge.chunk import encode, encode_records
from protocols.reading import Quality, Reading
from store_forward import Lane, Outbox, read_stats

T0 = 1_795_000_000_000_000


def tagway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip


def outbox_with_data(path: Path) -> None:
    with Outbox(path) as outbox:
        outbox.append(encode([Reading("pump1", "flow", T0, 12.5, unit="m3/h", simulated=True),
                              Reading("pump1", "mode", T0, "AUTO")]), count=2,
                      lane=Lane.TELEMETRY)  # fmt: skip
        outbox.append(encode([Reading("pump1", "flow", T0 + 1_000_000, 0.0, Quality.BAD)]),
                      count=1, lane=Lane.TELEMETRY)  # fmt: skip
        outbox.append(encode_records([AlarmRecord(device="pump1", name="x", ts=T0)]), count=1,
                      lane=Lane.ALARM)  # fmt: skip


def test_export_to_csv_and_sqlite_leaves_the_outbox_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox_with_data(path)
    before = read_stats(path)
    result = tagway("buffer", "export", str(tmp_path / "backlog.csv"), "--outbox", str(path))
    assert result.returncode == 0, result.stderr
    assert "wrote 3 readings" in result.stdout
    with (tmp_path / "backlog.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["tag"], r["value"], r["quality"]) for r in rows] == [
        ("flow", "12.5", "good"), ("mode", "AUTO", "good"), ("flow", "0.0", "bad"),
    ]  # fmt: skip
    assert rows[0]["time"] == "2026-11-18T11:06:40+00:00"  # T0 in UTC
    assert rows[0]["unit"] == "m3/h"
    result = tagway("buffer", "export", str(tmp_path / "backlog.db"), "--outbox", str(path))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "backlog.db") as db:
        assert db.execute("SELECT count(*) FROM readings").fetchone() == (3,)
    after = read_stats(path)
    assert after.chunks == before.chunks == 3


def test_an_empty_outbox_exports_an_empty_table(tmp_path: Path) -> None:
    """Before: --format sqlite of an empty outbox wrote no table (a file no tool could query)."""
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    out = tmp_path / "empty.sqlite"
    result = tagway("buffer", "export", str(out), "--outbox", str(path), "--format", "sqlite")
    assert result.returncode == 0, result.stderr
    assert "wrote 0 readings" in result.stdout
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT count(*) FROM readings").fetchone() == (0,)
        columns = [row[1] for row in db.execute("PRAGMA table_info(readings)")]
    assert columns == ["device", "tag", "time", "ts_us", "value", "quality", "reason", "unit",
                       "simulated"]  # fmt: skip


def test_stats_and_requeue_without_an_agent(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox_with_data(path)
    with Outbox(path) as outbox:
        lease = outbox.lease(max_chunks=1)  # the alarm chunk comes first
        outbox.quarantine(lease, "HTTP 422: refused")
    stats = json.loads(tagway("buffer", "stats", "--outbox", str(path), "--json").stdout)
    assert stats["lanes"]["alarm"]["quarantined_chunks"] == 1
    assert stats["lanes"]["telemetry"]["readings"] == 3
    result = tagway("buffer", "requeue-quarantine", "--outbox", str(path))
    assert result.returncode == 0, result.stderr
    assert "1 chunks requeued" in result.stdout
    assert read_stats(path).lanes[Lane.ALARM].chunks == 1


def test_a_missing_outbox_is_one_line(tmp_path: Path) -> None:
    result = tagway("buffer", "stats", "--outbox", str(tmp_path / "nope.db"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"tagway: error: no outbox at {tmp_path / 'nope.db'}"


def test_a_damaged_chunk_in_an_export_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox_with_data(path)
    with Outbox(path) as outbox:
        damaged = outbox.append(b"\x28\xb5\x2f\xfd not a chunk", count=5, lane=Lane.TELEMETRY)
    result = tagway("buffer", "export", str(tmp_path / "backlog.csv"), "--outbox", str(path))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        f"tagway: error: {path}: chunk {damaged} is damaged and was not exported"
    )
    assert "internal error" not in result.stderr


def test_exports_keep_numbers_as_numbers_and_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    readings = [
        Reading("plc", "counter", T0, 1152939101356429315),
        Reading("plc", "energy_wh", T0, 2**64 - 1),
        Reading("plc", "flow", T0, 0.1),
        Reading("plc", "mode", T0, "AUTO"),
        Reading("plc", "pressure", T0, 0.0, Quality.BAD, reason="modbus exception 02"),
    ]
    with Outbox(path) as outbox:
        outbox.append(encode(readings), count=len(readings), lane=Lane.TELEMETRY)
    for name in ("backlog.db", "backlog.json", "backlog.csv"):
        result = tagway("buffer", "export", str(tmp_path / name), "--outbox", str(path))
        assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "backlog.db") as db:
        query = "SELECT tag, value, typeof(value), quality, reason FROM readings"
        rows = {tag: (value, kind, quality, reason)
                for tag, value, kind, quality, reason in db.execute(query)}  # fmt: skip
    assert rows == {
        "counter": (1152939101356429315, "integer", "good", ""),
        "energy_wh": (str(2**64 - 1), "text", "good", ""),  # past int64: SQLite has no number
        "flow": (0.1, "real", "good", ""),
        "mode": ("AUTO", "text", "good", ""),
        "pressure": (0.0, "real", "bad", "modbus exception 02"),
    }
    exported = json.loads((tmp_path / "backlog.json").read_text())
    assert {r["tag"]: (r["value"], r["reason"]) for r in exported} == {
        "counter": (1152939101356429315, ""), "energy_wh": (2**64 - 1, ""), "flow": (0.1, ""),
        "mode": ("AUTO", ""), "pressure": (0.0, "modbus exception 02"),
    }  # fmt: skip
    with (tmp_path / "backlog.csv").open() as handle:
        by_tag = {r["tag"]: r for r in csv.DictReader(handle)}
    assert by_tag["counter"]["value"] == "1152939101356429315"
    assert by_tag["pressure"]["reason"] == "modbus exception 02"


def test_stats_show_each_consumers_backlog(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    from store_forward import OutboxSettings  # noqa: PLC0415

    with Outbox(path, OutboxSettings(consumers=("uplink", "sparkplug"))) as outbox:
        outbox.append(encode([Reading("pump1", "flow", T0, 1.0)]), count=1, lane=Lane.TELEMETRY)
        outbox.ack(outbox.lease())  # the cloud has it; the Sparkplug broker is away
    result = tagway("buffer", "stats", "--outbox", str(path))
    assert result.returncode == 0, result.stderr
    assert "consumer uplink: 0 readings to send" in result.stdout
    assert "consumer sparkplug: 1 readings to send (1 chunks)" in result.stdout
    data = json.loads(tagway("buffer", "stats", "--outbox", str(path), "--json").stdout)
    assert data["consumers"]["sparkplug"]["pending_readings"] == 1
