"""A second OPC UA server implementation for the tests: node-opcua, run by node.

`make tools` installs node-opcua-server into tests/tools/node_modules (gitignored). Without
node or that install, tests that need it skip and say why (and fail under CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tests.conftest import skip_or_fail

TOOLS = Path(__file__).resolve().parents[2] / "tools"
SCRIPT = TOOLS / "opcua_node_server.js"
NAMESPACE = "urn:tagway:node-test"
PATH = "/tagway-node"


@dataclass(frozen=True)
class NodeServer:
    """The running node-opcua server: its port and PKI folder (server/trusted, server/own)."""

    port: int
    pki: Path

    def url(self, port: int | None = None) -> str:
        return f"opc.tcp://127.0.0.1:{port or self.port}{PATH}"


def node_tag_id(name: str) -> str:
    return f"nsu={NAMESPACE};s=pump1.{name}"


def _server_log(pki: Path) -> BinaryIO:
    pki.mkdir(parents=True, exist_ok=True)
    return (pki / "server.log").open("wb")


async def _announced_port(proc: asyncio.subprocess.Process) -> int:
    """The port from the script's {"port": N} line (node-opcua prints notes on stdout too)."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        if line.startswith(b'{"port"'):
            return int(json.loads(line)["port"])
    await proc.wait()
    code = proc.returncode
    raise AssertionError(f"node-opcua server did not start (exit {code}; see server.log)")


@contextlib.asynccontextmanager
async def node_opcua_server(pki: Path, *, trust_clients: bool = True) -> AsyncIterator[NodeServer]:
    """Start the node-opcua server on a free port; stop it (SIGTERM) when the block ends."""
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed: the second OPC UA server (node-opcua) cannot run")
    if not (TOOLS / "node_modules" / "node-opcua-server").is_dir():
        skip_or_fail("node-opcua-server is not installed in tests/tools: run `make tools`")
    env = {"TRUST_CLIENTS": "1" if trust_clients else "0", "PATH": "/usr/bin:/bin"}
    with _server_log(pki) as log:
        proc = await asyncio.create_subprocess_exec(
            node or "node", str(SCRIPT), str(pki),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, env=env,
        )  # fmt: skip
    drain: asyncio.Task[bytes] | None = None
    try:
        port = await asyncio.wait_for(_announced_port(proc), 120)
        assert proc.stdout is not None
        drain = asyncio.create_task(proc.stdout.read(), name="node-opcua-stdout")
        yield NodeServer(port=port, pki=pki)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            await drain
