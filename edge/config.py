"""The agent's configuration: one YAML file, validated by pydantic at load.

    gateway:   name, state directory
    cloud:     URL and uplink limits (the identity comes from `tagway provision`)
    outbox:    path, quota, synchronous mode, policy when full, flush interval
    report:    the default report-by-exception (deadband, heartbeat)
    mqtt_broker: the embedded broker local devices publish into (optional)
    devices:   Modbus, OPC UA and MQTT sources; tags carry the driver's fields plus
               `deadband`, `deadband_percent` and `heartbeat`, and for writable tags the
               limits `min`/`max` or `allowed`, and `max_rate`
    derived:   tags computed from expressions
    models:    ONNX models over windows of tags, with an optional alarm threshold
    alarms:    local alarm rules
    notifications: alarm notification hooks (a webhook or a command on raise/clear/ack)
    local_api: where the TUI and `tagway status` reach the agent
    fleet:     remote configuration (cloud- or locally managed, probation) and status reports
    north:     publishers besides the cloud uplink (the Sparkplug B edge node)
    clock:     the plausible window of source timestamps, the default `clock_fault`, and the
               probe of the gateway's own clock synchronization

Unknown keys are errors everywhere. After `load_config` only these frozen objects travel.
"""

from __future__ import annotations

import ipaddress
import re
from functools import partial
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge.alarms import AlarmKind, Severity
from edge.assets import AssetPath
from edge.clock import ClockFault, ClockWindow
from edge.config_checks import config_problems
from edge.config_compact import compact_models
from edge.config_loader import DUPLICATE_NAMES, ConfigError, ConfigIssue, load_model, parse_model
from edge.north.config import NorthSection
from edge.pipeline.expressions import Expression, ExpressionError
from protocols.modbus.config import ModbusDeviceConfig, ModbusTag
from protocols.mqtt.config import EmbeddedBrokerConfig, MqttSourceConfig
from protocols.opcua.config import OpcUaDeviceConfig, OpcUaTag

__all__ = ["AgentConfig", "ConfigError", "ConfigIssue", "load_config", "parse_config"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like ``512MiB`` or ``2 GB``."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size; write bytes or e.g. '512MiB', '2GB'")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


class Reporting(BaseModel):
    """Report-by-exception settings of a tag (or the default for all tags).

    `deadband` is absolute, `deadband_percent` relative to the last reported value; a value that
    moved less is not sent again until `heartbeat` seconds have passed. `every_reading` sends all.
    """

    model_config = _FROZEN

    deadband: float = Field(default=0.0, ge=0)
    deadband_percent: float = Field(default=0.0, ge=0, le=100)
    heartbeat: float = Field(default=60.0, ge=0, description="seconds; 0 disables")
    every_reading: bool = False


class _TagReporting(BaseModel):
    deadband: float | None = Field(default=None, ge=0)
    deadband_percent: float | None = Field(default=None, ge=0, le=100)
    heartbeat: float | None = Field(default=None, ge=0)


class GatewaySection(BaseModel):
    """Who this gateway is and where it keeps its state."""

    model_config = _FROZEN

    name: str = Field(min_length=1, max_length=200)
    state_dir: Path = Path("/var/lib/tagway")


class CloudSection(BaseModel):
    """Where the uplink sends; the identity (gateway id, key, certificate) is in the state dir."""

    model_config = _FROZEN

    url: str = Field(pattern=r"^https?://")
    gateway_id: str | None = Field(
        default=None, description="with token_file only: the id the token was issued for"
    )
    max_batch_bytes: int = Field(default=1_000_000, gt=0)
    max_batches_per_s: float = Field(default=20.0, ge=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    retry_max_delay: float = Field(
        default=30.0, gt=0, le=3600, description="cap of the jittered backoff between retries"
    )
    token_file: Path | None = Field(
        default=None, description="a static gateway token instead of the provisioned identity"
    )


class OutboxSection(BaseModel):
    """The durable buffer between the pipeline and the uplink."""

    model_config = _FROZEN

    path: Path | None = None  # default: <state_dir>/outbox.db
    quota: int = 1024**3
    synchronous: Literal["full", "normal"] = "full"
    when_full: Literal["drop_oldest", "reject_new"] = "drop_oldest"
    flush_interval: float = Field(default=0.25, gt=0, le=10)
    chunk_readings: int = Field(default=5_000, gt=0, le=100_000)
    lease_timeout: float = Field(default=120.0, gt=0)

    @field_validator("quota", mode="before")
    @classmethod
    def _size(cls, value: int | str) -> int:
        return parse_size(value)


class FleetSection(BaseModel):
    """Remote configuration: who manages this gateway's config, and how a new one proves itself.

    `managed_by: cloud` applies the versions the cloud sends (and reports a local edit as
    drift); `local` refuses them until an installer runs `tagway config pull`. A new config has
    `probation` seconds to reconnect the devices that were connected and connect the ones it
    adds, and to reach the cloud; otherwise the previous one comes back. The status document
    goes to the cloud when something changes and at least every `status_interval` seconds.
    """

    model_config = _FROZEN

    managed_by: Literal["local", "cloud"] = "local"
    probation: float = Field(default=60.0, gt=0, le=3600)
    status_interval: float = Field(default=60.0, ge=5, le=3600)


class LocalApiSection(BaseModel):
    """The agent's local HTTP API for the TUI and the CLI (loopback or a unix socket only)."""

    model_config = _FROZEN

    host: Literal["127.0.0.1", "::1", "localhost"] = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    socket: Path | None = None

    def url(self, port: int | None = None) -> str:
        """The API's HTTP URL on `port` (the configured one by default), an IPv6 host in
        brackets (``http://[::1]:8470``)."""
        return http_url(self.host, self.port if port is None else port)


def http_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets (``http://[::1]:8470``)."""
    try:
        ipv6 = ipaddress.ip_address(host).version == 6
    except ValueError:  # a name
        ipv6 = False
    return f"http://[{host}]:{port}" if ipv6 else f"http://{host}:{port}"


SetpointLimit = bool | int | float | str


class WriteLimits(BaseModel):
    """The limits a write to a tag must respect (see `edge.writes`).

    A tag is writable only with `writable: true` and limits: `min` and `max` for numbers,
    `allowed` for anything else (or discrete numbers). `max_rate` caps the writes per minute
    to the tag, wherever they come from.
    """

    min: float | None = None
    max: float | None = None
    allowed: tuple[SetpointLimit, ...] | None = Field(default=None, min_length=1)
    max_rate: float | None = Field(default=None, gt=0, description="writes per minute")

    @model_validator(mode="after")
    def _limits_fit(self) -> Self:
        if (self.min is None) != (self.max is None):
            raise ValueError("fields 'min' and 'max' go together (a write needs both limits)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"field 'min' ({self.min}) is above 'max' ({self.max})")
        return self

    @property
    def limited(self) -> bool:
        """True when the tag has limits a write can be checked against."""
        return self.min is not None or self.allowed is not None


class EdgeModbusTag(ModbusTag, _TagReporting, WriteLimits):
    """A Modbus tag with its report-by-exception settings and write limits."""


class EdgeOpcUaTag(OpcUaTag, _TagReporting, WriteLimits):
    """An OPC UA tag with its report-by-exception settings and write limits."""


class _Placed(BaseModel):
    """A device's optional place in the ISA-95 hierarchy (`edge.assets`)."""

    path: str | None = Field(default=None, description="enterprise/site/area/line/cell")

    @field_validator("path")
    @classmethod
    def _asset_path(cls, value: str | None) -> str | None:
        return None if value is None else str(AssetPath.parse(value))


class ClockSection(BaseModel):
    """Plausible source timestamps, and how the gateway learns whether its own clock is right.

    A source timestamp more than `max_ahead` seconds ahead of the gateway clock, or older than
    `max_age_days` (the cloud's own limit, 400 days by default), is a clock fault, handled by the
    device's `clock_fault` (default here): restamp, keep or bad.
    """

    model_config = _FROZEN

    max_ahead: float = Field(default=600.0, gt=0, description="seconds ahead of the gateway clock")
    max_age_days: float = Field(default=400.0, gt=0, description="the cloud's max_age_days")
    clock_fault: ClockFault = ClockFault.RESTAMP
    sync_command: tuple[str, ...] = ("timedatectl", "show", "-p", "NTPSynchronized", "--value")
    sync_interval: float = Field(default=60.0, gt=0, description="seconds between clock probes")

    def window(self) -> ClockWindow:
        """The window in microseconds."""
        return ClockWindow(
            max_ahead_us=round(self.max_ahead * 1_000_000),
            max_age_us=round(self.max_age_days * 86_400 * 1_000_000),
        )


class _DeviceClock(BaseModel):
    clock_fault: ClockFault | None = Field(
        default=None, description="restamp | keep | bad; default: clock.clock_fault"
    )


class ModbusDevice(ModbusDeviceConfig, _Placed, _DeviceClock):
    """A Modbus device (TCP, RTU, or RTU over TCP)."""

    protocol: Literal["modbus"]
    tags: tuple[EdgeModbusTag, ...] = Field(min_length=1)


class OpcUaDevice(OpcUaDeviceConfig, _Placed, _DeviceClock):
    """An OPC UA server."""

    protocol: Literal["opcua"]
    tags: tuple[EdgeOpcUaTag, ...] = Field(min_length=1)


class MqttSource(MqttSourceConfig, _Placed, _DeviceClock):
    """An MQTT broker (the embedded one or an external one) and the topics to read; its `path`
    places the devices whose readings carry the source's own name."""

    protocol: Literal["mqtt"]


Device = Annotated[ModbusDevice | OpcUaDevice | MqttSource, Field(discriminator="protocol")]


class DerivedSection(BaseModel):
    """A tag computed from other tags of the same device."""

    model_config = _FROZEN

    device: str
    tag: str
    expression: str
    unit: str | None = None

    @field_validator("expression")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            Expression.parse(value)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from exc
        return value


class ModelAlarm(BaseModel):
    """Raise an alarm when a model's first output exceeds `threshold`, not before its first
    score (its window is full) plus `warm_up` seconds: a plant starting up is not an anomaly."""

    model_config = _FROZEN

    threshold: float
    severity: Severity = Severity.HIGH
    on_delay: float = Field(default=0.0, ge=0)
    message: str = ""
    warm_up: float = Field(
        default=60.0, ge=0,
        description="seconds from the model's first score (a full window) before it may alarm",
    )  # fmt: skip


class ModelSection(BaseModel):
    """An ONNX model over windows of tags. `path` is relative to the config file."""

    model_config = _FROZEN

    name: str
    path: Path
    devices: tuple[str, ...] = Field(min_length=1)
    inputs: tuple[str, ...] = Field(min_length=1)
    window: int = Field(default=1, ge=1)
    hop: int = Field(default=1, ge=1)
    outputs: tuple[str, ...] = ("score",)
    alarm: ModelAlarm | None = None


_LIMITED = frozenset({AlarmKind.HIGH, AlarmKind.LOW, AlarmKind.RATE})


class AlarmSection(BaseModel):
    """A local alarm rule."""

    model_config = _FROZEN

    name: str
    device: str
    tag: str
    kind: AlarmKind
    limit: float | None = Field(default=None, description="high, low and rate: required")
    hysteresis: float = Field(default=0.0, ge=0)
    on_delay: float = Field(default=0.0, ge=0)
    stale: float = Field(default=0.0, ge=0)
    severity: Severity = Severity.MEDIUM
    message: str = ""

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.kind in _LIMITED and self.limit is None:
            raise ValueError(f"alarm {self.name!r}: kind '{self.kind}' needs 'limit'")
        if self.kind is AlarmKind.STALE and self.stale <= 0:
            raise ValueError(f"alarm {self.name!r}: kind 'stale' needs 'stale' (seconds) > 0")
        if self.kind is AlarmKind.BAD_QUALITY and self.on_delay <= 0:
            raise ValueError(f"alarm {self.name!r}: kind 'bad_quality' needs 'on_delay' > 0")
        return self


class NotifyHook(BaseModel):
    """Where an alarm transition is announced: a webhook (`url`) or a command run with the
    alarm as JSON on stdin and in `TAGWAY_ALARM_*` variables. Delivered at least once, in order,
    from a queue in the state directory, retried until it succeeds."""

    model_config = _FROZEN

    name: str = Field(min_length=1, max_length=64)
    url: str | None = Field(default=None, pattern=r"^https?://")
    command: tuple[str, ...] | None = Field(default=None, min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    on: tuple[Literal["raised", "cleared", "acked"], ...] = ("raised", "cleared")
    min_severity: Severity = Severity.LOW
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.url is None) == (self.command is None):
            raise ValueError(f"notification {self.name!r}: give either 'url' or 'command'")
        return self


def _duplicates(message: str) -> PydanticCustomError:
    # A type of its own: the loader's checks report each repeat at its own line instead.
    return PydanticCustomError(DUPLICATE_NAMES, message)


class AgentConfig(BaseModel):
    """The whole agent configuration."""

    model_config = _FROZEN

    gateway: GatewaySection
    cloud: CloudSection | None = None
    outbox: OutboxSection = OutboxSection()
    report: Reporting = Reporting()
    mqtt_broker: EmbeddedBrokerConfig | None = None
    devices: tuple[Device, ...] = ()
    derived: tuple[DerivedSection, ...] = ()
    models: tuple[ModelSection, ...] = ()
    alarms: tuple[AlarmSection, ...] = ()
    notifications: tuple[NotifyHook, ...] = ()
    local_api: LocalApiSection = LocalApiSection()
    fleet: FleetSection = FleetSection()
    north: NorthSection = NorthSection()
    clock: ClockSection = ClockSection()

    @field_validator("devices", "derived", "models", "alarms", "notifications", mode="before")
    @classmethod
    def _empty_section(cls, value: object) -> object:
        return () if value is None else value  # a section left with only comments in it

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [d.name for d in self.devices]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise _duplicates(f"device names must be unique; repeated: {duplicates}")
        alarm_names = [a.name for a in self.alarms] + [
            f"{m.name}.{d}" for m in self.models if m.alarm for d in m.devices
        ]
        repeated = sorted({n for n in alarm_names if alarm_names.count(n) > 1})
        if repeated:
            raise _duplicates(f"alarm names must be unique; repeated: {repeated}")
        hooks = [h.name for h in self.notifications]
        twice = sorted({n for n in hooks if hooks.count(n) > 1})
        if twice:
            raise _duplicates(f"notification names must be unique; repeated: {twice}")
        return self

    @model_validator(mode="after")
    def _cloud_identity(self) -> Self:
        cloud = self.cloud
        if cloud is not None and (cloud.token_file is None) != (cloud.gateway_id is None):
            raise ValueError("cloud: 'token_file' and 'gateway_id' go together (or neither)")
        return self

    @property
    def outbox_path(self) -> Path:
        """Where the outbox file lives."""
        return self.outbox.path or self.gateway.state_dir / "outbox.db"

    @property
    def simulated(self) -> bool:
        """True when any device is simulated (the TUI shows a SIMULATED badge)."""
        return any(d.simulated for d in self.devices)


def load_config(path: Path) -> AgentConfig:
    """Load and validate the config file; model paths are resolved against its folder (and
    the model files must be there)."""
    config = load_model(path, AgentConfig, checks=partial(config_problems, base=path.parent))
    return _resolve_paths(config, path.parent)


def parse_config(text: str, *, source: str = "<config>", base: Path | None = None) -> AgentConfig:
    """Validate config text (for tests and `tagway config validate -`); model files are looked
    for only when `base` is given."""
    checks = partial(config_problems, base=base)
    config = parse_model(text, AgentConfig, source=source, checks=checks)
    return _resolve_paths(config, base or Path.cwd())


def _resolve_paths(config: AgentConfig, base: Path) -> AgentConfig:
    # Held for the agent's life: at 100,000 tags, half the tag models' memory is repetition.
    compact_models(tag for device in config.devices for tag in getattr(device, "tags", ()))
    models = tuple(
        m if m.path.is_absolute() else m.model_copy(update={"path": (base / m.path).resolve()})
        for m in config.models
    )
    return config.model_copy(update={"models": models}) if models else config
