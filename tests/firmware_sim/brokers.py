"""MQTT brokers for the tests: amqtt in-process and a private Mosquitto, both on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from amqtt.broker import Broker

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


@asynccontextmanager
async def amqtt_broker() -> AsyncIterator[int]:
    """An amqtt broker bound to a free port; yields the port."""
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        server = broker._servers["default"].instance  # private: the only way to read port 0
        yield server.sockets[0].getsockname()[1]
    finally:
        await broker.shutdown()


def _free_port() -> int:
    # Mosquitto cannot report a port-0 bind, so the test picks a free port just before.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def mosquitto_broker(
    tmp_path: Path, credentials: tuple[str, str] | None = None
) -> AsyncIterator[int]:
    """A private Mosquitto process on a free loopback port; yields the port.

    With `credentials`, anonymous clients are refused and only that user may connect.
    """
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    port = _free_port()
    config = tmp_path / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1"]
    if os.geteuid() == 0:
        # Started as root, Mosquitto drops to user `mosquitto`, who cannot read pytest's tmp dir.
        lines.append("user root")
    if credentials is None:
        lines.append("allow_anonymous true")
    else:
        passwords = tmp_path / "passwords"
        passwd = shutil.which("mosquitto_passwd")
        if passwd is None:
            pytest.skip("mosquitto_passwd is not installed")
        maker = await asyncio.create_subprocess_exec(
            passwd, "-b", "-c", str(passwords), *credentials
        )
        await maker.wait()
        lines += ["allow_anonymous false", f"password_file {passwords}"]
    config.write_text("\n".join(lines) + "\n")
    proc = await asyncio.create_subprocess_exec(
        MOSQUITTO, "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            if proc.returncode is not None:
                pytest.fail(f"mosquitto exited with {proc.returncode}; config: {lines}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            break
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
