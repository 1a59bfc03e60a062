"""The local API: what the TUI, `tagway status` and health checks read from a running agent.

Served on 127.0.0.1 (or a unix socket) only. Read-only except acknowledging alarms and writing
setpoints. When the port is 0 the actual port is written to `<state_dir>/local_api.json`, so the
CLI and the TUI on the same box find the agent without configuration.

    GET  /health              ok / degraded, with the reasons
    GET  /v1/gateway          name, id, version, simulated, uptime, config file and last reload
    GET  /v1/drivers          each device: protocol, state, counters, restarts, last error
    GET  /v1/tags             latest values (?device=&tag= filters)
    GET  /v1/alarms           alarm states;  POST /v1/alarms/{name}/ack
    GET  /v1/outbox           depth per lane, oldest age, dropped, quarantined, file size
    POST /v1/outbox/requeue-quarantine   give refused chunks another try after a fix
    GET  /v1/uplink           state, last success, backlog, send rate, last error
    GET  /v1/dead-letters     the newest undecodable MQTT messages
    GET  /v1/stream           server-sent events: readings and alarm changes, live
    POST /v1/write            {"device", "tag", "value"}: a setpoint through the driver
    GET  /metrics             Prometheus text format
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from edge.alarms import AlarmEvent, AlarmState, UnknownAlarm
from protocols.errors import ProtocolError
from protocols.reading import Reading

if TYPE_CHECKING:
    from edge.agent import Agent

log = logging.getLogger(__name__)

_STREAM_QUEUE = 1_000  # per client; a slow client loses events (counted), never the agent


class WriteRequest(BaseModel):
    """A setpoint to write."""

    model_config = ConfigDict(extra="forbid")

    device: str
    tag: str
    value: float | int | bool | str


def reading_json(r: Reading) -> dict[str, Any]:
    """A reading as the local API shows it (JSON has no NaN: a non-finite value is null, bad)."""
    value: float | int | str | None = r.value
    quality, reason = r.quality.value, r.reason
    if isinstance(value, float) and not math.isfinite(value):
        value, quality, reason = None, "bad", reason or f"not a finite number ({value})"
    return {"device": r.device, "tag": r.tag, "ts": r.ts, "value": value, "quality": quality,
            "unit": r.unit, "simulated": r.simulated, "reason": reason}  # fmt: skip


def alarm_event_json(e: AlarmEvent) -> dict[str, Any]:
    """An alarm transition as the local API shows it."""
    return {"rule": e.rule, "device": e.device, "tag": e.tag, "kind": e.kind.value,
            "severity": e.severity.value, "transition": e.transition.value,
            "state": e.state.value, "ts": e.ts, "value": e.value, "message": e.message}  # fmt: skip


class QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers, for serving inside a process that owns SIGTERM and
    SIGINT itself (the agent, the demo, tests)."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await self._serve(sockets)


class LocalApi:
    """The local API of one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.app = build_app(agent)
        self.started = asyncio.Event()
        self.port: int | None = None
        self._server: QuietServer | None = None

    async def serve(self) -> None:
        """Serve until `stop()`."""
        section = self.agent.config.local_api
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = QuietServer(config)
        if section.socket is not None:
            section.socket.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(section.socket))
        else:
            family = socket.AF_INET6 if section.host == "::1" else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((section.host, section.port))
            self.port = sock.getsockname()[1]
        sock.listen(64)
        self._write_discovery()
        watcher = asyncio.create_task(self._watch_started(), name="local-api-started")
        try:
            await self._server.serve(sockets=[sock])
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            sock.close()

    async def _watch_started(self) -> None:
        # uvicorn exposes `started` as a plain flag, not an event, so poll it briefly.
        while self._server is not None and not self._server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self.started.set()

    def _write_discovery(self) -> None:
        section = self.agent.config.local_api
        where = {"socket": str(section.socket)} if section.socket else {
            "url": f"http://{section.host}:{self.port}"}  # fmt: skip
        path = self.agent.config.gateway.state_dir / "local_api.json"
        path.write_text(json.dumps(where))

    def stop(self) -> None:
        """Ask the server to finish."""
        if self._server is not None:
            self._server.should_exit = True


def build_app(agent: Agent) -> FastAPI:
    """The FastAPI app over a running agent."""
    app = FastAPI(title="tagway local API", version=agent.version, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> JSONResponse:
        problems = _problems(agent)
        body = {"status": "degraded" if problems else "ok", "problems": problems}
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/v1/gateway")
    async def gateway() -> dict[str, Any]:
        identity = agent.identity
        return {"name": agent.config.gateway.name, "gateway_id": identity.gateway_id if identity
                else None, "version": agent.version, "simulated": agent.config.simulated,
                "uptime_s": time.time() - agent.started_at,
                "cloud": agent.config.cloud.url if agent.config.cloud else None,
                "config": _config_json(agent)}  # fmt: skip

    @app.get("/v1/drivers")
    async def drivers() -> list[dict[str, Any]]:
        return [_driver_json(agent, name) for name in agent.slots]

    @app.get("/v1/tags")
    async def tags(device: str | None = None, tag: str | None = None) -> list[dict[str, Any]]:
        pipeline = agent.pipeline
        latest = pipeline.latest.values() if pipeline is not None else []
        return [
            reading_json(r) for r in sorted(latest, key=lambda r: (r.device, r.tag))
            if (device is None or r.device == device) and (tag is None or r.tag == tag)
        ]  # fmt: skip

    @app.get("/v1/alarms")
    async def alarms() -> list[dict[str, Any]]:
        return _alarms_json(agent)

    @app.post("/v1/alarms/{name}/ack")
    async def ack(name: str) -> dict[str, Any]:
        if agent.pipeline is None:
            raise HTTPException(503, "the agent is starting")
        try:
            event = await agent.pipeline.acknowledge(name, time.time_ns() // 1_000)
        except UnknownAlarm:
            raise HTTPException(404, f"no alarm named {name!r}") from None
        return {"acknowledged": event is not None, "alarm": name}

    @app.get("/v1/outbox")
    async def outbox() -> dict[str, Any]:
        return await _outbox_json(agent)

    @app.post("/v1/outbox/requeue-quarantine")
    async def requeue() -> dict[str, Any]:
        if agent.outbox is None:
            raise HTTPException(503, "the agent is starting")
        return {"requeued": await agent.outbox.requeue_quarantine()}

    @app.get("/v1/uplink")
    async def uplink() -> dict[str, Any]:
        status = agent.uplink_status
        if status is None:
            return {"configured": False}
        return {"configured": True, **asdict(status), "state": status.state.value}

    @app.get("/v1/dead-letters")
    async def dead_letters(limit: int = 50) -> dict[str, Any]:
        store = agent.dead_letters
        if store is None:
            return {"total": 0, "recent": []}
        return {"total": store.total, "recent": store.recent(min(limit, 1000))}

    @app.post("/v1/write")
    async def write(request: WriteRequest) -> dict[str, Any]:
        try:
            await agent.write(request.device, request.tag, request.value)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except ProtocolError as exc:
            raise HTTPException(502, f"write failed: {exc}") from exc
        return {"written": True, **request.model_dump()}

    @app.get("/v1/stream")
    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(_events(agent, request), media_type="text/event-stream")

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(await _metrics_text(agent), media_type="text/plain; version=0.0.4")

    return app


def _config_json(agent: Agent) -> dict[str, Any]:
    reloads = agent.reloads
    return {
        "path": str(agent.config_path) if agent.config_path is not None else None,
        "reloads_applied": reloads.applied, "reloads_rejected": reloads.rejected,
        "needs_restart": list(reloads.pending_restart),
        "last_reload": reloads.last.as_dict() if reloads.last is not None else None,
    }  # fmt: skip


def _problems(agent: Agent) -> list[str]:
    problems = [f"device {s.name} is {s.state}" for s in agent.slots.values() if not s.healthy]
    last_reload = agent.reloads.last
    if last_reload is not None and not last_reload.applied:
        # The file on disk would not start the agent either: someone has to look at it.
        problems.append(f"config reload rejected, running the previous config: {last_reload.error}")
    status = agent.uplink_status
    if status is not None and status.state.value == "backoff":
        problems.append(f"uplink failing: {status.last_error}")
    pipeline = agent.pipeline
    if pipeline is not None and pipeline.counters.flush_errors and pipeline.buffered:
        problems.append(f"outbox not accepting: {pipeline.counters.last_flush_error}")
    return problems


def _driver_json(agent: Agent, name: str) -> dict[str, Any]:
    slot = agent.slots[name]
    driver = slot.driver
    link = driver.link if driver is not None else None
    return {
        "name": name, "protocol": slot.config.protocol, "state": slot.state,
        "simulated": slot.config.simulated,
        "since": link.since if link else None, "reconnects": link.reconnects if link else 0,
        "last_error": (link.last_error if link else None) or slot.last_crash,
        "restarts": slot.restarts, "crashes": slot.crashes,
        "counters": driver.counters.as_dict() if driver is not None else {},
    }  # fmt: skip


def _alarms_json(agent: Agent) -> list[dict[str, Any]]:
    pipeline = agent.pipeline
    if pipeline is None:
        return []
    engine = pipeline.alarms
    out = []
    for name, alarm in engine.alarms.items():
        rule = engine.rules[name]
        out.append({
            "name": name, "device": rule.device, "tag": rule.tag, "kind": rule.kind.value,
            "severity": rule.severity.value, "message": rule.describe(),
            "state": alarm.state.value, "active": alarm.state in (AlarmState.ACTIVE,
                                                                   AlarmState.ACKED),
            "raised_at": alarm.raised_at, "acked_at": alarm.acked_at,
            "cleared_at": alarm.cleared_at, "value": alarm.value,
        })  # fmt: skip
    return out


async def _outbox_json(agent: Agent) -> dict[str, Any]:
    stats = await agent.outbox_stats()
    if stats is None:
        return {"open": False}
    pipeline = agent.pipeline
    return {
        "open": True, "used_bytes": stats.used_bytes, "quota_bytes": stats.quota_bytes,
        "file_bytes": stats.file_bytes, "leased_chunks": stats.leased_chunks,
        "dropped_readings": stats.dropped_readings,
        "buffered_readings": pipeline.buffered if pipeline else 0,
        "lanes": {lane.value: asdict(figures) for lane, figures in stats.lanes.items()},
        "recoveries": [{"at": r.at, "moved_to": str(r.moved_to), "reason": r.reason}
                       for r in stats.recoveries],
        "pipeline": asdict(pipeline.counters) if pipeline else {},
    }  # fmt: skip


async def _events(agent: Agent, request: Request) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_STREAM_QUEUE)
    lost = 0

    def listener(readings: list[Reading], events: list[AlarmEvent]) -> None:
        nonlocal lost
        for kind, items in (("reading", [reading_json(r) for r in readings]),
                            ("alarm", [alarm_event_json(e) for e in events])):  # fmt: skip
            if not items:
                continue
            try:
                queue.put_nowait(f"event: {kind}\ndata: {json.dumps(items)}\n\n".encode())
            except asyncio.QueueFull:
                lost += len(items)

    pipeline = agent.pipeline
    if pipeline is None:
        return
    pipeline.listeners.append(listener)
    try:
        yield b": connected\n\n"
        while not await request.is_disconnected():
            try:
                yield await asyncio.wait_for(queue.get(), 1.0)
            except TimeoutError:
                yield f": keepalive lost={lost}\n\n".encode()
    finally:
        pipeline.listeners.remove(listener)


async def _metrics_text(agent: Agent) -> str:
    lines: list[str] = []

    def metric(name: str, value: float, help_text: str, labels: str = "") -> None:
        if not any(line.startswith(f"# HELP tagway_{name} ") for line in lines):
            lines.append(f"# HELP tagway_{name} {help_text}")
        lines.append(f"tagway_{name}{{{labels}}} {value}" if labels else f"tagway_{name} {value}")

    pipeline = agent.pipeline
    if pipeline is not None:
        c = pipeline.counters
        metric("readings_received_total", c.received, "readings delivered by drivers")
        metric("readings_committed_total", c.committed, "readings committed to the outbox")
        metric("readings_suppressed_total", c.suppressed, "readings filtered by deadband")
        metric("readings_dropped_total", c.dropped, "readings refused with a full buffer")
    for name, slot in agent.slots.items():
        up = 1 if slot.healthy else 0
        metric("driver_connected", up, "1 when the device link is up", f'device="{name}"')
        metric("driver_restarts_total", slot.restarts, "driver restarts", f'device="{name}"')
    for outcome, count in (("applied", agent.reloads.applied),
                           ("rejected", agent.reloads.rejected)):  # fmt: skip
        metric("config_reloads_total", count, "config reloads (SIGHUP)", f'outcome="{outcome}"')
    stats = await agent.outbox_stats()
    if stats is not None:
        metric("outbox_used_bytes", stats.used_bytes, "payload bytes in the outbox")
        metric("outbox_quota_bytes", stats.quota_bytes, "outbox quota")
        for lane, figures in stats.lanes.items():
            labels = f'lane="{lane.value}"'
            metric("outbox_chunks", figures.chunks, "chunks waiting", labels)
            metric("outbox_dropped_readings_total", figures.dropped_readings,
                   "readings dropped by the quota policy", labels)  # fmt: skip
    status = agent.uplink_status
    if status is not None:
        metric("uplink_batches_sent_total", status.batches_sent, "batches acknowledged")
        metric("uplink_readings_sent_total", status.readings_sent, "readings acknowledged")
    return "\n".join(lines) + "\n"
