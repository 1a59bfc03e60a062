"""The local API's contract: one pydantic model per answer, shared by the agent and its clients.

The local API declares these as `response_model` (so its OpenAPI, served at `/docs` and
`/openapi.json`, is this module), and the TUI and every `tagway` command that talks to the agent
parse the answers with them. Changing a field is a type error in every user, not a broken screen.

Rules for changing it (other engineers add fields here):
- A new field gets a default, so a newer client still reads an older agent.
- Answers ignore fields they do not know (`extra="ignore"`), so an older client reads a newer
  agent. Requests forbid unknown fields: a typo in a write must not be silently dropped.
- A new answer is a new model here plus the route's `response_model`; derived views a client
  computes (`Outbox.backlog_readings`) are properties on the model, not repeated per client.

Routes::

    GET  /health                      Health (503 when degraded, same body)
    GET  /v1/gateway                  Gateway
    GET  /v1/drivers                  list[Driver]
    GET  /v1/tags                     list[TagValue]   (?device=&tag=)
    GET  /v1/alarms                   list[Alarm];  POST /v1/alarms/{name}/ack -> AckResult
                                      (token)
    POST /v1/alarms/{name}/shelve     ShelveRequest -> Shelved;  DELETE it -> Unshelved
    GET  /v1/alarms-shelving          list[ShelvingAction]  (the audit, newest first; ?limit=)
    GET  /v1/notifications            list[NotificationHook]
    GET  /v1/outbox                   Outbox;  POST /v1/outbox/requeue-quarantine -> Requeued
    GET  /v1/uplink                   Uplink
    GET  /v1/sparkplug                Sparkplug
    GET  /v1/dead-letters             DeadLetters      (?limit=)
    POST /v1/write                    WriteRequest -> WriteResult  (token; 409 refused, 502)
    GET  /v1/writes                   list[WriteAudit]  (?device=&limit=)
    GET  /v1/config/remote            RemoteConfig
    POST /v1/config/pull              ConfigTrial   (take the cloud's version now; 409, 502)
    POST /v1/config/push              ConfigPushed  (the file becomes the cloud's version)
    GET  /v1/stream                   server-sent events: `reading` (list[TagValue]) and
                                      `alarm` (list[AlarmChange])
    GET  /metrics                     Prometheus text format
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

Value = float | int | bool | str | None
"""A tag value as JSON carries it (null: not a finite number, see `TagValue.reason`)."""

QualityWord = Literal["good", "uncertain", "bad"]

_ANSWER: Final = ConfigDict(frozen=True, extra="ignore")
_REQUEST: Final = ConfigDict(frozen=True, extra="forbid")


class Answer(BaseModel):
    """Base of the answers: frozen, unknown fields ignored."""

    model_config = _ANSWER


# ------------------------------------------------------------------------------------- health


class Health(Answer):
    """`GET /health`: ok, or degraded with the reasons (then HTTP 503)."""

    status: Literal["ok", "degraded", "unknown"] = "unknown"
    problems: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------ gateway


class ReloadOutcome(Answer):
    """One config reload, as `ReloadResult` records it."""

    at: float
    outcome: Literal["applied", "rejected"]
    error: str | None = None
    needs_restart: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


class RemoteConfig(Answer):
    """The config as the cloud manages it (`GET /v1/config/remote`, and in `GET /v1/gateway`).

    `version` is the cloud's version the gateway runs (None: a document of its own, e.g. edited
    on the gateway); `phase` is ``idle`` or where a trial stands (``applying``, ``restarting``,
    ``probation``, with `candidate` the version on trial); `outcome` is the last step reported
    to the cloud (``applied``, ``rolled_back``, ``refused``, ``drift``, ...), with its reason.
    """

    managed_by: Literal["cloud", "local"] = "local"
    version: int | None = None
    digest: str | None = None
    last_good_version: int | None = None
    phase: str = "idle"
    candidate: int | None = None
    outcome: str | None = None
    outcome_version: int | None = None
    reason: str | None = None
    at: float | None = None
    drift: bool = False
    status_reports: int = 0

    @property
    def probation(self) -> str | None:
        """``running``, ``passed`` or ``failed`` for the last version tried, None before any."""
        if self.phase in ("applying", "restarting", "probation"):
            return "running"
        return {"applied": "passed", "rolled_back": "failed"}.get(self.outcome or "")


class ConfigStatus(Answer):
    """The config file and its reloads since start."""

    path: str | None = None
    reloads_applied: int = 0
    reloads_rejected: int = 0
    needs_restart: tuple[str, ...] = ()
    last_reload: ReloadOutcome | None = None
    remote: RemoteConfig | None = None
    """None when the agent has no cloud (nothing is managed remotely)."""


class Clock(Answer):
    """The gateway's own clock: synchronized or not, and what it means for readings."""

    synchronized: bool | None = None  # None: no probe could tell
    source: str = "unknown"  # what answered: timedatectl (or the configured command), adjtimex
    checked_at: float | None = None
    unsynchronized_readings: int = 0  # readings accepted while it was not synchronized


class AuxTask(Answer):
    """One auxiliary task of the agent (uplink, channel, UNS...), restarted when it fails."""

    name: str
    restarts: int = 0
    last_failure: str | None = None


class Gateway(Answer):
    """`GET /v1/gateway`: who this agent is."""

    name: str = "?"
    gateway_id: str | None = None
    version: str = "?"
    simulated: bool = False
    uptime_s: float = 0.0
    clock: Clock = Clock()
    cloud: str | None = None
    config: ConfigStatus = ConfigStatus()
    tasks: tuple[AuxTask, ...] = ()


# ------------------------------------------------------------------------------------ drivers


class Driver(Answer):
    """One device of `GET /v1/drivers`."""

    name: str
    protocol: str = "?"
    state: str = "unknown"
    simulated: bool = False
    since: float | None = None
    reconnects: int = 0
    last_error: str | None = None  # what is wrong now; None while the link is healthy
    last_error_at: float | None = None  # when the last error happened, also after recovery
    recovered_from: str | None = None  # the error the link has since recovered from
    restarts: int = 0
    crashes: int = 0
    counters: Mapping[str, int] = {}
    queue_dropped: int = 0
    """This device's readings the pipeline refused (outbox not accepting, buffer full)."""

    def counter(self, name: str) -> int:
        """A counter by name, 0 when this driver does not keep it."""
        return int(self.counters.get(name, 0))

    @property
    def overruns(self) -> int:
        """Poll cycles that started late because the previous one ran long (overload)."""
        return self.counter("overruns")

    @property
    def lost_readings(self) -> int:
        """Readings of this device dropped and counted: in the driver (queue overflow, dead
        letters) or in the pipeline (`queue_dropped`)."""
        return self.counter("dropped") + self.queue_dropped

    @property
    def overloaded(self) -> bool:
        """The device could not be served in full: overruns or dropped readings."""
        return bool(self.overruns or self.lost_readings)

    def overload_text(self) -> str:
        """`pump1: 12 poll overruns, 0 readings dropped`, the line status and the TUI show."""
        return (f"{self.name}: {self.overruns} poll overruns, {self.lost_readings} readings "
                "dropped")  # fmt: skip


# ------------------------------------------------------------------------------ tags, alarms


class TagValue(Answer):
    """A latest value (`GET /v1/tags`) or a reading of the live stream."""

    device: str
    tag: str
    ts: int  # microseconds since the epoch, UTC
    value: Value = None
    quality: QualityWord = "good"
    unit: str | None = None
    simulated: bool = False
    reason: str | None = None

    @property
    def key(self) -> str:
        """`device.tag`, the name a plant engineer types."""
        return f"{self.device}.{self.tag}"


class Alarm(Answer):
    """One alarm rule and its state (`GET /v1/alarms`)."""

    name: str
    device: str = ""
    tag: str = ""
    kind: str = ""
    severity: str = "medium"
    message: str = ""
    state: str = "normal"  # normal | active | acked | cleared
    active: bool = False
    raised_at: int | None = None
    acked_at: int | None = None
    cleared_at: int | None = None
    value: Value = None
    limit: float | None = None
    """The limit of a `high` or `low` alarm (the TUI draws it on the tag's plot)."""
    shelved_until: int | None = None
    """µs, UTC: shelved (not announced) until then; None when not shelved."""
    shelved_by: str | None = None
    shelve_reason: str | None = None

    @property
    def needs_ack(self) -> bool:
        """Raised (or raised and cleared) and nobody has acknowledged it yet."""
        return self.state in {"active", "cleared"} and self.acked_at is None


class AlarmChange(Answer):
    """An alarm transition of the live stream."""

    rule: str
    device: str = ""
    tag: str = ""
    kind: str = ""
    severity: str = "medium"
    transition: str = ""  # raised | cleared | acked
    state: str = ""
    ts: int = 0
    value: Value = None
    message: str = ""


class AckResult(Answer):
    """`POST /v1/alarms/{name}/ack`: False when there was nothing to acknowledge."""

    acknowledged: bool
    alarm: str


class ShelveRequest(BaseModel):
    """`POST /v1/alarms/{name}/shelve`: silence an alarm for a stated time (at most 24 h)."""

    model_config = _REQUEST

    duration_s: float
    reason: str
    by: str = "local"


class Shelved(Answer):
    """The alarm is shelved until `until` (µs, UTC)."""

    alarm: str
    until: int
    by: str
    reason: str


class Unshelved(Answer):
    """`DELETE /v1/alarms/{name}/shelve`: False when the alarm was not shelved."""

    alarm: str
    unshelved: bool


class ShelvingAction(Answer):
    """One line of the shelving audit."""

    at: int
    alarm: str
    action: str  # shelved | unshelved | expired
    by: str
    reason: str
    until: int | None = None


class NotificationHook(Answer):
    """One alarm notification hook: what waits for it and how delivery goes."""

    name: str
    target: str
    pending: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    last_error: str | None = None
    last_delivered_at: float | None = None


# ------------------------------------------------------------------------------------- outbox


class Lane(Answer):
    """One outbox lane (alarm, event, telemetry)."""

    chunks: int = 0
    readings: int = 0
    bytes: int = 0
    oldest_age_s: float | None = None
    leased_chunks: int = 0
    dropped_chunks: int = 0
    dropped_readings: int = 0
    quarantined_chunks: int = 0
    quarantined_readings: int = 0
    quarantined_bytes: int = 0


class Recovery(Answer):
    """A damaged outbox file that was moved aside."""

    at: float
    moved_to: str
    reason: str


class PipelineCounters(Answer):
    """What went through the pipeline since start."""

    received: int = 0
    suppressed: int = 0
    derived: int = 0
    committed: int = 0
    committed_bytes: int = 0
    chunks: int = 0
    alarm_events: int = 0
    dropped: int = 0
    flush_errors: int = 0
    last_flush_error: str | None = None


class Consumer(Answer):
    """One reader of the outbox (the cloud uplink, the Sparkplug publisher) at its own position."""

    pending_chunks: int = 0
    pending_readings: int = 0
    leased_chunks: int = 0
    dropped_readings: Mapping[str, int] = {}
    """Readings the quota dropped before this consumer had sent them, per lane."""


class Outbox(Answer):
    """`GET /v1/outbox`: the durable buffer and what the pipeline put into it."""

    used_bytes: int = 0
    quota_bytes: int = 0
    file_bytes: int = 0
    leased_chunks: int = 0
    dropped_readings: int = 0
    buffered_readings: int = 0
    lanes: Mapping[str, Lane] = {}
    recoveries: tuple[Recovery, ...] = ()
    pipeline: PipelineCounters = PipelineCounters()
    refused: Mapping[str, int] = {}
    """Readings the cloud refused one by one (a device clock far off), per reason, since the
    outbox file was created; the rest of their batches was stored."""
    consumers: Mapping[str, Consumer] = {}
    """Per consumer of the outbox: its backlog and its drops."""

    @property
    def backlog_readings(self) -> int:
        """Readings waiting to be sent, all lanes."""
        return sum(lane.readings for lane in self.lanes.values())

    @property
    def oldest_age_s(self) -> float | None:
        """Age of the oldest waiting chunk, any lane."""
        ages = [lane.oldest_age_s for lane in self.lanes.values() if lane.oldest_age_s is not None]
        return max(ages) if ages else None

    @property
    def quarantined_readings(self) -> int:
        """Readings the cloud refused, kept aside for a requeue."""
        return sum(lane.quarantined_readings for lane in self.lanes.values())

    @property
    def used_fraction(self) -> float:
        """Use against the quota, 0..1."""
        return self.used_bytes / self.quota_bytes if self.quota_bytes else 0.0


class Requeued(Answer):
    """`POST /v1/outbox/requeue-quarantine`: how many chunks went back into the queue."""

    requeued: int


# ------------------------------------------------------------------------------------- uplink


class Sparkplug(Answer):
    """`GET /v1/sparkplug`: the Sparkplug B edge node (`north.sparkplug`); `configured` is False
    without one."""

    configured: bool = False
    state: Literal["disconnected", "waiting_for_host", "online", "stopped"] = "disconnected"
    group_id: str | None = None
    edge_node_id: str | None = None
    primary_host_id: str | None = None
    bd_seq: int | None = None
    births: int = 0
    rebirth_commands: int = 0
    messages: int = 0
    readings: int = 0
    historical_readings: int = 0
    written_commands: int = 0
    refused_commands: int = 0
    duplicate_commands: int = 0
    last_error: str | None = None
    refusals: tuple[str, ...] = ()
    """The last refused commands, with their reasons (newest last)."""


class Uplink(Answer):
    """`GET /v1/uplink`: the sending side; `configured` is False on an offline gateway."""

    configured: bool = False
    state: Literal["idle", "sending", "backoff", "stopped", "offline"] = "offline"
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    """When `last_error` happened (Unix time); a success after it means the uplink recovered."""
    batches_sent: int = 0
    readings_sent: int = 0
    duplicates: int = 0
    refused_readings: int = 0
    """Readings the cloud refused one by one since the agent started (see `Outbox.refused`)."""
    quarantined_chunks: int = 0
    seq_conflicts: int = 0
    """Batches the cloud refused with 409 seq_conflict (quarantined, and a critical alarm)."""
    retries: int = 0
    token_renewals: int = 0
    send_rate: float = 0.0
    """Readings the cloud acknowledged per second, over the last minute."""
    backlog_readings: int = 0
    backlog_age_s: float | None = None
    """Age of the oldest chunk still waiting to be sent, None when nothing waits."""
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None


# ------------------------------------------------------------------------------- dead letters


class DeadLetter(Answer):
    """An MQTT message that could not be turned into readings."""

    received_us: int
    topic: str
    device: str | None = None
    reason: str
    size: int
    head: str = ""


class DeadLetters(Answer):
    """`GET /v1/dead-letters`: the total since the file was created, and the newest ones."""

    total: int = 0
    recent: tuple[DeadLetter, ...] = ()


# -------------------------------------------------------------------------------------- write


class WriteRequest(BaseModel):
    """`POST /v1/write`: a setpoint to write through the device's driver."""

    model_config = _REQUEST

    device: str
    tag: str
    value: float | int | bool | str


class ConfigTrial(Answer):
    """`POST /v1/config/pull`: how taking the cloud's version ended (``applied``,
    ``rolled_back``, ``refused`` or ``restarting``), with the validator's problems."""

    outcome: str
    version: int | None = None
    reason: str | None = None
    problems: tuple[str, ...] = ()


class ConfigPushed(Answer):
    """`POST /v1/config/push`: the cloud's version number for the gateway's own file."""

    version: int


class WriteResult(Answer):
    """The write was done and read back by the driver."""

    written: bool
    device: str
    tag: str
    value: float | int | bool | str
    read_back: Value = None
    audit_id: int | None = None


class WriteAudit(Answer):
    """`GET /v1/writes`: one audited setpoint write, wherever it came from. `outcome` is
    ``written``, ``refused`` (by the tag's limits, nothing sent to the device), ``failed`` or
    ``unknown`` (the agent stopped during the write; never retried)."""

    id: int
    ts: int
    device: str
    tag: str
    value: Value
    old: Value = None
    read_back: Value = None
    outcome: str
    reason: str | None = None
    source: str
    who: str
    command_id: int | None = None


# --------------------------------------------------------------------------- list adapters

DRIVERS: Final = TypeAdapter(tuple[Driver, ...])
TAGS: Final = TypeAdapter(tuple[TagValue, ...])
WRITES: Final = TypeAdapter(tuple[WriteAudit, ...])
ALARMS: Final = TypeAdapter(tuple[Alarm, ...])
ALARM_CHANGES: Final = TypeAdapter(tuple[AlarmChange, ...])
SHELVING: Final = TypeAdapter(tuple[ShelvingAction, ...])
NOTIFICATION_HOOKS: Final = TypeAdapter(tuple[NotificationHook, ...])
