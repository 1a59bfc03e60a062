"""`tagway demo` as a first-time user runs it, checked through the cloud's REST API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


async def test_demo_delivers_all_three_protocols_and_raises_the_anomaly_alarm(
    tmp_path: Path,
) -> None:
    # A demo run before this one, in the same directory: the second used to fail with
    # "cannot reach .../v1/tenants: 409 Conflict" (its tenant was left in the directory).
    first = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "demo", "--dir", str(tmp_path), "--duration", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(first.communicate(), 120)
    assert first.returncode == 0, err.decode()[-3000:]
    assert "next:" not in out.decode()  # the demo runs the agent itself
    earlier = json.loads((tmp_path / "demo.json").read_text())
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "demo", "--dir", str(tmp_path), "--duration", "240",
        "--no-tui", "--wear-after", "2", "--wear-minutes", "0.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        info = await _wait_for_file(tmp_path / "demo.json", demo, unlike=earlier)
        headers = {"Authorization": f"Bearer {info['api_key']}"}
        async with httpx.AsyncClient(base_url=info["cloud"], headers=headers) as cloud:
            latest = await _latest_by_device(cloud, {"pump1", "boiler1", "tank1"})
            devices = await cloud.get("/v1/devices")  # the cloud says the data is simulated
            assert devices.headers["X-Data-Source"] == "simulation"
            assert all(d["simulated"] for d in devices.json()), devices.json()
            alarms = await _wait_for_alarm(cloud, "pump_anomaly.pump1")
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(demo.communicate(), 60)
    assert demo.returncode == 0, err.decode()[-3000:]
    guide = out.decode()
    assert "curl -s -H" in guide
    assert "tagway tui --config" in guide
    assert "SIMULATED" in guide
    assert "Traceback" not in err.decode()
    assert "next:" not in guide
    # Ctrl-C stops everything without an ERROR line in the log (aiomqtt's unread disconnects).
    log = (tmp_path / "demo.log").read_text()
    assert [line for line in log.splitlines() if " ERROR " in line] == []
    # Modbus (pump1), OPC UA (boiler1) and MQTT via the embedded broker (tank1) all arrived.
    assert {"flow", "vibration"} <= latest["pump1"]
    assert "temperature" in latest["boiler1"]
    assert "level" in latest["tank1"]
    assert any(a["state"] == "active" and a["device"] == "pump1" for a in alarms)


async def _wait_for_file(
    path: Path, proc: asyncio.subprocess.Process, unlike: dict[str, Any] | None = None
) -> dict[str, Any]:
    for _ in range(600):
        with contextlib.suppress(FileNotFoundError, ValueError):
            found = dict(json.loads(await asyncio.to_thread(path.read_text)))
            if found != unlike:
                return found
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise AssertionError(f"the demo did not start (exit {proc.returncode})")


async def _latest_by_device(cloud: httpx.AsyncClient, wanted: set[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for _ in range(120):
        devices = (await cloud.get("/v1/devices")).json()
        for device in devices:
            if device["name"] in wanted:
                rows = (await cloud.get(f"/v1/devices/{device['id']}/latest")).json()
                found[device["name"]] = {row["tag"] for row in rows}
        if wanted <= {name for name, tags in found.items() if tags}:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"telemetry did not arrive for all of {wanted}: {found}")


async def _wait_for_alarm(cloud: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    # The model alarm waits out its 60 s warm-up after the first score, then its on-delay.
    for _ in range(360):
        alarms = [a for a in (await cloud.get("/v1/alarms")).json() if a["name"] == name]
        if alarms:
            return alarms
        await asyncio.sleep(0.5)
    raise AssertionError(f"alarm {name} never reached the cloud")


async def test_a_second_demo_in_the_same_directory_is_refused_while_one_runs(
    tmp_path: Path,
) -> None:
    from cli.demo import fresh_directory  # noqa: PLC0415
    from cli.errors import CliError  # noqa: PLC0415

    (tmp_path / "cloud.db").write_text("left by the previous run")
    with fresh_directory(tmp_path):
        assert not (tmp_path / "cloud.db").exists()  # the previous run's state is gone
        refused = pytest.raises(CliError, match=r"another demo is running in .* \(pid \d+\)")
        with refused, fresh_directory(tmp_path):
            pass
    with fresh_directory(tmp_path):  # free again once the first has finished
        pass


def test_an_http_refusal_is_not_called_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.errors import report  # noqa: PLC0415

    request = httpx.Request("POST", "http://127.0.0.1:9/v1/tenants")
    body = {"error": {"code": "conflict", "message": "tenant 'demo' exists"}}
    response = httpx.Response(409, json=body, request=request)
    error = httpx.HTTPStatusError("409 Conflict", request=request, response=response)
    assert report(error) == 1
    said = capsys.readouterr().err
    assert "cannot reach" not in said
    assert said.strip() == (
        "tagway: error: POST http://127.0.0.1:9/v1/tenants answered HTTP 409: "
        "conflict: tenant 'demo' exists"
    )


@pytest.mark.slow
async def test_the_demo_tui_shows_the_devices_within_seconds_of_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: `tagway demo --tui` showed a blank overview for about 15 s. The demo's own TUI
    (as `demo_tui` builds it: the guide over the overview, the default intervals), driven by
    Textual's pilot at 80x24 in the demo's process: the guide first, and once it is closed the
    overview lists every device within 3 s of the TUI opening."""
    from cli import demo  # noqa: PLC0415
    from tests.cli.tui_support import line_with, screen, wait_for_screen  # noqa: PLC0415

    seen: dict[str, float] = {}

    async def pilot_tui(stop: asyncio.Event, discovery: Path, _: float | None, notice: str) -> None:
        app = demo.demo_tui(discovery, notice)
        loop = asyncio.get_running_loop()
        async with app.run_test(size=(80, 24)) as pilot:
            opened = loop.time()
            await pilot.pause()
            assert "curl" in screen(app)  # the guide, on top
            await pilot.press("escape")
            await wait_for_screen(pilot, lambda t: all(
                line_with(t, d) for d in ("pump1", "pump2", "boiler1", "mqtt-devices")),
                within=3.0)  # fmt: skip
            seen["devices_after_s"] = loop.time() - opened
        stop.set()

    monkeypatch.setattr(demo, "_run_tui_until", pilot_tui)
    options = demo.DemoOptions(directory=tmp_path, duration=60, wear_after=600, wear_minutes=10,
                               devices=4, cloud_port=0, tui=True)  # fmt: skip
    await asyncio.wait_for(demo.run_demo(options), 120)
    assert seen["devices_after_s"] < 3.0
