"""The `tagway` command as an installer uses it: real processes, real files, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import typer.main
import yaml

from cli.app import app
from firmware_sim.plant import Plant
from tests.edge.harness import modbus_devices

TAGWAY = [sys.executable, "-m", "cli"]


async def tagway(*args: str, within: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *TAGWAY, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TAGWAY_CONFIG": "/nonexistent/config.yaml"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), within)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_init_then_validate(tmp_path: Path) -> None:
    code, out, _ = await tagway("init", str(tmp_path), "--name", "plant-a-gw1")
    assert code == 0, out
    config = tmp_path / "config.yaml"
    assert "plant-a-gw1" in config.read_text()
    code, out, err = await tagway("config", "validate", str(config))
    assert (code, err) == (0, "")
    assert "ok (0 devices" in out
    code, _, err = await tagway("init", str(tmp_path))
    assert code == 1
    assert "exists; use --force" in err


async def test_a_bad_config_is_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway:\n  name: gw\n  colour: blue\noutbox:\n  quota: lots\n")
    code, out, err = await tagway("config", "validate", str(config))
    assert code == 1
    lines = err.strip().splitlines()
    assert lines == [
        (
            f"tagway: {config}:3: gateway.colour: unknown key (check the spelling; unknown keys "
            "are errors)"
        ),
        (
            f"tagway: {config}:5: outbox.quota: 'lots' is not a size; write bytes or "
            "e.g. '512MiB', '2GB' (got 'lots')"
        ),
    ]
    assert "Traceback" not in out + err


async def test_run_with_a_bad_config_exits_78_so_systemd_stops_retrying(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gateway: {}\n")
    code, _, err = await tagway("run", "--config", str(config))
    assert code == 78
    assert "gateway.name: required field is missing" in err


async def test_run_with_a_missing_model_file_exits_78_naming_the_file(tmp_path: Path) -> None:
    """`config validate` used to say ok and `tagway run` then failed with exit 1."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "gateway: {name: gw, state_dir: state}\n"
        "devices:\n"
        "  - {protocol: modbus, name: pump1, host: 127.0.0.1, port: 1,\n"
        "     tags: [{name: vibration, table: input_register, address: 0, type: float32}]}\n"
        "models:\n"
        "  - name: pump_anomaly\n"
        "    path: models/missing.onnx\n"
        "    devices: [pump1]\n"
        "    inputs: [vibration]\n"
    )
    missing = tmp_path / "models" / "missing.onnx"
    code, _, err = await tagway("config", "validate", str(config))
    assert code == 1
    assert err.strip() == (
        f"tagway: {config}:7: models[0].path: model file '{missing}' does not exist"
    )
    code, _, err = await tagway("run", "--config", str(config))
    assert code == 78, err
    assert f"model file '{missing}' does not exist" in err
    assert "Traceback" not in err


async def test_status_without_an_agent_says_so(tmp_path: Path) -> None:
    await tagway("init", str(tmp_path))
    code, _, err = await tagway("status", "--config", str(tmp_path / "config.yaml"))
    assert code == 1
    assert "is not running" in err
    assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="acting as another user needs root and setpriv")  # fmt: skip
@pytest.mark.parametrize("fixed", [True, False])
def test_status_by_a_user_who_cannot_read_the_state_dir(fixed: bool) -> None:
    """A packaged agent's state directory is 0700 and its own: an installer who is not root
    reads the agent at the config's fixed port (before: 'Permission denied', nothing else)."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1] if fixed else 0
    with tempfile.TemporaryDirectory() as where:  # not under pytest's 0700 temp root
        root = Path(where)
        root.chmod(0o755)
        (root / "state").mkdir(mode=0o700)
        (root / "state" / "local_api.json").write_text('{"url": "http://127.0.0.1:1"}')
        config = root / "config.yaml"
        config.write_text(f"gateway: {{name: gw, state_dir: {root / 'state'}}}\n"
                          f"local_api: {{port: {port}}}\n")  # fmt: skip
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        done = subprocess.run(
            [*nobody, *TAGWAY, "status", "--config", str(config)], capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        # The TUI looks where `tagway status` looks.
        probe = (
            "import sys; from pathlib import Path; from cli.tui import locator_for; "
            "print(locator_for(Path(sys.argv[1]), None))"
        )
        tui = subprocess.run([*nobody, sys.executable, "-c", probe, str(config)],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    if fixed:
        assert tui.stdout.startswith(f"FixedUrl(url='http://127.0.0.1:{port}'"), tui.stdout
    else:
        assert tui.stdout.startswith("DiscoveryFile("), tui.stdout
    assert done.returncode == 1
    if fixed:
        assert done.stderr == (
            f"tagway: error: the agent is not answering at http://127.0.0.1:{port}; "
            "is `tagway run` running?\n"
        )
    else:
        assert "names no fixed local API port" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.integration
async def test_run_status_tags_buffer_and_a_clean_sigterm(tmp_path: Path) -> None:
    async with Plant(devices=2, seed=2, tick_s=0.1, opcua=False, control_port=None) as plant:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "gateway": {"name": "cli-gw", "state_dir": str(tmp_path / "state")},
            "outbox": {"flush_interval": 0.1},
            "local_api": {"port": 0},
            "devices": modbus_devices(plant),
            "alarms": [{"name": "pump1.flow_seen", "device": "pump1", "tag": "flow",
                        "kind": "high", "limit": -1, "message": "pump1 reports a flow"}],
        }))  # fmt: skip
        agent = await asyncio.create_subprocess_exec(
            *TAGWAY, "run", "--config", str(config), "--log-format", "json",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            status: dict[str, object] = {}
            for _ in range(100):
                await asyncio.sleep(0.2)
                code, out, _ = await tagway("status", "--config", str(config), "--json")
                if out:
                    status = json.loads(out)
                    if code == 0:
                        break
            assert code == 0, status
            assert status["gateway"]["simulated"] is True  # type: ignore[index]
            code, out, _ = await tagway("tags", "--config", str(config), "--device", "pump1")
            assert code == 0
            assert "flow" in out
            assert "m3/h" in out
            for _ in range(50):  # the alarm rises with the first reading of pump1.flow
                code, out, _ = await tagway("alarms", "--config", str(config))
                if "pump1.flow_seen" in out:
                    break
            assert code == 0
            header, row = out.splitlines()  # before: the rows alone, no header
            assert header.split() == ["state", "severity", "name", "message"]
            assert row.split()[:3] == ["active", "medium", "pump1.flow_seen"]
            assert row.index("pump1 reports a flow") == header.index("message")
            code, out, _ = await tagway("buffer", "stats", "--config", str(config), "--json")
            assert code == 0
            assert json.loads(out)["lanes"]["telemetry"]["readings"] > 0
        finally:
            agent.send_signal(signal.SIGTERM)
            _, logs = await asyncio.wait_for(agent.communicate(), 20)
        assert agent.returncode == 0, logs.decode()[-2000:]
        records = [json.loads(line) for line in logs.decode().splitlines() if line.startswith("{")]
        assert any("stopping" in r["message"] for r in records)


def test_every_command_has_help_with_an_example_and_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    group = typer.main.get_group(app)
    commands: list[tuple[str, object]] = []
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        if subcommands:
            commands.extend((f"{name} {sub}", c) for sub, c in subcommands.items())
        else:
            commands.append((name, command))
    assert len(commands) >= 8
    for name, command in commands:
        help_text = getattr(command, "help", "") or ""
        assert "Example: tagway" in help_text, f"`tagway {name}` has no example in its help"
        assert f"`tagway {name}" in readme, f"`tagway {name}` is not documented in README.md"
