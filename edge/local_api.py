"""The local API: what the TUI, `tagway status` and health checks read from a running agent.

Served on 127.0.0.1 (or a unix socket) only. Read-only except acknowledging alarms, requeueing
quarantined chunks and writing setpoints; writing and acknowledging need the token of
`edge.local_auth` (reading stays open on loopback), and writes go through `edge.writes`. When
the port is 0 the actual port is written to `<state_dir>/local_api.json`, so the CLI and the
TUI on the same box find the agent without configuration. Every answer is a model of
`edge.api_contract` (the routes are listed there); the OpenAPI document is served at `/docs`
and `/openapi.json`.

It serves a `Runtime`, never the agent: it cannot reach anything start-up has not built.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from edge import api_contract as contract
from edge.alarms import AlarmEvent, AlarmState, UnknownAlarm
from edge.fleet import Fleet
from edge.fleet.remote import RemoteConfigError
from edge.local_auth import authorized, claimed_user, ensure_token, token_path
from edge.metrics import AgentMetrics
from edge.runtime import Runtime
from edge.shelving import ShelveRefused
from edge.writes import WriteOrigin, WriteOutcome
from protocols.reading import Quality, Reading

log = logging.getLogger(__name__)

_STREAM_QUEUE = 1_000  # per client; a slow client loses events (counted), never the agent
_QUALITY: dict[Quality, contract.QualityWord] = {
    Quality.GOOD: "good", Quality.UNCERTAIN: "uncertain", Quality.BAD: "bad"}  # fmt: skip


def tag_value(r: Reading) -> contract.TagValue:
    """A reading as the local API shows it (JSON has no NaN: a non-finite value is null, bad)."""
    value: float | int | str | None = r.value
    quality, reason = _QUALITY[r.quality], r.reason
    if isinstance(value, float) and not math.isfinite(value):
        value, quality, reason = None, "bad", reason or f"not a finite number ({value})"
    return contract.TagValue(device=r.device, tag=r.tag, ts=r.ts, value=value, quality=quality,
                             unit=r.unit, simulated=r.simulated, reason=reason)  # fmt: skip


def alarm_change(e: AlarmEvent) -> contract.AlarmChange:
    """An alarm transition as the local API shows it."""
    return contract.AlarmChange(
        rule=e.rule, device=e.device, tag=e.tag, kind=e.kind.value, severity=e.severity.value,
        transition=e.transition.value, state=e.state.value, ts=e.ts, value=e.value,
        message=e.message,
    )  # fmt: skip


class QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers, for serving inside a process that owns SIGTERM and
    SIGINT itself (the agent, the demo, tests)."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        await self._serve(sockets)


class LocalApi:
    """The local API of one running agent.

    Args:
        runtime: the agent's resources.
        fleet: remote configuration and status reports, when the agent has a cloud.
    """

    def __init__(self, runtime: Runtime, *, fleet: Fleet | None = None) -> None:
        self.runtime = runtime
        self.token = ensure_token(runtime.config.current.gateway.state_dir)
        self.app = build_app(runtime, fleet, token=self.token)
        self.started = asyncio.Event()
        self.port: int | None = None
        self._server: QuietServer | None = None

    async def serve(self) -> None:
        """Serve until `stop()`."""
        section = self.runtime.config.current.local_api
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
        config = self.runtime.config.current
        section = config.local_api
        where: dict[str, str] = {"socket": str(section.socket)} if section.socket else {
            "url": section.url(self.port)}  # fmt: skip
        where["token_file"] = str(token_path(config.gateway.state_dir))
        (config.gateway.state_dir / "local_api.json").write_text(json.dumps(where))

    def stop(self) -> None:
        """Ask the server to finish."""
        if self._server is not None:
            self._server.should_exit = True


def build_app(rt: Runtime, fleet: Fleet | None = None, *, token: str | None = None) -> FastAPI:
    """The FastAPI app over a running agent; acting needs `token` (the state dir's, by
    default)."""
    app = FastAPI(title="tagway local API", version=rt.version,
                  description="The agent's local API; models in `edge.api_contract`.")  # fmt: skip
    metrics = AgentMetrics(rt)
    secret = token if token is not None else ensure_token(rt.config.current.gateway.state_dir)
    where = token_path(rt.config.current.gateway.state_dir)

    def actor(authorization: str | None = Header(default=None),
              x_tagway_user: str | None = Header(default=None)) -> str:  # fmt: skip
        if not authorized(authorization, secret):
            raise HTTPException(401, f"this action needs the local API token: send "
                                     f"'Authorization: Bearer' with the contents of {where} "
                                     "(readable by root and the agent's user)")  # fmt: skip
        return claimed_user(x_tagway_user)

    unauthorized: dict[int | str, dict[str, object]] = {
        401: {"description": "no or a wrong local API token"}}  # fmt: skip

    @app.get("/health", response_model=contract.Health,
             responses={503: {"model": contract.Health, "description": "degraded"}})  # fmt: skip
    async def health() -> JSONResponse:
        problems = _problems(rt)
        body = contract.Health(status="degraded" if problems else "ok", problems=tuple(problems))
        return JSONResponse(body.model_dump(mode="json"), status_code=503 if problems else 200)

    @app.get("/v1/gateway", response_model=contract.Gateway)
    async def gateway() -> contract.Gateway:
        return _gateway(rt, fleet)

    _config_routes(app, fleet)

    @app.get("/v1/drivers", response_model=list[contract.Driver])
    async def drivers() -> list[contract.Driver]:
        return [_driver(rt, name) for name in rt.supervisor.slots]

    @app.get("/v1/tags", response_model=list[contract.TagValue])
    async def tags(device: str | None = None, tag: str | None = None) -> list[contract.TagValue]:
        latest = rt.pipeline.latest.readings()
        return [
            tag_value(r) for r in sorted(latest, key=lambda r: (r.device, r.tag))
            if (device is None or r.device == device) and (tag is None or r.tag == tag)
        ]  # fmt: skip

    @app.get("/v1/alarms", response_model=list[contract.Alarm])
    async def alarms() -> list[contract.Alarm]:
        return _alarms(rt)

    missing: dict[int | str, dict[str, object]] = {
        404: {"description": "no alarm of that name"}, **unauthorized}  # fmt: skip

    @app.post("/v1/alarms/{name}/ack", response_model=contract.AckResult, responses=missing)
    async def ack(name: str, who: str = Depends(actor)) -> contract.AckResult:
        try:
            event = await rt.pipeline.acknowledge(name, time.time_ns() // 1_000, by=who)
        except UnknownAlarm:
            raise HTTPException(404, f"no alarm named {name!r}") from None
        return contract.AckResult(acknowledged=event is not None, alarm=name)

    _alarm_routes(app, rt, actor)

    @app.get("/v1/outbox", response_model=contract.Outbox)
    async def outbox() -> contract.Outbox:
        return await _outbox(rt)

    @app.post("/v1/outbox/requeue-quarantine", response_model=contract.Requeued)
    async def requeue() -> contract.Requeued:
        return contract.Requeued(requeued=await rt.outbox.requeue_quarantine())

    @app.get("/v1/uplink", response_model=contract.Uplink)
    async def uplink() -> contract.Uplink:
        return await _uplink(rt)

    @app.get("/v1/sparkplug", response_model=contract.Sparkplug)
    async def sparkplug() -> contract.Sparkplug:
        return _sparkplug(rt)

    @app.get("/v1/dead-letters", response_model=contract.DeadLetters)
    async def dead_letters(limit: int = 50) -> contract.DeadLetters:
        store = rt.dead_letters
        recent = store.recent(max(0, min(limit, 1000)))
        return contract.DeadLetters.model_validate({"total": store.total, "recent": recent})

    refusals: dict[int | str, dict[str, object]] = {
        409: {"description": "refused by the tag's limits: the reason"},
        502: {"description": "the device refused, did not confirm, or is not running"},
        **unauthorized,
    }

    @app.post("/v1/write", response_model=contract.WriteResult, responses=refusals)
    async def write(request: contract.WriteRequest,
                    who: str = Depends(actor)) -> contract.WriteResult:  # fmt: skip
        outcome = await rt.writes.write(request.device, request.tag, request.value,
                                        origin=WriteOrigin(source="local", who=who))  # fmt: skip
        if outcome.outcome == "refused":
            raise HTTPException(409, f"refused: {outcome.reason}")
        if not outcome.written:
            raise HTTPException(502, f"write failed: {outcome.reason}")
        return contract.WriteResult(written=True, read_back=outcome.read_back,
                                    audit_id=outcome.id, **request.model_dump())  # fmt: skip

    @app.get("/v1/writes", response_model=list[contract.WriteAudit])
    async def writes(limit: int = 50, device: str | None = None) -> list[contract.WriteAudit]:
        rows = rt.writes.audit.recent(max(0, min(limit, 1000)), device=device)
        return [write_audit(w) for w in rows]

    @app.get("/v1/stream", response_class=StreamingResponse)
    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(_events(rt, request), media_type="text/event-stream")

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def write_audit(w: WriteOutcome) -> contract.WriteAudit:
    """An audited write as the local API shows it."""
    return contract.WriteAudit(
        id=w.id, ts=w.ts, device=w.device, tag=w.tag, value=w.value, old=w.old,
        read_back=w.read_back, outcome=w.outcome, reason=w.reason, source=w.source, who=w.who,
        command_id=w.command_id,
    )  # fmt: skip


def _gateway(rt: Runtime, fleet: Fleet | None) -> contract.Gateway:
    config, reloads = rt.config.current, rt.config.reloads
    last, failures = reloads.last, rt.supervisor.tasks.last_failure
    return contract.Gateway(
        name=config.gateway.name, gateway_id=rt.gateway_id, version=rt.version,
        simulated=config.simulated, uptime_s=time.time() - rt.started_at,
        cloud=config.cloud.url if config.cloud is not None else None,
        clock=contract.Clock(
            synchronized=rt.clock.synchronized, source=rt.clock.source,
            checked_at=rt.clock.checked_at,
            unsynchronized_readings=rt.clock.unsynchronized_readings,
        ),
        config=contract.ConfigStatus(
            path=str(rt.config.path) if rt.config.path is not None else None,
            reloads_applied=reloads.applied, reloads_rejected=reloads.rejected,
            needs_restart=reloads.pending_restart,
            last_reload=contract.ReloadOutcome.model_validate(last.as_dict()) if last else None,
            remote=remote_config(fleet) if fleet is not None else None,
        ),
        tasks=tuple(
            contract.AuxTask(name=name, restarts=count, last_failure=failures.get(name))
            for name, count in sorted(rt.supervisor.tasks.restarts.items())
        ),
    )  # fmt: skip


def remote_config(fleet: Fleet) -> contract.RemoteConfig:
    """The config as the cloud manages it, from the version record."""
    record = fleet.remote.versions.record
    running, last, candidate = record.running, record.last_outcome, record.candidate
    return contract.RemoteConfig(
        managed_by=fleet.remote.managed, version=running.version if running else None,
        digest=running.digest if running else None,
        last_good_version=record.last_good.version if record.last_good else None,
        phase=record.phase.value, candidate=candidate.version if candidate else None,
        outcome=last.outcome if last else None,
        outcome_version=last.candidate.version if last else None,
        reason=last.reason if last else None, at=last.at if last else None,
        drift=last is not None and last.outcome == "drift" and running is not None
        and running.version is None,
        status_reports=fleet.status.sent,
    )  # fmt: skip


def _config_routes(app: FastAPI, fleet: Fleet | None) -> None:
    """`/v1/config/...`: the cloud-managed config (404 when the agent has no cloud)."""

    def require() -> Fleet:
        if fleet is None:
            raise HTTPException(404, "this agent has no cloud section: no remote configuration")
        return fleet

    @app.get("/v1/config/remote", response_model=contract.RemoteConfig,
             responses={404: {"description": "no cloud"}})  # fmt: skip
    async def remote() -> contract.RemoteConfig:
        return remote_config(require())

    refusals: dict[int | str, dict[str, object]] = {
        404: {"description": "no cloud"}, 409: {"description": "refused: why"}}  # fmt: skip

    @app.post("/v1/config/pull", response_model=contract.ConfigTrial, responses=refusals)
    async def pull() -> contract.ConfigTrial:
        try:
            outcome = await require().remote.pull()
        except RemoteConfigError as exc:
            raise HTTPException(409, str(exc)) from exc
        return contract.ConfigTrial(
            outcome=outcome.outcome, version=outcome.version.version, reason=outcome.reason,
            problems=tuple(f"line {p.line or '?'}: {p.path}: {p.message}"
                           for p in outcome.problems),
        )  # fmt: skip

    @app.post("/v1/config/push", response_model=contract.ConfigPushed, responses=refusals)
    async def push() -> contract.ConfigPushed:
        try:
            return contract.ConfigPushed(version=await require().remote.push())
        except RemoteConfigError as exc:
            raise HTTPException(409, str(exc)) from exc


def _problems(rt: Runtime) -> list[str]:
    slots = rt.supervisor.slots.values()
    problems = [f"device {s.name} is {s.state}" for s in slots if not s.healthy]
    last_reload = rt.config.reloads.last
    if last_reload is not None and not last_reload.applied:
        # The file on disk would not start the agent either: someone has to look at it.
        problems.append(f"config reload rejected, running the previous config: {last_reload.error}")
    if rt.uplink is not None and rt.uplink.status.state.value == "backoff":
        problems.append(f"uplink failing: {rt.uplink.status.last_error}")
    counters = rt.pipeline.counters
    if counters.flush_errors and rt.pipeline.buffered:
        problems.append(f"outbox not accepting: {counters.last_flush_error}")
    return problems


def _driver(rt: Runtime, name: str) -> contract.Driver:
    slot = rt.supervisor.slots[name]
    driver = slot.driver
    link = driver.link if driver is not None else None
    error = slot.error()
    return contract.Driver(
        name=name, protocol=slot.config.protocol, state=slot.state,
        simulated=slot.config.simulated,
        since=link.since if link else None, reconnects=link.reconnects if link else 0,
        last_error=error.current, last_error_at=error.at, recovered_from=error.recovered_from,
        restarts=slot.restarts, crashes=slot.crashes,
        counters=(driver.counters.as_dict() if driver is not None else {})
        | {"clock_faults": slot.clock.faults},
        queue_dropped=rt.pipeline.counters.dropped_by_device.get(name, 0),
    )  # fmt: skip


def _alarm_routes(app: FastAPI, rt: Runtime, actor: Callable[..., str]) -> None:
    """Shelving and the notification hooks."""
    unknown: dict[int | str, dict[str, object]] = {
        404: {"description": "no alarm of that name"},
        401: {"description": "no or a wrong local API token"}}  # fmt: skip

    @app.post("/v1/alarms/{name}/shelve", response_model=contract.Shelved,
              responses=unknown | {422: {"description": "duration or reason refused"}})  # fmt: skip
    async def shelve(
        name: str, request: contract.ShelveRequest, who: str = Depends(actor)
    ) -> contract.Shelved:
        by = request.by if request.by != "local" else who
        try:
            shelf = rt.shelf.shelve(name, duration_s=request.duration_s, by=by,
                                    reason=request.reason)  # fmt: skip
        except UnknownAlarm:
            raise HTTPException(404, f"no alarm named {name!r}") from None
        except ShelveRefused as exc:
            raise HTTPException(422, str(exc)) from None
        until = time.strftime("%H:%M:%S", time.localtime(shelf.until / 1e6))
        log.info("alarm %s shelved by %s until %s: %s", name, shelf.by, until, shelf.reason)
        return contract.Shelved(alarm=name, until=shelf.until, by=shelf.by, reason=shelf.reason)

    @app.delete("/v1/alarms/{name}/shelve", response_model=contract.Unshelved, responses=unknown)
    async def unshelve(
        name: str, by: str = "local", who: str = Depends(actor)
    ) -> contract.Unshelved:
        by = by if by != "local" else who
        try:
            done = rt.shelf.unshelve(name, by=by)
        except UnknownAlarm:
            raise HTTPException(404, f"no alarm named {name!r}") from None
        if done:
            log.info("alarm %s unshelved by %s", name, by)
        return contract.Unshelved(alarm=name, unshelved=done)

    @app.get("/v1/alarms-shelving", response_model=list[contract.ShelvingAction])
    async def shelving(limit: int = 100) -> list[contract.ShelvingAction]:
        return [
            contract.ShelvingAction(at=a.at, alarm=a.rule, action=a.action, by=a.by,
                                    reason=a.reason, until=a.until)
            for a in rt.shelf.audit(max(1, min(limit, 1000)))
        ]  # fmt: skip

    @app.get("/v1/notifications", response_model=list[contract.NotificationHook])
    async def notifications() -> list[contract.NotificationHook]:
        hooks = {h.name: h for h in rt.config.current.notifications}
        return [
            contract.NotificationHook(
                name=s.name, target=_target(hooks[s.name].url, hooks[s.name].command),
                pending=s.pending, delivered=s.delivered, failed_attempts=s.failed_attempts,
                last_error=s.last_error, last_delivered_at=s.last_delivered_at)
            for s in rt.notifier.status() if s.name in hooks
        ]  # fmt: skip


def _target(url: str | None, command: tuple[str, ...] | None) -> str:
    return url if url is not None else " ".join(command or ())


def _alarms(rt: Runtime) -> list[contract.Alarm]:
    engine = rt.pipeline.alarms
    out = []
    for name, alarm in engine.alarms.items():
        rule = engine.rules[name]
        shelf = rt.shelf.get(name)
        out.append(contract.Alarm(
            name=name, device=rule.device, tag=rule.tag, kind=rule.kind.value,
            severity=rule.severity.value, message=rule.describe(), state=alarm.state.value,
            active=alarm.state in (AlarmState.ACTIVE, AlarmState.ACKED),
            raised_at=alarm.raised_at, acked_at=alarm.acked_at, cleared_at=alarm.cleared_at,
            value=alarm.value, shelved_until=shelf.until if shelf else None,
            limit=rule.limit if rule.kind.value in {"high", "low"} else None,
            shelved_by=shelf.by if shelf else None, shelve_reason=shelf.reason if shelf else None,
        ))  # fmt: skip
    return out


async def _outbox(rt: Runtime) -> contract.Outbox:
    stats = await rt.outbox.stats()
    return contract.Outbox(
        used_bytes=stats.used_bytes, quota_bytes=stats.quota_bytes, file_bytes=stats.file_bytes,
        leased_chunks=stats.leased_chunks, dropped_readings=stats.dropped_readings,
        buffered_readings=rt.pipeline.buffered,
        lanes={lane.value: contract.Lane(**asdict(figures)) for lane, figures
               in stats.lanes.items()},
        recoveries=tuple(contract.Recovery(at=r.at, moved_to=str(r.moved_to), reason=r.reason)
                         for r in stats.recoveries),
        pipeline=contract.PipelineCounters(**asdict(rt.pipeline.counters)),
        refused=dict(stats.refused),
        consumers={name: contract.Consumer(
            pending_chunks=c.pending_chunks, pending_readings=c.pending_readings,
            leased_chunks=c.leased_chunks,
            dropped_readings={lane.value: n for lane, n in c.dropped_readings.items()})
            for name, c in stats.consumers.items()},
    )  # fmt: skip


def _sparkplug(rt: Runtime) -> contract.Sparkplug:
    node = rt.sparkplug
    if node is None:
        return contract.Sparkplug()
    st, settings = node.status, node.settings
    return contract.Sparkplug(
        configured=True, state=st.state.value, group_id=settings.group_id,
        edge_node_id=settings.edge_node_id, primary_host_id=settings.primary_host_id,
        bd_seq=st.bd_seq, births=st.births, rebirth_commands=st.rebirth_commands,
        messages=st.messages, readings=st.readings, historical_readings=st.historical_readings,
        written_commands=st.written_commands, refused_commands=st.refused_commands,
        duplicate_commands=st.duplicate_commands, last_error=st.last_error,
        refusals=tuple(st.refusals),
    )  # fmt: skip


async def _uplink(rt: Runtime) -> contract.Uplink:
    if rt.uplink is None:
        return contract.Uplink(configured=False, state="offline")
    status = rt.uplink.status
    stats = await rt.outbox.stats()
    ages = [lane.oldest_age_s for lane in stats.lanes.values() if lane.oldest_age_s is not None]
    return contract.Uplink(
        configured=True, state=status.state.value, last_success=status.last_success,
        last_error=status.last_error, last_error_at=status.last_error_at,
        batches_sent=status.batches_sent,
        readings_sent=status.readings_sent, duplicates=status.duplicates,
        refused_readings=status.refused_readings,
        quarantined_chunks=status.quarantined_chunks,
        seq_conflicts=status.seq_conflicts, retries=status.retries,
        token_renewals=status.token_renewals, send_rate=rt.uplink.send_rate(),
        backlog_readings=sum(lane.readings for lane in stats.lanes.values()),
        backlog_age_s=max(ages) if ages else None,
        latency_p50_s=status.latency_p50_s, latency_p99_s=status.latency_p99_s,
    )  # fmt: skip


def _sse(kind: str, items: list[contract.TagValue] | list[contract.AlarmChange]) -> bytes:
    data = json.dumps([item.model_dump(mode="json") for item in items])
    return f"event: {kind}\ndata: {data}\n\n".encode()


async def _events(rt: Runtime, request: Request) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_STREAM_QUEUE)
    lost = 0

    def listener(readings: list[Reading], events: list[AlarmEvent]) -> None:
        nonlocal lost
        if readings and queue.full():
            lost += len(readings)
        elif readings:
            queue.put_nowait(_sse("reading", [tag_value(r) for r in readings]))
        if events and queue.full():
            lost += len(events)
        elif events:
            queue.put_nowait(_sse("alarm", [alarm_change(e) for e in events]))

    pipeline = rt.pipeline
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
