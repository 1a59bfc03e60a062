"""A Mosquitto of the test's own on a free loopback port, anonymous, no persistence.

Tests that need an external MQTT broker (Sparkplug B host and edge node) start one per test
rather than share the machine's 127.0.0.1:1883, so parallel runs never see each other's
retained STATE or births. Without Mosquitto installed the test skips (fails under CI=true).
"""

from __future__ import annotations

import getpass
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

MOSQUITTO = Path("/usr/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_listening(port: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"mosquitto did not listen on {port} within {within} s")


@contextmanager
def mosquitto(directory: Path, port: int | None = None) -> Iterator[int]:
    """Run Mosquitto on `port` (a free one by default) until the block ends; yields the port."""
    if not MOSQUITTO.exists():
        skip_or_fail(f"{MOSQUITTO} is not installed (apt-get install mosquitto)")
    port = port or free_port()
    conf = directory / f"mosquitto-{port}.conf"
    # `user`: as root, Mosquitto would switch to the `mosquitto` account.
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "persistence false\nlog_dest none\nmax_queued_messages 100000\n"
    )
    process = subprocess.Popen(
        [str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(port)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
