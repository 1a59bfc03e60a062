"""The agent: wires drivers through the pipeline into the outbox, and the outbox to the cloud.

One asyncio process. `Agent.run()` opens the outbox, the alarm and dead-letter stores and the
embedded MQTT broker, then runs in one TaskGroup a named task per driver (each restarted with
capped, jittered backoff if it fails; one failing device never stops another), the pipeline's
flusher, the alarm ticker, the uplink and the local API. When `stop` is set (SIGTERM, SIGINT),
drivers stop first, the pipeline flushes what it holds into the outbox, and everything closes.

`reload()` (SIGHUP) reads the config file again and applies it without a restart: only the
drivers of added and changed devices start, only those of removed and changed devices stop, and
the pipeline follows the new deadbands, derived tags and alarm rules (see `edge.reload`).

The supervisor (`_supervise`) is the one place that catches broad exceptions: it logs and counts
what it caught, and restarts the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.alarm_store import AlarmStore
from edge.alarms import AlarmEngine, AlarmEvent
from edge.config import (
    AgentConfig,
    ConfigError,
    Device,
    ModbusDevice,
    MqttSource,
    OpcUaDevice,
    load_config,
)
from edge.dead_letters import DeadLetterStore
from edge.pipeline import settings as stages
from edge.pipeline.derived import DerivedTags
from edge.pipeline.rbe import ReportByException
from edge.pipeline.runner import Pipeline, now_us
from edge.reload import ReloadHistory, ReloadPlan, ReloadRejected, ReloadResult, plan_reload
from edge.sd_notify import SystemdNotifier
from edge.seq_state import SeqState
from edge.uplink import Uplink, UplinkSettings, UplinkStatus
from protocols.backoff import Backoff, BackoffPolicy
from protocols.driver import ConnectionState, Driver
from store_forward import AsyncOutbox, OutboxSettings, OutboxStats, QuotaPolicy, Synchronous

if TYPE_CHECKING:
    from edge.inference.model import InferenceStage
    from protocols.mqtt.broker import EmbeddedBroker

# Drivers, the MQTT broker and onnxruntime are imported where they are first needed: a gateway
# that reads only Modbus does not pay the memory of asyncua, amqtt and onnxruntime (tens of MB).

log = logging.getLogger(__name__)

TokenSource = Callable[[], Awaitable[str]]


def agent_version() -> str:
    """The installed tagway version."""
    try:
        return version("tagway")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(slots=True)
class DriverSlot:
    """One configured device and the driver currently serving it."""

    config: Device
    driver: Driver | None = None
    restarts: int = 0
    crashes: int = 0
    last_crash: str | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        """The device name."""
        return self.config.name

    @property
    def state(self) -> str:
        """The link state, or `stopped` between restarts."""
        return self.driver.link.state.value if self.driver is not None else "stopped"

    @property
    def healthy(self) -> bool:
        """Connected right now."""
        return self.driver is not None and self.driver.link.state is ConnectionState.CONNECTED


@dataclass(frozen=True, slots=True)
class UplinkIdentity:
    """Who the uplink posts as: the gateway id, a source of fresh tokens, and an optional
    maintenance loop the agent runs beside the uplink (certificate rotation)."""

    gateway_id: str
    token: TokenSource
    maintenance: Callable[[], Coroutine[Any, Any, None]] | None = None


class Agent:
    """The gateway agent.

    Args:
        config: the validated configuration.
        identity: the gateway identity for the uplink; None runs without a cloud (store only).
        config_path: the file `config` was loaded from, read again by `reload()`.
        driver_backoff: restart policy for failed drivers.
        notifier: systemd's notify socket (readiness, watchdog, stopping); by default the one
            the environment names, a no-op outside systemd.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        identity: UplinkIdentity | None = None,
        config_path: Path | None = None,
        driver_backoff: BackoffPolicy | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.config_path = config_path
        self.reloads = ReloadHistory()
        self.reload_requested = asyncio.Event()  # set by SIGHUP; a reload runs, then it clears
        self.version = agent_version()
        self.started_at = time.time()
        self.slots = {d.name: DriverSlot(d) for d in config.devices}
        self._driver_backoff = driver_backoff or BackoffPolicy(base=1.0, cap=30.0)
        self.outbox: AsyncOutbox | None = None
        self.pipeline: Pipeline | None = None
        self.uplink: Uplink | None = None
        self.dead_letters: DeadLetterStore | None = None
        self.broker: EmbeddedBroker | None = None
        self.ready = asyncio.Event()
        self._inference: InferenceStage | None = None
        self._notifier = notifier if notifier is not None else SystemdNotifier.from_environ()
        self._tasks: asyncio.TaskGroup | None = None
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._reload_lock = asyncio.Lock()

    @property
    def uplink_status(self) -> UplinkStatus | None:
        """The uplink's figures, or None when no cloud is configured."""
        return self.uplink.status if self.uplink is not None else None

    async def outbox_stats(self) -> OutboxStats | None:
        """A snapshot of the outbox, or None before it is open."""
        return await self.outbox.stats() if self.outbox is not None else None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then stop drivers, flush, and close everything."""
        state_dir = self.config.gateway.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        async with AsyncExitStack() as stack:
            self.outbox = await stack.enter_async_context(
                AsyncOutbox(self.config.outbox_path, _outbox_settings(self.config))
            )
            if self.outbox.recovery is not None:
                log.error("outbox was damaged and moved aside: %s", self.outbox.recovery)
            # This process is the outbox's only owner: leases left by a previous life (killed
            # mid-upload) are released now rather than after their timeout.
            stale = await self.outbox.forget_leases()
            if stale:
                log.warning("released %d leases left by a previous run", stale)
            alarm_store = AlarmStore(state_dir / "alarms.db")
            stack.callback(alarm_store.close)
            self.dead_letters = DeadLetterStore(state_dir / "dead_letters.db")
            stack.callback(self.dead_letters.close)
            if self.config.mqtt_broker is not None:
                from protocols.mqtt.broker import EmbeddedBroker  # noqa: PLC0415 - see the top

                self.broker = await stack.enter_async_context(
                    EmbeddedBroker(self.config.mqtt_broker)
                )
            self.pipeline = self._build_pipeline(alarm_store)
            stack.callback(self._close_inference)
            if self.config.cloud is not None and self.identity is not None:
                self.uplink = self._build_uplink()
            await self._run_tasks(stop)

    def _close_inference(self) -> None:
        if self._inference is not None:
            self._inference.close()

    async def _run_tasks(self, stop: asyncio.Event) -> None:
        assert self.pipeline is not None  # built by run()  # noqa: S101
        from edge.local_api import LocalApi  # noqa: PLC0415 - local_api imports this module

        api = LocalApi(self)
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            for slot in self.slots.values():
                self._start_driver(slot)
            flusher = tg.create_task(self.pipeline.run(), name="pipeline")
            ticker = tg.create_task(self._tick_alarms(), name="alarms")
            reloader = tg.create_task(self._reload_when_requested(), name="reload")
            rest = [
                tg.create_task(api.serve(), name="local-api"),
                tg.create_task(self._notifier.feed_watchdog(), name="watchdog"),
            ]
            if self.uplink is not None:
                rest.append(tg.create_task(self._run_uplink(self.uplink), name="uplink"))
            if self.identity is not None and self.identity.maintenance is not None:
                rest.append(tg.create_task(self.identity.maintenance(), name="identity"))
            await api.started.wait()
            self.ready.set()
            log.info("agent %s running: %d devices", self.config.gateway.name, len(self.slots))
            self._notifier.ready(f"running: {len(self.slots)} devices")
            await stop.wait()
            self._notifier.stopping()
            reloader.cancel()  # no reload starts a driver once stopping has begun
            await asyncio.gather(reloader, return_exceptions=True)
            log.info("stopping: drivers first, then a last flush into the outbox")
            await self._stop_drivers(tuple(self._drivers))
            flusher.cancel()  # its finally flushes what the drivers delivered
            await asyncio.gather(flusher, return_exceptions=True)
            ticker.cancel()
            api.stop()
            for task in rest:
                if task.get_name() != "local-api":
                    task.cancel()

    def _start_driver(self, slot: DriverSlot) -> None:
        assert self._tasks is not None  # noqa: S101 - set by _run_tasks
        task = self._tasks.create_task(self._supervise(slot), name=f"driver:{slot.name}")
        self._drivers[slot.name] = task

    async def _stop_drivers(self, names: tuple[str, ...]) -> None:
        """Stop these devices' drivers as shutdown does: cancel, and wait until they closed."""
        tasks = [self._drivers.pop(name) for name in names]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reload(self) -> ReloadResult:
        """Read the config file again and apply what changed (SIGHUP, `systemctl reload`).

        A file that does not validate changes nothing: the loader's message is logged, counted
        and shown by the local API, and the running config stays. The result is also kept in
        `reloads.last`.
        """
        if self.config_path is None or self.pipeline is None:
            raise RuntimeError("reload needs a running agent started from a config file")
        async with self._reload_lock:
            self._notifier.reloading()
            result = await self._reload_from(self.config_path)
            self._notifier.ready(f"running: {len(self.slots)} devices")
            return self.reloads.record(result)

    async def _reload_when_requested(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()  # signals that arrive meanwhile make one more reload
            if self.config_path is None:
                log.warning("reload requested, but this agent was not started from a file")
                continue
            await self.reload()

    async def _reload_from(self, path: Path) -> ReloadResult:
        at = time.time()
        try:
            plan = plan_reload(self.config, load_config(path))
        except ConfigError as exc:
            error = "; ".join(str(issue) for issue in exc.issues)
        except ReloadRejected as exc:
            error = f"{path}: {exc}"
        else:
            await self._apply(plan)
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

    async def _apply(self, plan: ReloadPlan) -> None:
        assert self.pipeline is not None  # noqa: S101 - reload() checked
        changes, config = plan.devices, plan.config
        await self._stop_drivers(changes.restarted)
        await self.pipeline.flush()  # what the stopped drivers delivered is committed now
        stages.reconfigure(self.pipeline, config, forget=changes.restarted)
        self.config = config
        for name in changes.removed:
            del self.slots[name]
        devices = {d.name: d for d in config.devices}
        for name in changes.changed + changes.added:
            self.slots[name] = DriverSlot(devices[name])
            self._start_driver(self.slots[name])

    async def _supervise(self, slot: DriverSlot) -> None:
        """Run one driver forever; restart it with backoff when it fails."""
        assert self.pipeline is not None  # noqa: S101
        backoff = Backoff(self._driver_backoff)
        while True:
            driver = self._build_driver(slot.config)
            slot.driver = driver
            started = time.monotonic()
            try:
                async with driver:
                    await driver.run(self.pipeline.accept)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the supervisor is where failures stop
                slot.crashes += 1
                slot.last_crash = f"{type(exc).__name__}: {exc}"
                log.exception("driver %s failed; restarting", slot.name)
            if time.monotonic() - started > 60:
                backoff.reset()  # it ran a good while: a fresh failure starts small again
            await asyncio.sleep(backoff.next_delay())
            slot.restarts += 1

    def _build_driver(self, device: Device) -> Driver:
        if isinstance(device, ModbusDevice):
            from protocols.modbus.driver import ModbusDriver  # noqa: PLC0415 - see the top

            return ModbusDriver(device)
        if isinstance(device, OpcUaDevice):
            from protocols.opcua.driver import OpcUaDriver  # noqa: PLC0415

            return OpcUaDriver(device)
        assert isinstance(device, MqttSource)  # noqa: S101 - the union has three members
        assert self.dead_letters is not None  # noqa: S101
        from protocols.mqtt.driver import MqttDriver  # noqa: PLC0415

        return MqttDriver(device, dead_letters=self.dead_letters.put)

    def _build_pipeline(self, alarm_store: AlarmStore) -> Pipeline:
        config = self.config
        simulated = {d.name: d.simulated for d in config.devices}
        self._inference = _inference_stage(config, simulated) if config.models else None
        engine = AlarmEngine(stages.alarm_rules(config), alarm_store.load())

        async def persist(events: list[AlarmEvent]) -> None:
            # The engine in use now: a reload may have replaced the one built here.
            alarms = self.pipeline.alarms.alarms if self.pipeline is not None else engine.alarms
            alarm_store.save(alarms[e.rule] for e in events if e.rule in alarms)
            if self.uplink is not None:
                self.uplink.wake.set()

        return Pipeline(
            outbox=self._require_outbox(),
            rbe=ReportByException(
                stages.deadbands(config), default=stages.default_deadband(config.report)
            ),
            derived=DerivedTags(stages.derived_tags(config)),
            inference=self._inference,
            alarms=engine,
            on_alarms=persist,
            flush_interval=config.outbox.flush_interval,
            chunk_readings=config.outbox.chunk_readings,
        )

    def _require_outbox(self) -> AsyncOutbox:
        if self.outbox is None:
            raise RuntimeError("the outbox is not open")
        return self.outbox

    def _build_uplink(self) -> Uplink:
        cloud, identity = self.config.cloud, self.identity
        assert cloud is not None  # noqa: S101
        assert identity is not None  # noqa: S101
        settings = UplinkSettings(
            ingest_url=cloud.url.rstrip("/") + "/v1/ingest",
            gateway_id=identity.gateway_id,
            max_batch_bytes=cloud.max_batch_bytes,
            max_batches_per_s=cloud.max_batches_per_s,
            connect_timeout_s=cloud.connect_timeout,
            read_timeout_s=cloud.read_timeout,
            backoff=BackoffPolicy(base=0.5, cap=cloud.retry_max_delay),
        )
        seq = SeqState.load(self.config.gateway.state_dir / "uplink_seq.json")
        return Uplink(settings=settings, outbox=self._require_outbox(), token=identity.token,
                      seq_state=seq)  # fmt: skip

    async def _run_uplink(self, uplink: Uplink) -> None:
        assert self.pipeline is not None  # noqa: S101

        async def wake_on_flush() -> None:
            while True:
                await self.pipeline.flushed.wait()  # type: ignore[union-attr]
                self.pipeline.flushed.clear()  # type: ignore[union-attr]
                uplink.wake.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(wake_on_flush(), name="uplink-wake")
            tg.create_task(uplink.run(), name="uplink-send")

    async def _tick_alarms(self) -> None:
        assert self.pipeline is not None  # noqa: S101
        while True:
            await asyncio.sleep(1.0)
            await self.pipeline.tick_alarms(now_us())

    async def write(self, device: str, tag: str, value: float | int | bool | str) -> None:
        """Write a setpoint through the device's running driver."""
        slot = self.slots.get(device)
        if slot is None or slot.driver is None:
            raise LookupError(f"device {device!r} is not running")
        await slot.driver.write(tag, value)


def _inference_stage(config: AgentConfig, simulated: dict[str, bool]) -> InferenceStage:
    from edge.inference.model import InferenceStage, ModelSpec  # noqa: PLC0415 - see the top

    return InferenceStage([
        ModelSpec(m.name, m.path, m.devices, m.inputs, m.window, m.hop, m.outputs,
                  any(simulated.get(d, False) for d in m.devices))
        for m in config.models
    ])  # fmt: skip


def _outbox_settings(config: AgentConfig) -> OutboxSettings:
    section = config.outbox
    return OutboxSettings(
        quota_bytes=section.quota,
        synchronous=Synchronous(section.synchronous),
        policy=QuotaPolicy(section.when_full),
        lease_timeout_s=section.lease_timeout,
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
