"""A device with a clock decades off, in the same chunk as good devices: the cloud stores the good
readings and refuses the others one by one; the gateway counts and keeps what was refused,
quarantines nothing, and its queue keeps moving. A real agent, plant and cloud on loopback."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.chunk import encode
from firmware_sim.plant import Plant
from protocols.reading import Reading
from store_forward import Lane, Outbox
from tests.edge.cloud_harness import bootstrap, serve_cloud
from tests.edge.harness import running_agent
from tests.edge.test_uplink import with_cloud

pytestmark = pytest.mark.integration

Y2000 = 946_684_800_000_000  # a PLC whose clock reset to 2000-01-01
SECONDS_AS_MS = 1_764_000_000 * 1_000  # epoch seconds read as milliseconds: January 1970


def tagway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip


async def test_a_wrong_clock_costs_only_its_own_readings(tmp_path: Path, plant: Plant) -> None:
    async with serve_cloud(tmp_path / "cloud.db") as cloud:
        await bootstrap(cloud)
        config = with_cloud(tmp_path, plant, cloud)
        now = time.time_ns() // 1_000
        # One flush as the pipeline commits it: two good devices and a PLC with a bad clock.
        flush = [Reading("boiler9", "pressure", now - i * 1_000_000, 3.0 + i) for i in range(5)]
        flush += [Reading("mixer9", "speed", now - i * 1_000_000, 900.0 + i) for i in range(5)]
        flush += [Reading("plc7", "temp", ts, 21.5) for ts in (Y2000, Y2000 + 10**6, SECONDS_AS_MS)]
        flush.append(Reading("plc7", "temp", now, 21.9))
        config.gateway.state_dir.mkdir(parents=True, exist_ok=True)
        with Outbox(config.outbox_path) as outbox:
            outbox.append(encode(flush), count=len(flush), lane=Lane.TELEMETRY)

        async with running_agent(config) as running:

            async def sent() -> bool:
                counts = cloud.counts()
                return ("plc7", "temp") in counts and ("pump1", "flow") in counts

            await running.wait_for(sent, within=30)
            outbox_answer = await running.get("/v1/outbox")
            uplink = await running.get("/v1/uplink")

        counts = cloud.counts()
        assert counts[("boiler9", "pressure")] == 5
        assert counts[("mixer9", "speed")] == 5
        assert counts[("plc7", "temp")] == 1  # its one reading stamped in the window
        assert outbox_answer["refused"] == {"too far in the past": 3}
        assert uplink["refused_readings"] == 3
        assert uplink["quarantined_chunks"] == 0
        assert all(lane["quarantined_chunks"] == 0 for lane in outbox_answer["lanes"].values())

    # What was refused is in the outbox file, for the engineer.
    stats = tagway("buffer", "stats", "--outbox", str(config.outbox_path))
    assert stats.returncode == 0, stats.stderr
    assert "refused by the cloud (too far in the past): 3 readings" in stats.stdout
    out = tmp_path / "refused.csv"
    export = tagway("buffer", "export", str(out), "--refused", "--outbox", str(config.outbox_path))
    assert export.returncode == 0, export.stderr
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["device"], r["tag"], r["reason"], r["count"], r["first_ts_us"]) for r in rows] == [
        ("plc7", "temp", "too far in the past", "3", str(Y2000))
    ]
    assert rows[0]["first_time"].startswith("2000-01-01")
