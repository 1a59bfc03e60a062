"""`tagway run` under the notify protocol, as systemd runs it from tagway.service: the test owns
the NOTIFY_SOCKET and sets WATCHDOG_USEC, and reads what the agent tells systemd."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TAGWAY = [sys.executable, "-m", "cli"]


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short directory: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="tgw-") as short:
        path = str(Path(short) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            yield sock, path


async def next_state(sock: socket.socket, within: float) -> list[str]:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), within)
    return data.decode().split("\n")


async def start_agent(tmp_path: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    """`tagway run` on an empty config (no devices), as systemd would start it with `env`."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"gateway:\n  name: gw\n  state_dir: {tmp_path / 'state'}\nlocal_api:\n  port: 0\n"
    )
    return await asyncio.create_subprocess_exec(
        *TAGWAY, "run", "--config", str(config), "--log-format", "json",
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


@pytest.mark.integration
async def test_tagway_run_signals_ready_feeds_the_watchdog_and_says_stopping(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    agent = await start_agent(tmp_path, env)
    try:
        states: list[list[str]] = []
        while ["READY=1", "STATUS=running: 0 devices"] not in states:
            states.append(await next_state(sock, 60))
        assert (state_dir := tmp_path / "state" / "outbox.db").exists(), state_dir
        # After READY, the watchdog keeps coming at half of WATCHDOG_USEC (0.2 s).
        started = time.monotonic()
        pings = [await next_state(sock, 5) for _ in range(3)]
        assert pings == [["WATCHDOG=1"]] * 3
        assert time.monotonic() - started < 2.0
    finally:
        agent.send_signal(signal.SIGTERM)
        _, logs = await asyncio.wait_for(agent.communicate(), 30)
    assert agent.returncode == 0, logs.decode()[-2000:]
    after_stop = []
    while True:
        try:
            after_stop.append(await next_state(sock, 0.5))
        except TimeoutError:
            break
    assert ["STOPPING=1"] in after_stop


@pytest.mark.integration
async def test_without_notify_socket_tagway_run_works_as_before(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"gateway:\n  name: gw\n  state_dir: {tmp_path / 'state'}\nlocal_api:\n  port: 0\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC"}}
    agent = await asyncio.create_subprocess_exec(
        *TAGWAY, "run", "--config", str(config), "--log-format", "json",
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert agent.stderr is not None
    try:
        while b"running" not in (line := await asyncio.wait_for(agent.stderr.readline(), 60)):
            assert line, "the agent exited before it was running"
    finally:
        agent.send_signal(signal.SIGTERM)
        _, logs = await asyncio.wait_for(agent.communicate(), 30)
    assert agent.returncode == 0, logs.decode()[-2000:]
    assert b"cannot notify systemd" not in logs


@pytest.mark.integration
async def test_sighup_is_a_reload_systemd_can_follow(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": path}
    env.pop("WATCHDOG_USEC", None)
    agent = await start_agent(tmp_path, env)
    try:
        while (await next_state(sock, 60))[0] != "READY=1":
            pass
        agent.send_signal(signal.SIGHUP)  # what ExecReload= sends
        reloading = await next_state(sock, 10)
        assert reloading[0] == "RELOADING=1"
        assert reloading[1].startswith("MONOTONIC_USEC=")
        assert await next_state(sock, 10) == ["READY=1", "STATUS=running: 0 devices"]
    finally:
        agent.send_signal(signal.SIGTERM)
        _, logs = await asyncio.wait_for(agent.communicate(), 30)
    assert agent.returncode == 0, logs.decode()[-2000:]
