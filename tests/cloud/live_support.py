"""Helpers for the two-way tests: the cloud served by a real uvicorn on a port-0 socket (the
channel and the stream are long-lived responses, which only a real server streams), and a small
reader of server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from cloud.contract import Batch, encode_batch


class QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers (the test process owns them)."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await self._serve(sockets)


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """Serve the app (lifespan included) on 127.0.0.1 port 0; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = QuietServer(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="test-cloud-server")
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True  # the clients closed their streams first: nothing holds it
        await task
        sock.close()


@dataclass(frozen=True)
class Event:
    """One server-sent event."""

    name: str
    data: Any


class EventReader:
    """Reads server-sent events from one streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self._lines = response.aiter_lines()

    async def next(self, wait_s: float = 5.0) -> Event:
        """The next event (comments are collected, not returned)."""
        name, data = "message", []
        async with asyncio.timeout(wait_s):
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    return Event(name, json.loads("\n".join(data)))
        raise EOFError("the stream ended")

    async def until(self, name: str, wait_s: float = 5.0) -> Event:
        """The next event named `name`, skipping others."""
        deadline = time.monotonic() + wait_s
        while True:
            event = await self.next(max(0.01, deadline - time.monotonic()))
            if event.name == name:
                return event

    async def subscribed(self, wait_s: float = 5.0) -> None:
        """Wait for the stream's first comment (the server has registered the client)."""
        async with asyncio.timeout(wait_s):
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    return


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, path: str, token: str, **params: Any
) -> AsyncIterator[EventReader]:
    """GET a server-sent event stream with a bearer token."""
    headers = {"Authorization": f"Bearer {token}"}
    async with client.stream("GET", path, headers=headers, params=params) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        yield EventReader(response)


def batch_with_events(gateway_id: int, seq: int, events: list[Any], **extra: Any) -> bytes:
    """A batch carrying gateway events (command results, writes, reports), encoded."""
    return encode_batch(Batch(str(gateway_id), seq, time.time_ns() // 1000, events=events, **extra))
