"""The systemd notify client against a real AF_UNIX datagram socket, as systemd listens."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.sd_notify import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where NOTIFY_SOCKET would point."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2.0)
        yield sock, path


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_and_stopping_arrive_as_datagrams(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier(socket_address=path)
    assert notifier.enabled
    assert notifier.ready("running: 3 devices")
    assert received(sock) == ["READY=1", "STATUS=running: 3 devices"]
    assert notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    assert notifier.stopping()
    assert received(sock) == ["STOPPING=1"]


def test_an_abstract_socket_is_named_with_a_leading_at() -> None:
    name = f"tagway-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        assert SystemdNotifier(socket_address="@" + name).ready()
        assert received(sock) == ["READY=1"]


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_environ({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_a_vanished_socket_is_reported_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(socket_address=str(tmp_path / "gone"))
    assert not notifier.ready()
    assert not notifier.watchdog()
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1


def test_the_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier.from_environ(env, pid=42).watchdog_interval == 15.0
    ours = {**env, "WATCHDOG_PID": "42"}
    assert SystemdNotifier.from_environ(ours, pid=42).watchdog_interval == 15.0
    # A child that inherited the variables must not feed its parent's watchdog.
    assert SystemdNotifier.from_environ(ours, pid=43).watchdog_interval is None
    assert SystemdNotifier.from_environ({**env, "WATCHDOG_USEC": "x"}).watchdog_interval is None
    no_socket = {"WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier.from_environ(no_socket).watchdog_interval is None


async def test_feed_watchdog_pings_at_half_the_interval_until_cancelled(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    notifier = SystemdNotifier(socket_address=path, watchdog_usec=200_000)  # ping every 0.1 s
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        feeder = tg.create_task(notifier.feed_watchdog(), name="watchdog")
        pings = [await asyncio.wait_for(loop.sock_recv(sock, 4096), 2.0) for _ in range(4)]
        feeder.cancel()
    elapsed = time.monotonic() - started
    assert pings == [b"WATCHDOG=1"] * 4
    assert 0.25 <= elapsed < 1.5  # three intervals of 0.1 s between the four pings


async def test_feed_watchdog_returns_at_once_without_a_watchdog(
    notify_socket: tuple[socket.socket, str],
) -> None:
    _, path = notify_socket
    await asyncio.wait_for(SystemdNotifier(socket_address=path).feed_watchdog(), 1.0)


def test_taking_the_notifier_leaves_nothing_for_child_processes(
    notify_socket: tuple[socket.socket, str],
) -> None:
    """Without it, `timedatectl` (the clock check) inherited NOTIFY_SOCKET and, outside systemd,
    sent ERRNO=112 to the service's socket."""
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid()),
           "PATH": "/usr/bin"}  # fmt: skip
    notifier = SystemdNotifier.take_from_environ(env)
    assert env == {"PATH": "/usr/bin"}
    assert notifier.watchdog_interval == 0.5
    assert notifier.ready()
    assert received(sock) == ["READY=1"]
