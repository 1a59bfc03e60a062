"""`Plant`: the model and its protocol servers, as one async context manager.

    async with Plant(PlantConfig(devices=4, seed=7)) as plant:
        plant.ports            # {"modbus": {"pump1": 40123, ...}, "opcua": 4840x, "control": ...}
        plant.served_devices() # what is served where, as plain data (the config contract)

Background work (the clock, the link watcher, OPC UA publishing, MQTT devices, the control API)
runs as named tasks in one TaskGroup that lives as long as the context.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from firmware_sim.control import ControlApi
from firmware_sim.faults import ActiveFault, Fault, scenario_faults
from firmware_sim.inventory import served_devices
from firmware_sim.modbus_server import Framing, ModbusPlantServer
from firmware_sim.mqtt_devices import MqttPlantDevices
from firmware_sim.opcua_server import OpcuaPlantServer
from firmware_sim.simulation import MAX_DEVICES, PlantModel


class PlantConfig(BaseModel):
    """Everything the plant can be asked to be; the CLI flags map onto these fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: int = Field(default=4, ge=1, le=MAX_DEVICES)
    tags_per_device: int | None = Field(default=None, ge=1, le=30_000)
    seed: int = 1
    tick_s: float | None = Field(default=0.5, gt=0)
    time_scale: float = Field(default=1.0, gt=0, le=3600)
    host: str = "127.0.0.1"
    modbus: bool = True
    modbus_port: int = Field(default=0, ge=0, le=65535)
    modbus_framing: Framing = "socket"
    modbus_frames: bool = False  # frozen registers from prepared responses (benchmarks)
    opcua: bool = True
    opcua_port: int = Field(default=0, ge=0, le=65535)
    opcua_security: Literal["none", "basic256sha256"] = "none"
    opcua_cert_dir: Path | None = None
    opcua_trust_dir: Path | None = None
    opcua_publish_s: float = Field(default=0.25, gt=0)
    mqtt_url: str | None = None
    mqtt_interval_s: float = Field(default=1.0, gt=0)
    mqtt_batch: int = Field(default=1, ge=1, le=1000)
    mqtt_topic_prefix: str = "plant"
    control_port: int | None = Field(default=0, ge=0, le=65535)
    scenario: str = "normal"


class Plant:
    """The simulated plant, served on real sockets while the context is open."""

    def __init__(self, config: PlantConfig | None = None, **options: Any) -> None:
        """Take a `PlantConfig`, or its fields as keyword arguments."""
        self.config = config or PlantConfig(**options)
        self.model = PlantModel(
            devices=self.config.devices,
            tags_per_device=self.config.tags_per_device,
            seed=self.config.seed,
        )
        self.modbus: ModbusPlantServer | None = None
        self.opcua: OpcuaPlantServer | None = None
        self.mqtt: MqttPlantDevices | None = None
        self.control: ControlApi | None = None
        self._jobs: list[tuple[Coroutine[Any, Any, None], str]] = []
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self.apply_scenario(self.config.scenario)
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        # One runner task owns the TaskGroup, so the context may be entered in one task and left
        # in another (as test fixtures do) and a failing job still takes its siblings down.
        self._runner = asyncio.create_task(self._run(), name="sim-plant")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        cfg = self.config
        if cfg.modbus:
            self.modbus = ModbusPlantServer(
                model=self.model,
                host=cfg.host,
                base_port=cfg.modbus_port,
                framing=cfg.modbus_framing,
                frames=cfg.modbus_frames,
            )
            await self.modbus.start()
            self._spawn(self.modbus.watch_links(), "sim-modbus-links")
        if cfg.opcua:
            self.opcua = OpcuaPlantServer(
                model=self.model,
                host=cfg.host,
                port=cfg.opcua_port,
                security=cfg.opcua_security,
                cert_dir=cfg.opcua_cert_dir,
                trust_dir=cfg.opcua_trust_dir,
            )
            await self.opcua.start()
            self._spawn(self.opcua.run(cfg.opcua_publish_s), "sim-opcua-publish")
            self._spawn(self.opcua.watch_link(), "sim-opcua-link")
        if cfg.mqtt_url is not None:
            self.mqtt = MqttPlantDevices(
                model=self.model,
                url=cfg.mqtt_url,
                interval_s=cfg.mqtt_interval_s,
                batch=cfg.mqtt_batch,
                topic_prefix=cfg.mqtt_topic_prefix,
            )
            self._spawn(self.mqtt.run(), "sim-mqtt")
        if cfg.tick_s is not None:
            self._spawn(self._clock(cfg.tick_s, cfg.time_scale), "sim-clock")
        if cfg.control_port is not None:
            self.control = ControlApi(self, host=cfg.host, port=cfg.control_port)
            await self.control.start()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._jobs.append((coro, name))

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for coro, name in self._jobs:
                tasks.create_task(coro, name=name)
            self._jobs.clear()

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        for coro, _ in self._jobs:
            coro.close()  # never started: the plant failed before running
        self._jobs.clear()
        if self.control is not None:
            await self.control.stop()
        if self.modbus is not None:
            await self.modbus.stop()
        if self.opcua is not None:
            await self.opcua.stop()

    async def _clock(self, tick_s: float, time_scale: float) -> None:
        # Fixed simulated steps (not measured wall time) keep a free-running plant's physics
        # identical to a stepped one; `time_scale` runs minutes of wear in seconds for demos.
        # Steps keep a fixed rate (deadlines, not sleeps after the work), so a busy simulator
        # still makes 1 / tick_s steps a second; a step that is late is not made up twice.
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline = max(deadline + tick_s, loop.time())
            await asyncio.sleep(deadline - loop.time())
            self.step(tick_s * time_scale)

    async def wait(self) -> None:
        """Return when the plant's background work ends; raises what made it fail."""
        if self._runner is None:
            raise RuntimeError("the plant is not running")
        await asyncio.shield(self._runner)

    def step(self, dt: float) -> None:
        """Advance the plant by `dt` simulated seconds (tests with `tick_s=None` call this)."""
        self.model.step(dt)
        if self.opcua is not None:
            self.opcua.stepped()

    @property
    def ports(self) -> dict[str, Any]:
        """Bound ports: Modbus per device, OPC UA, control API."""
        ports: dict[str, Any] = {}
        if self.modbus is not None:
            ports["modbus"] = {name: dev.port for name, dev in self.modbus.devices.items()}
        if self.opcua is not None:
            ports["opcua"] = self.opcua.port
        if self.control is not None:
            ports["control"] = self.control.port
        return ports

    def add_fault(self, fault: Fault) -> ActiveFault:
        """Put a fault in force now."""
        return self.model.add_fault(fault)

    def apply_scenario(self, name: str) -> list[ActiveFault]:
        """Put the named scenario's faults in force (those on devices this plant has)."""
        faults = [
            f
            for f in scenario_faults(name)
            if getattr(f, "device", None) in (None, *self.model.devices)
        ]
        return [self.model.add_fault(fault) for fault in faults]

    def clear_faults(self, fault_id: int | None = None) -> None:
        """End one fault, or all."""
        self.model.clear_faults(fault_id)

    def request_counts(self) -> dict[str, dict[int, int]]:
        """Modbus requests received per device and function code."""
        return self.modbus.request_counts() if self.modbus is not None else {}

    def counters(self) -> dict[str, Any]:
        """What was served: Modbus requests, MQTT publishes, OPC UA changes (JSON-ready)."""
        return {
            "modbus": {
                device: {str(fc): n for fc, n in sorted(counts.items())}
                for device, counts in self.request_counts().items()
            },
            "mqtt": self.mqtt.publish_counts() if self.mqtt is not None else {},
            "opcua": {
                "changes_published": self.opcua.changes_published if self.opcua is not None else 0
            },
        }

    def reset_counters(self) -> None:
        """Start every count from zero."""
        if self.modbus is not None:
            self.modbus.reset_counts()
        if self.mqtt is not None:
            for device in self.mqtt.devices.values():
                device.published.clear()
        if self.opcua is not None:
            self.opcua.changes_published = 0

    def served_devices(self) -> list[dict[str, Any]]:
        """What is served where, as plain data (see `firmware_sim.inventory`)."""
        return served_devices(self)
