"""What the repository returns: frozen models, served as API responses as they are.

Ids are database integers; times are int microseconds since the epoch, UTC (the wire contract's
unit), so nothing converts between representations on the hot path.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from cloud.auth import PrincipalKind, Role


class Record(BaseModel):
    """Base of the stored records."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Tenant(Record):
    """A customer; every other row belongs to exactly one tenant."""

    id: int
    name: str
    created_at: int
    ingest_quota_per_day: int | None = None
    rate_limit: int | None = None
    max_devices: int | None = None
    max_series: int | None = None
    max_assets: int | None = None


class ApiKey(Record):
    """A user's API key as listed: the secret itself is never stored or shown again."""

    id: int
    name: str
    role: Role
    prefix: str
    created_at: int
    last_used_at: int | None = None
    revoked_at: int | None = None


class GatewayHealth(Record):
    """A gateway's health: ``healthy``, ``degraded`` (see `reasons`), ``offline`` (no contact
    for the configured minutes) or ``unknown`` (no status document yet)."""

    state: str
    reasons: list[str] = []
    since: int | None = None
    last_contact_at: int | None = None
    status_at: int | None = None


class Gateway(Record):
    """A gateway registered in a tenant."""

    id: int
    name: str
    token_prefix: str | None
    created_at: int
    last_seen_at: int | None = None
    last_seq: int | None = None
    revoked_at: int | None = None
    dropped: dict[str, int] = {}
    labels: dict[str, str] = {}
    health: GatewayHealth | None = None


class Device(Record):
    """A device behind a gateway; created on its first ingested reading."""

    id: int
    gateway_id: int
    name: str
    display_name: str | None = None
    metadata: dict[str, Any] = {}
    created_at: int
    simulated: bool = False
    """True when any of its series is simulated."""
    asset_id: int | None = None
    """The asset the device is placed under (null: unassigned)."""
    asset_path: str | None = None
    asset_source: str | None = None
    """Who placed it: ``api`` (a user; the gateway's path never overrides it) or ``gateway``
    (the ISA-95 path its gateway reports); null when neither did."""


class Series(Record):
    """One (device, tag) time series."""

    id: int
    gateway_id: int
    device_id: int
    device: str
    tag: str
    unit: str | None = None
    simulated: bool = False
    """True when the newest batch that carried it came from a simulated device."""
    asset_path: str | None = None
    """The path of its device's asset (null: the device is unassigned)."""


class Point(Record):
    """One stored reading."""

    ts: int
    value: int | float | str
    quality: int


class LatestValue(Record):
    """The newest reading of one series."""

    series_id: int
    tag: str
    unit: str | None
    ts: int
    value: int | float | str
    quality: int
    simulated: bool = False
    asset_path: str | None = None
    """The path of the device's asset (null: unassigned)."""


class Asset(Record):
    """A node of a tenant's ISA-95 asset tree: a site, area, line or equipment."""

    id: int
    parent_id: int | None
    level: str
    name: str
    path: str
    """The names from the root down, joined by ``/`` (``plant-a/packaging/line2``)."""
    created_at: int


class AssetLatestValue(Record):
    """The newest reading of one series under an asset."""

    series_id: int
    device_id: int
    device: str
    tag: str
    unit: str | None
    ts: int
    value: int | float | str
    quality: int
    simulated: bool = False
    asset_id: int
    asset_path: str


class Bucket(Record):
    """Aggregates of one series over one time bucket (numeric readings only)."""

    start: int
    min: float | None
    max: float | None
    avg: float | None
    last: float | str | None
    count: int


class SeriesBuckets(Record):
    """The buckets of one series under an asset, with where the series comes from."""

    series_id: int
    device_id: int
    device: str
    tag: str
    unit: str | None
    simulated: bool = False
    asset_id: int
    asset_path: str
    buckets: list[Bucket]


class Alarm(Record):
    """An alarm's current state, from the transitions its gateway reported.

    `state`: ``active`` (condition present, unacknowledged), ``acknowledged`` (present,
    acknowledged), ``cleared`` (gone, unacknowledged), ``normal`` (gone and acknowledged), or
    ``event`` for events. `ts` is the last transition's time; `acknowledged_at` and
    `acknowledged_by` come from the gateway's acknowledgement (whoever made it, wherever).
    """

    id: int
    gateway_id: int
    device: str
    tag: str | None
    name: str
    kind: str
    state: str
    severity: str
    message: str
    value: float | None
    ts: int
    raised_at: int | None = None
    cleared_at: int | None = None
    acknowledged_at: int | None = None
    acknowledged_by: str | None = None
    comment: str | None = None
    received_at: int


class AlarmTransition(Record):
    """One transition of an alarm, as the gateway reported it."""

    id: int
    alarm_id: int | None
    gateway_id: int
    device: str
    tag: str | None
    name: str
    kind: str
    state: str
    transition: str | None
    ts: int
    severity: str
    message: str
    value: float | None
    acknowledged_by: str | None = None
    comment: str | None = None
    received_at: int


class Command(Record):
    """A command to a gateway and what became of it (also its audit record).

    `state`: ``queued`` (waiting for the gateway), ``delivered`` (on the gateway's channel),
    then ``succeeded``, ``failed``, ``expired`` (its TTL ran out first) or ``unknown`` (the
    gateway stopped while running it and will not guess), or ``cancelled`` before delivery.
    """

    id: int
    gateway_id: int
    kind: str
    args: dict[str, Any]
    state: str
    created_by: str
    created_at: int
    expires_at: int
    idempotency_key: str | None = None
    delivered_at: int | None = None
    deliveries: int = 0
    finished_at: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    cancelled_by: str | None = None


class WriteLog(Record):
    """A setpoint write a gateway reported (from the cloud, the shadow or a local user)."""

    id: int
    gateway_id: int
    audit_id: int
    ts: int
    device: str
    tag: str
    value: Any
    old: Any = None
    read_back: Any = None
    outcome: str
    reason: str | None = None
    who: str
    source: str
    command_id: int | None = None
    received_at: int


class Shadow(Record):
    """A gateway's shadow: `desired` (setpoints the cloud wants held), `reported` (the
    gateway's facts) and `delta` (desired setpoints the reported values do not match yet)."""

    gateway_id: int
    version: int
    desired: dict[str, Any]
    desired_at: int | None = None
    desired_by: str | None = None
    reported: dict[str, Any]
    reported_version: int
    reported_at: int | None = None
    delta: dict[str, Any]


class UsageDay(Record):
    """One tenant's metered usage for one UTC day."""

    day: str
    readings: int
    bytes: int
    batches: int
    api_calls: int
    dropped: int


class TenantUsageLimits(Record):
    """The limits in force for a tenant (its own where set, else the service's defaults)."""

    ingest_quota_per_day: int
    rate_limit: int
    rate_window_s: int
    max_devices: int
    max_series: int
    max_new_series_per_batch: int


class Usage(Record):
    """What `GET /v1/usage` answers: metered days, what the tenant holds, and its limits."""

    days: list[UsageDay]
    devices: int
    series: int
    limits: TenantUsageLimits


class RefusedReadings(Record):
    """Readings of one series refused for one reason (see `cloud.contract.window`)."""

    device: str
    tag: str
    reason: str
    count: int
    first_ts: int


class IngestResult(Record):
    """What `/v1/ingest` answers.

    The `refused` fields came in 0.3 and are additive: readings and alarm records outside the
    time window are refused one by one while the rest of the batch is stored.
    """

    duplicate: bool
    seq: int
    readings: int
    stored: int
    received_at: int
    refused: int = 0
    """Readings refused one by one (a clock far off); the rest of the batch is stored."""
    refused_alarms: int = 0
    refused_series: list[RefusedReadings] = []
    """One entry per (series, reason), at most 100 (`refused` counts them all)."""


class StoredPrincipal(Record):
    """A principal found by token digest (API key or interim gateway token)."""

    kind: PrincipalKind
    tenant_id: int
    subject_id: int
    role: Role | None


class RetentionResult(Record):
    """What one retention pass removed (or, with `dry_run`, would remove).

    `method` says how: ``partitions`` (native PostgreSQL drops whole UTC days, so up to a day
    more than asked is kept), ``chunks`` (TimescaleDB drops whole daily chunks the same way,
    named in `partitions`) or ``rows`` (SQLite deletes readings older than `cutoff`).
    """

    method: str
    cutoff: int
    dry_run: bool
    partitions: list[str] = []
    days: list[int] = []
    rows_deleted: int = 0


class BackendInfo(Record):
    """What `/readyz` reports about storage; `storage` says why telemetry is stored as it is.
    `distributed`: telemetry is distributed over a Citus cluster (its partitions are native).
    `readings_through_worker`: this replica writes the readings through a Citus worker
    (`telemetry_database_url`), the coordinator keeping the metadata."""

    backend: str
    timescaledb: bool
    partitioning: str
    schema_version: int
    distributed: bool = False
    storage: str = ""
    readings_through_worker: bool = False


class MaintenanceJob(Record):
    """A database background job (TimescaleDB's policies) as /readyz and /metrics report it.

    `status` is ``ok`` (the last run succeeded, or none yet), ``failed_work_done`` (the last run
    is recorded as failed, but what it was to do is done: checked for compression, retention and
    the aggregate's refresh) or ``failed``. `work_done` is None where it cannot be checked.
    """

    id: int
    job: str
    last_run: str | None
    failures: int
    work_done: bool | None
    status: str
