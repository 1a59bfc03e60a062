"""The agent: wires drivers through the pipeline into the outbox, and the outbox to the cloud.

One asyncio process. `Agent.run()` builds the `Runtime` (see `edge.runtime`) in dependency order,
then runs in one TaskGroup a named task per driver (see `edge.supervisor`), the pipeline's
flusher, the alarm ticker, the uplink, the identity's certificate rotation and the local API.
When `stop` is set (SIGTERM, SIGINT), drivers stop first, the pipeline flushes what it holds into
the outbox, and everything closes in the reverse order it was opened.

`reload()` (SIGHUP) reads the config file again and applies it without a restart: only the
drivers of added and changed devices start, only those of removed and changed devices stop, and
the pipeline follows the new deadbands, derived tags and alarm rules (see `edge.reload`).

With a config file and a cloud, `edge.fleet` applies the config versions the cloud sends (the
same reload, then a probation) and reports the gateway's status; a new config that needs a
restart stops the agent with `exit_code` 75, for systemd to start it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from cloud.contract import AlarmRecord
from edge import chunk
from edge.alarm_store import AlarmStore
from edge.alarms import Alarm, AlarmEngine, AlarmEvent, AlarmState
from edge.assets import AssetPath
from edge.channel import ChannelHandlers, CommandChannel
from edge.clock import ClockSync
from edge.collector import limit_malloc_arenas, settle_after_start
from edge.commands import CommandJournal, CommandRunner
from edge.config import AgentConfig, ConfigError, load_config
from edge.credentials import UplinkIdentity, load_uplink_identity
from edge.dead_letters import DeadLetterStore
from edge.errors import EdgeError
from edge.fleet import EX_RESTART, Fleet
from edge.fleet.versions import ConfigVersions
from edge.local_api import LocalApi
from edge.notify import NotificationQueue, Notifier
from edge.pipeline import settings as stages
from edge.pipeline.derived import DerivedTags
from edge.pipeline.rbe import ReportByException
from edge.pipeline.runner import Pipeline, now_us
from edge.reload import ReloadPlan, ReloadRejected, ReloadResult, plan_reload
from edge.runtime import LiveConfig, Runtime, event_emitter
from edge.sd_notify import SystemdNotifier
from edge.seq_state import SeqState
from edge.shadow import DesiredSetpoints, ShadowRecord
from edge.shelving import AlarmShelf
from edge.supervisor import Supervisor
from edge.uplink import Uplink, UplinkSettings
from edge.writes import WriteAudit, WriteDoor
from protocols.backoff import BackoffPolicy
from store_forward import (
    DEFAULT_CONSUMER,
    AsyncOutbox,
    Lane,
    OutboxSettings,
    QuotaPolicy,
    Synchronous,
)

if TYPE_CHECKING:
    from edge.inference.model import InferenceStage
    from edge.north.sparkplug_node import SparkplugNode
    from edge.north.uns import UnsPublisher

log = logging.getLogger(__name__)

SUMMARY_EVERY_S = 300.0
"""How often the agent logs its one-line summary at INFO."""

_DRIVER_BACKOFF = BackoffPolicy(base=1.0, cap=30.0)


class AgentNotRunning(EdgeError):
    """The runtime was asked for before `run()` built it or after it closed."""


class Agent:
    """The gateway agent.

    Args:
        config: the validated configuration.
        config_path: the file `config` was loaded from, read again by `reload()`.
        identity: who the uplink posts as, instead of the one `config` names (tests, benchmarks);
            by default loaded from the config's token file or the provisioned identity.
        driver_backoff: restart policy for failed drivers.
        notifier: systemd's notify socket (readiness, watchdog, stopping); by default the one
            the environment names, a no-op outside systemd.
        tune_gc: once the drivers have started, freeze what start-up built and raise the
            collector's young threshold, and cap glibc's malloc arenas at start
            (`edge.collector`). For a process that runs one agent (`tagway run`); off by
            default, as a test process runs many.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        config_path: Path | None = None,
        identity: UplinkIdentity | None = None,
        driver_backoff: BackoffPolicy = _DRIVER_BACKOFF,
        notifier: SystemdNotifier | None = None,
        tune_gc: bool = False,
        summary_every: float = SUMMARY_EVERY_S,
    ) -> None:
        self.config = LiveConfig(config, path=config_path)
        self._tune_gc = tune_gc
        self._summary_every = summary_every
        self.reload_requested = asyncio.Event()  # set by SIGHUP; a reload runs, then it clears
        self.ready = asyncio.Event()  # set once the runtime is built and the local API serves
        self._identity = identity
        self._driver_backoff = driver_backoff
        self._notifier = notifier if notifier is not None else SystemdNotifier.from_environ()
        self._runtime: Runtime | None = None
        self._reload_lock = asyncio.Lock()
        self.fleet: Fleet | None = None  # remote config and status reports, when a cloud is set
        self.commands: CommandRunner | None = None  # the cloud's commands, when a cloud is set
        self.channel: CommandChannel | None = None  # the outbound channel they arrive on
        self.shadow: DesiredSetpoints | None = None  # the shadow's desired setpoints
        self._journal: CommandJournal | None = None
        self._shadow_record: ShadowRecord | None = None
        self.exit_code = 0  # EX_RESTART when a new config asked for a restart

    @property
    def runtime(self) -> Runtime:
        """The running agent's resources (for tests and tools that hold an `Agent`).

        Raises:
            AgentNotRunning: before `ready` or after `run()` returned.
        """
        if self._runtime is None:
            raise AgentNotRunning("the agent is not running")
        return self._runtime

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then stop drivers, flush, and close everything."""
        config = self.config.current
        if self._tune_gc:
            limit_malloc_arenas()  # before the outbox's thread and the executor's start
        config.gateway.state_dir.mkdir(parents=True, exist_ok=True)
        identity = self._identity or load_uplink_identity(config)
        # Resources open before the task group and close after it: a failure to open one
        # (a state file from a newer release) surfaces as itself, not inside an ExceptionGroup.
        async with AsyncExitStack() as stack:
            outbox = await stack.enter_async_context(
                AsyncOutbox(config.outbox_path, outbox_settings(config))
            )
            await _release_stale_leases(outbox)
            alarm_store = AlarmStore(config.gateway.state_dir / "alarms.db")
            stack.callback(alarm_store.close)
            dead_letters = DeadLetterStore(config.gateway.state_dir / "dead_letters.db")
            stack.callback(dead_letters.close)
            broker = None
            if config.mqtt_broker is not None:
                from protocols.mqtt.broker import EmbeddedBroker  # noqa: PLC0415 - heavy

                broker = await stack.enter_async_context(EmbeddedBroker(config.mqtt_broker))
            uplink = _uplink(config, identity, outbox)
            inference = _inference_stage(config) if config.models else None
            if inference is not None:
                stack.callback(inference.close)
            queue = NotificationQueue(config.gateway.state_dir / "notifications.db")
            stack.callback(queue.close)
            shelf = AlarmShelf(alarm_store, lambda: pipeline.alarms.rules)
            live = self.config
            notifier = Notifier(queue, lambda: live.current.notifications,
                                gateway=lambda: live.current.gateway.name,
                                shelved=shelf.is_shelved)  # fmt: skip
            pipeline = _pipeline(config, outbox, alarm_store, inference, uplink, notifier=notifier)
            write_audit = WriteAudit(config.gateway.state_dir / "writes.db")
            stack.callback(write_audit.close)
            if uplink is not None:
                self._journal = CommandJournal(config.gateway.state_dir / "commands.db")
                stack.callback(self._journal.close)
                self._shadow_record = ShadowRecord(config.gateway.state_dir / "shadow.db")
                stack.callback(self._shadow_record.close)
            async with asyncio.TaskGroup() as group:
                clock = ClockSync(config.clock.sync_command, config.clock.sync_interval)
                supervisor = Supervisor(group=group, sink=pipeline.accept,
                                        dead_letters=dead_letters,
                                        backoff=self._driver_backoff,
                                        clock_window=config.clock.window(),
                                        clock_fault=config.clock.clock_fault,
                                        clock_sync=clock)  # fmt: skip
                writes = WriteDoor(audit=write_audit, config=lambda: self.config.current,
                                   supervisor=supervisor, pipeline=pipeline,
                                   emit=event_emitter(outbox, uplink))  # fmt: skip
                runtime = Runtime(
                    config=self.config, identity=identity, outbox=outbox,
                    alarm_store=alarm_store, dead_letters=dead_letters, broker=broker,
                    inference=inference, pipeline=pipeline, uplink=uplink, supervisor=supervisor,
                    shelf=shelf, notifier=notifier,
                    writes=writes, clock=clock,
                    sparkplug=_sparkplug_node(config, outbox, supervisor, pipeline, writes),
                )  # fmt: skip
                self._runtime = runtime
                try:
                    await self._serve(runtime, group, stop)
                finally:
                    self._runtime = None

    async def _serve(self, rt: Runtime, group: asyncio.TaskGroup, stop: asyncio.Event) -> None:
        self.fleet = fleet = self._fleet(rt, stop)
        await rt.writes.start()  # writes a kill cut short are reported as unknown
        api = LocalApi(rt, fleet=fleet)
        flusher = group.create_task(rt.pipeline.run(), name="pipeline")
        reloader = group.create_task(self._reload_when_requested(rt), name="reload")
        tasks = rt.supervisor.tasks  # each restarted on failure: none of them stops the agent
        background = [
            tasks.start("alarms", lambda: _tick_alarms(rt)),
            tasks.start("notifications", rt.notifier.run),
            tasks.start("watchdog", self._notifier.feed_watchdog),
            tasks.start("clock", rt.clock.run),
            tasks.start("summary", lambda: _log_summaries(rt, self._summary_every)),
        ]
        if rt.uplink is not None:  # a lease held at a failure comes back at its timeout
            background.append(tasks.start("uplink", rt.uplink.run))
        if rt.sparkplug is not None:
            background.append(tasks.start("sparkplug", rt.sparkplug.run))
        uns = _uns_publisher(rt)
        if uns is not None:
            background.append(tasks.start("uns", uns.run))
        if rt.identity is not None and rt.identity.maintenance is not None:
            background.append(tasks.start("identity", rt.identity.maintenance))
        served = group.create_task(api.serve(), name="local-api")
        await api.started.wait()
        self.ready.set()
        # Drivers start once the local API answers: it shows them connecting from the start.
        rt.supervisor.start(rt.config.current.devices)
        if self._tune_gc:
            settle_after_start()
        self._open_channel(rt, group, background)
        if fleet is not None:  # after the drivers: its first status document lists them all
            background.append(rt.supervisor.tasks.start("fleet", fleet.run))
        devices = len(rt.supervisor.slots)
        log.info("agent %s running: %d devices", rt.config.current.gateway.name, devices)
        self._notifier.ready(f"running: {devices} devices")
        await stop.wait()
        self._notifier.stopping()
        reloader.cancel()  # no reload starts a driver once stopping has begun
        await asyncio.gather(reloader, return_exceptions=True)
        log.info("stopping: drivers first, then a last flush into the outbox")
        await rt.supervisor.stop_all()
        flusher.cancel()  # its finally flushes what the drivers delivered
        await asyncio.gather(flusher, return_exceptions=True)
        api.stop()
        for task in background:
            task.cancel()
        await served

    def _open_channel(
        self, rt: Runtime, group: asyncio.TaskGroup, background: list[asyncio.Task[None]]
    ) -> None:
        """The command channel and the runner behind it (`edge.channel`, `edge.commands`), for
        an agent with a cloud."""
        cloud = rt.config.current.cloud
        record = self._shadow_record
        if self._journal is None or record is None or rt.identity is None or cloud is None:
            return
        reload = (lambda: self._reload(rt)) if rt.config.path is not None else None
        emit = event_emitter(rt.outbox, rt.uplink)
        self.commands = runner = CommandRunner(
            journal=self._journal, runtime=rt, emit=emit, reload=reload)  # fmt: skip
        fleet = self.fleet

        def config_version() -> int | None:
            running = fleet.remote.versions.record.running if fleet is not None else None
            return running.version if running is not None else None

        self.shadow = shadow = DesiredSetpoints(record=record, runtime=rt, emit=emit,
                                                config_version=config_version)  # fmt: skip
        handlers = ChannelHandlers(
            command=runner.submit, desired=shadow.offer,
            config=fleet.remote.offer if fleet is not None else None,
        )  # fmt: skip
        self.channel = channel = CommandChannel(
            base_url=cloud.url, identity=rt.identity, handlers=handlers,
            connect_timeout=cloud.connect_timeout, retry_max_delay=cloud.retry_max_delay,
        )  # fmt: skip
        tasks = rt.supervisor.tasks
        background.append(tasks.start("commands", runner.run))
        background.append(tasks.start("shadow", shadow.run))
        background.append(tasks.start("channel", channel.run))

    def _fleet(self, rt: Runtime, stop: asyncio.Event) -> Fleet | None:
        """Remote configuration and status reports: for an agent with a config file and a
        cloud (`edge.fleet`)."""
        path = rt.config.path
        if path is None or rt.uplink is None:
            return None

        def restart() -> None:
            self.exit_code = EX_RESTART
            stop.set()

        return Fleet(runtime=rt, versions=ConfigVersions(path),
                     reload=lambda: self._reload(rt), restart=restart)  # fmt: skip

    async def reload(self) -> ReloadResult:
        """Read the config file again and apply what changed (SIGHUP, `systemctl reload`).

        A file that does not validate changes nothing: the loader's message is logged, counted
        and shown by the local API, and the running config stays. The result is also kept in
        `config.reloads.last`.

        Raises:
            AgentNotRunning: the agent is not running.
            ReloadRejected: the agent was not started from a config file.
        """
        return await self._reload(self.runtime)

    async def _reload(self, rt: Runtime) -> ReloadResult:
        path = rt.config.path
        if path is None:
            raise ReloadRejected("this agent was not started from a config file")
        async with self._reload_lock:
            self._notifier.reloading()
            result = await _reload_from(rt, path)
            self._notifier.ready(f"running: {len(rt.supervisor.slots)} devices")
            return rt.config.reloads.record(result)

    async def _reload_when_requested(self, rt: Runtime) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()  # signals that arrive meanwhile make one more reload
            try:
                result = await self._reload(rt)
            except ReloadRejected as exc:
                log.warning("reload requested, but %s", exc)
                continue
            if self.fleet is not None:
                await self.fleet.remote.after_reload(result)  # a local edit: drift, maybe


async def _reload_from(rt: Runtime, path: Path) -> ReloadResult:
    at = time.time()
    try:
        plan = plan_reload(rt.config.current, load_config(path))
    except ConfigError as exc:
        error = "; ".join(str(issue) for issue in exc.issues)
    except ReloadRejected as exc:
        error = f"{path}: {exc}"
    else:
        await _apply(rt, plan)
        if plan.needs_restart:
            log.warning(
                "config reload needs a restart: %s changed; running with the previous values "
                "of these sections until then", ", ".join(plan.needs_restart),
            )  # fmt: skip
        log.info("config reloaded from %s: devices %s", path, plan.devices.summary())
        return ReloadResult(at, applied=True, devices=plan.devices,
                            needs_restart=plan.needs_restart)  # fmt: skip
    log.error("config reload rejected, still running the previous config: %s", error)
    return ReloadResult(at, applied=False, error=error)


async def _apply(rt: Runtime, plan: ReloadPlan) -> None:
    changes, config = plan.devices, plan.config
    await rt.supervisor.stop(changes.restarted, forget=True)
    await rt.pipeline.flush()  # what the stopped drivers delivered is committed now
    stages.reconfigure(rt.pipeline, config, forget=changes.restarted)
    rt.config.replace(config)
    started = set(changes.changed + changes.added)
    rt.supervisor.start(d for d in config.devices if d.name in started)


async def _release_stale_leases(outbox: AsyncOutbox) -> None:
    if outbox.recovery is not None:
        log.error("outbox was damaged and moved aside: %s", outbox.recovery)
    # This process is the outbox's only owner: leases left by a previous life (killed
    # mid-upload) are released now rather than after their timeout.
    stale = await outbox.forget_leases()
    if stale:
        log.warning("released %d leases left by a previous run", stale)


def _uplink(
    config: AgentConfig, identity: UplinkIdentity | None, outbox: AsyncOutbox
) -> Uplink | None:
    cloud = config.cloud
    if cloud is None or identity is None:
        return None
    settings = UplinkSettings(
        ingest_url=cloud.url.rstrip("/") + "/v1/ingest",
        gateway_id=identity.gateway_id,
        max_batch_bytes=cloud.max_batch_bytes,
        max_batches_per_s=cloud.max_batches_per_s,
        connect_timeout=cloud.connect_timeout,
        read_timeout=cloud.read_timeout,
        retry_max_delay=cloud.retry_max_delay,
        lease_renew_s=min(10.0, config.outbox.lease_timeout / 3),
    )
    seq = SeqState.load(config.gateway.state_dir / "uplink_seq.json")
    gateway = config.gateway.name

    async def conflict_alarm(reason: str) -> None:
        """A critical alarm record in the alarm lane: the cloud lists it with the plant's."""
        record = AlarmRecord(
            device=gateway, name="uplink.seq_conflict", ts=now_us(),
            kind="event", state="event", severity="critical", message=reason[:1_000],
        )  # fmt: skip
        await outbox.append_many([(chunk.encode_records([record]), 1, Lane.ALARM)])

    return Uplink(settings=settings, outbox=outbox, identity=identity, seq_state=seq,
                  on_conflict=conflict_alarm)  # fmt: skip


def _pipeline(
    config: AgentConfig,
    outbox: AsyncOutbox,
    alarm_store: AlarmStore,
    inference: InferenceStage | None,
    uplink: Uplink | None,
    *,
    notifier: Notifier,
) -> Pipeline:
    wake = uplink.wake.set if uplink is not None else None

    async def persist(events: list[AlarmEvent], states: Mapping[str, Alarm]) -> None:
        alarm_store.save(states[e.rule] for e in events if e.rule in states)
        notifier.announce(events)

    return Pipeline(
        outbox=outbox,
        rbe=ReportByException(stages.deadbands(config),
                              default=stages.default_deadband(config.report)),
        derived=DerivedTags(stages.derived_tags(config)),
        inference=inference,
        alarms=AlarmEngine(stages.alarm_rules(config), alarm_store.load()),
        on_alarms=persist,
        on_commit=wake,
        flush_interval=config.outbox.flush_interval,
        chunk_readings=config.outbox.chunk_readings,
    )  # fmt: skip


async def _log_summaries(rt: Runtime, every: float) -> None:
    """One INFO line every `every` seconds with what an operator checks first."""
    before, since = rt.pipeline.counters.committed, time.monotonic()
    while True:
        await asyncio.sleep(every)
        log.info("%s", await summary_line(rt, before, time.monotonic() - since))
        before, since = rt.pipeline.counters.committed, time.monotonic()


async def summary_line(rt: Runtime, committed_before: int, seconds: float) -> str:
    """``summary: devices 3/4 connected, 120.5 readings/s accepted, uplink connected (backlog
    0 readings, dropped 0), 1 alarm needing attention``."""
    slots = rt.supervisor.slots.values()
    connected = sum(1 for slot in slots if slot.healthy)
    rate = (rt.pipeline.counters.committed - committed_before) / max(seconds, 1e-9)
    stats = await rt.outbox.stats()
    backlog = sum(lane.readings for lane in stats.lanes.values())
    uplink = "no cloud" if rt.uplink is None else f"uplink {rt.uplink.status.state.value}"
    active = len(rt.pipeline.alarms.active())
    alarms = f"{active} alarm{'' if active == 1 else 's'} needing attention"
    return (f"summary: devices {connected}/{len(rt.supervisor.slots)} connected, {rate:.1f} "
            f"readings/s accepted, {uplink} (backlog {backlog} readings, dropped "
            f"{stats.dropped_readings}), {alarms}")  # fmt: skip


async def _tick_alarms(rt: Runtime) -> None:
    while True:
        await asyncio.sleep(1.0)
        await rt.pipeline.tick_alarms(now_us())
        # A shelf that ran out on an alarm still active and unacknowledged announces it now:
        # shelving silences an alarm for a stated time, never for good.
        engine = rt.pipeline.alarms
        back = [
            event for name in rt.shelf.expire()
            if name in engine.alarms and engine.alarms[name].state is AlarmState.ACTIVE
            and (event := engine.raised_event(name)) is not None
        ]  # fmt: skip
        if back:
            rt.notifier.announce(back, note="shelving ended; the alarm is still active")


def _inference_stage(config: AgentConfig) -> InferenceStage:
    from edge.inference.model import InferenceStage, ModelSpec  # noqa: PLC0415 - onnxruntime

    simulated = {d.name: d.simulated for d in config.devices}
    return InferenceStage([
        ModelSpec(**m.model_dump(exclude={"alarm"}),
                  simulated=any(simulated.get(d, False) for d in m.devices))
        for m in config.models
    ])  # fmt: skip


def _sparkplug_node(
    config: AgentConfig,
    outbox: AsyncOutbox,
    supervisor: Supervisor,
    pipeline: Pipeline,
    writes: WriteDoor,
) -> SparkplugNode | None:
    settings = config.north.sparkplug
    if settings is None:
        return None
    # aiomqtt and protobuf are loaded only by gateways that publish north.
    from edge.north.sparkplug_metrics import configured_datatypes  # noqa: PLC0415
    from edge.north.sparkplug_node import NodeInputs, SparkplugNode  # noqa: PLC0415

    inputs = NodeInputs(
        outbox=outbox,
        devices=lambda: {name: slot.healthy for name, slot in supervisor.slots.items()},
        latest=lambda: pipeline.latest,
        datatypes=configured_datatypes(config.devices),
        state_dir=config.gateway.state_dir,
        writes=writes,
    )
    return SparkplugNode(settings=settings, inputs=inputs)


def _uns_publisher(rt: Runtime) -> UnsPublisher | None:
    config = rt.config.current
    settings = config.north.uns
    if settings is None:
        return None
    from edge.north.uns import UnsPublisher  # noqa: PLC0415 - aiomqtt, only when configured

    paths = {d.name: AssetPath.parse(d.path) for d in config.devices if d.path is not None}
    return UnsPublisher(settings=settings, latest=rt.pipeline.latest.readings, paths=paths)


def outbox_settings(config: AgentConfig) -> OutboxSettings:
    """The outbox's settings from the config (every field: the config holds the defaults)."""
    section = config.outbox
    return OutboxSettings(
        quota_bytes=section.quota,
        synchronous=Synchronous(section.synchronous),
        policy=QuotaPolicy(section.when_full),
        lease_timeout_s=section.lease_timeout,
        consumers=(DEFAULT_CONSUMER, *config.north.consumers),
    )


async def run_until_signalled(agent: Agent) -> None:
    """Run the agent until SIGTERM or SIGINT, reloading its config on SIGHUP (the `tagway run`
    entry point)."""
    import signal  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig, action in ((signal.SIGTERM, stop.set), (signal.SIGINT, stop.set),
                        (signal.SIGHUP, agent.reload_requested.set)):  # fmt: skip
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, action)
    await agent.run(stop)
