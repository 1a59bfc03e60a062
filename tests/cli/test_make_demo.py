"""`make demo` as a newcomer runs it: twice in a row from the same clone, live data both times
(before: the second run failed with "cannot reach .../v1/tenants: 409 Conflict")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.cli.test_demo import _latest_by_device, _wait_for_file

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


async def _one_demo(earlier: dict[str, object] | None) -> dict[str, object]:
    """Run `make demo` in the clone until live data reaches the cloud, then Ctrl-C it."""
    make = await asyncio.create_subprocess_exec(
        "make", "-C", str(REPO), "demo", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,  # its own group, like a terminal
    )  # fmt: skip
    try:
        info = await _wait_for_file(REPO / ".demo" / "demo.json", make, unlike=earlier)
        headers = {"Authorization": f"Bearer {info['api_key']}"}
        async with httpx.AsyncClient(base_url=str(info["cloud"]), headers=headers) as cloud:
            await _latest_by_device(cloud, {"pump1", "boiler1", "tank1"})
            devices = (await cloud.get("/v1/devices")).json()
            pump = next(d for d in devices if d["name"] == "pump1")
            rows = (await cloud.get(f"/v1/devices/{pump['id']}/latest")).json()
            newest = max(row["ts"] for row in rows) / 1e6
            assert time.time() - newest < 30, "the data is not live"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C reaches make and the demo alike
        out, err = await asyncio.wait_for(make.communicate(), 60)
    # make itself ends by the Ctrl-C (as in a terminal); the demo under it stops cleanly.
    assert make.returncode in (0, -signal.SIGINT, 2), err.decode()[-3000:]
    assert "Traceback" not in err.decode()
    assert "error" not in err.decode().lower(), err.decode()[-3000:]
    assert "curl -s -H" in out.decode()
    return info


async def test_make_demo_twice_in_a_row_gets_live_data_both_times() -> None:
    before = None  # what a demo run before this test left
    with contextlib.suppress(FileNotFoundError, ValueError):
        before = json.loads((REPO / ".demo" / "demo.json").read_text())
    first = await _one_demo(before)
    second = await _one_demo(first)
    assert second["api_key"] != first["api_key"]  # a fresh start, not the old state
