"""Helpers for the TUI tests: what the screen shows as text, waiting on it, and a local API
served from a recorded state (so snapshots are the same on every run)."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from textual.app import App
from textual.pilot import Pilot

from edge.local_api import QuietServer

RECORDED = Path(__file__).with_name("recorded_state.json")
SNAPSHOTS = Path(__file__).with_name("snapshots")

# Rich's SVG export: one <text> per run of same-styled characters, placed by x on a line whose
# clip-path names the row. Each character cell is 12.2 px wide at the default font size.
_TEXT = re.compile(
    r'<text class="[^"]*" x="([\d.]+)" y="[\d.]+" textLength="([\d.]+)" '
    r'clip-path="url\(#[\w-]+-line-(\d+)\)">([^<]*)</text>'
)
_CELL = 12.2


def svg_lines(svg: str) -> list[str]:
    """The screen of an SVG screenshot as text lines, spaces where nothing is drawn."""
    rows: dict[int, dict[int, str]] = {}
    for x, _length, row, content in _TEXT.findall(svg):
        text = html.unescape(content).replace("\xa0", " ")
        column = round(float(x) / _CELL)
        cells = rows.setdefault(int(row), {})
        for offset, char in enumerate(text):
            cells[column + offset] = char
    lines = []
    for row in range(max(rows, default=-1) + 1):
        cells = rows.get(row, {})
        width = max(cells, default=-1) + 1
        lines.append("".join(cells.get(i, " ") for i in range(width)).rstrip())
    return lines


def visible_text(svg: str) -> set[str]:
    """The tolerant form a snapshot is compared in: the set of non-empty lines, runs of spaces
    collapsed (colours, styles and exact column positions may change between Textual versions)."""
    return {" ".join(line.split()) for line in svg_lines(svg) if line.strip()}


def screen(app: App[Any]) -> str:
    """Everything the screen shows now, as text."""
    return "\n".join(svg_lines(app.export_screenshot()))


async def wait_for_screen(
    pilot: Pilot[Any], predicate: Callable[[str], bool], within: float = 30.0
) -> str:
    """Wait until the screen text satisfies `predicate`; return that text."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    text = ""
    while loop.time() < deadline:
        await pilot.pause(0.1)
        text = screen(pilot.app)
        if predicate(text):
            return text
    raise AssertionError(f"the screen never showed what was expected; it shows:\n{text}")


def line_with(text: str, *words: str) -> str | None:
    """The first screen line holding all `words`."""
    return next((line for line in text.splitlines() if all(w in line.split() for w in words)),
                None)  # fmt: skip


def recorded_state() -> dict[str, Any]:
    """The recorded answers of a real agent."""
    state: dict[str, Any] = json.loads(RECORDED.read_text())
    return state


def _recorded_app(state: dict[str, Any]) -> Starlette:
    def answer(path: str) -> Route:
        async def endpoint(_: Request) -> JSONResponse:
            return JSONResponse(state[path])

        return Route(path, endpoint)

    async def events() -> AsyncIterator[bytes]:
        readings = state["stream"]["reading"]
        for start in range(0, len(readings), 10):
            batch = json.dumps(readings[start : start + 10])
            yield f"event: reading\ndata: {batch}\n\n".encode()
        yield f"event: alarm\ndata: {json.dumps(state['stream']['alarm'])}\n\n".encode()
        while True:
            await asyncio.sleep(0.5)
            yield b": keepalive\n\n"

    async def stream(_: Request) -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    async def ack(request: Request) -> JSONResponse:
        return JSONResponse({"acknowledged": True, "alarm": request.path_params["name"]})

    paths = [p for p in state if p.startswith("/")]
    routes = [answer(p) for p in paths]
    routes += [Route("/v1/stream", stream), Route("/v1/alarms/{name}/ack", ack, methods=["POST"])]
    return Starlette(routes=routes)


@contextlib.asynccontextmanager
async def recorded_api(state: dict[str, Any]) -> AsyncIterator[str]:
    """Serve the recorded state on a free loopback port; yields its base URL."""
    config = uvicorn.Config(_recorded_app(state), log_level="warning", lifespan="off",
                            access_log=False)  # fmt: skip
    server = QuietServer(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="recorded-local-api")
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def compare_snapshot(name: str, saved: Path) -> None:
    """Compare a saved screenshot with the committed one, tolerantly (`visible_text`).

    `TAGWAY_UPDATE_SNAPSHOTS=1` replaces the committed file first; review the diff before
    committing it.
    """
    committed = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("TAGWAY_UPDATE_SNAPSHOTS"):
        committed.write_text(saved.read_text())
    assert committed.exists(), f"no {committed}; run with TAGWAY_UPDATE_SNAPSHOTS=1 to make it"
    got, want = visible_text(saved.read_text()), visible_text(committed.read_text())
    assert got == want, (
        f"{name} screen changed; only now: {sorted(got - want)}; gone: {sorted(want - got)}. "
        "If intended, run with TAGWAY_UPDATE_SNAPSHOTS=1 and review the SVGs."
    )
