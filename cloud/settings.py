"""The service settings: one frozen model, read once at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cloud.contract import Limits
from cloud.health import HealthPolicy


class DbClassLimits(BaseModel):
    """What one class of requests may take of the database (PostgreSQL; 0 = no timeout)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    statement_timeout_ms: int = Field(default=30_000, ge=0)
    pool_timeout_s: float = Field(default=10.0, gt=0, le=300)


class DbClasses(BaseModel):
    """Database limits per request class (`cloud.storage.base.request_class`).

    Ingest may hold at most `pool_max_size - pool_reserved_for_reads` connections at once (at
    least one) and waits `ingest.pool_timeout_s` for one before its 429 ``ingest_busy`` (the
    gateway retries): however hard one tenant's gateways push, reads and admin requests find a
    free connection. Background work (retention, the fleet sweep) has no statement timeout.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ingest: DbClassLimits = DbClassLimits(statement_timeout_ms=30_000, pool_timeout_s=5.0)
    read: DbClassLimits = DbClassLimits(statement_timeout_ms=15_000, pool_timeout_s=10.0)
    admin: DbClassLimits = DbClassLimits(statement_timeout_ms=15_000, pool_timeout_s=10.0)

    def of(self, kind: str) -> DbClassLimits:
        """The limits of a class; background work: no statement timeout, the admin's wait."""
        if kind in ("ingest", "read", "admin"):
            limits: DbClassLimits = getattr(self, kind)
            return limits
        return DbClassLimits(statement_timeout_ms=0, pool_timeout_s=self.admin.pool_timeout_s)


class CloudSettings(BaseModel):
    """Everything `create_app` needs; no other configuration is read at run time.

    `database_url` selects the backend: ``sqlite:///path/to/file.db`` (embedded default) or
    ``postgresql://tagway_app@host/db`` (production; connect as the non-owner app role).
    `migrate_database_url`, when set, is the owner's DSN used to apply migrations at start-up.
    `telemetry_database_url` (Citus only) is a worker of the same database, as the app role:
    each batch's readings are written through it, so they never pass the coordinator, which
    keeps the metadata (`cloud.storage.telemetry` says how a batch stays exactly once).

    Provisioning (`cloud.enrollment`): `public_url` is the URL gateways reach the service at and
    the audience of their tokens. `master_key_file` seals the tenant CAs' keys; None means
    ``<sqlite file>.master-key`` for SQLite. `create_master_key` (None: yes for SQLite, no for
    PostgreSQL, where every replica must share one key) creates it on first start.
    `allow_static_gateway_tokens` keeps the interim per-gateway bearer tokens working.

    Database limits per request class (`db_classes`): a statement timeout and a wait for a
    connection for ingest, reads and admin requests each; on PostgreSQL ingest never holds the
    last `pool_reserved_for_reads` connections of the pool (`DbClasses`), on SQLite at most
    `sqlite_ingest_writers` ingest transactions hold or wait for its one connection at once, so
    a read waits behind at most that many of them.

    Request limits (`cloud.api.guard`): the body of a JSON operation is at most
    `max_json_body_bytes` (`max_public_body_bytes` for the ones that take no credentials:
    `/v1/provision`), nested at most `max_json_depth` deep, with at most `max_json_values` values;
    a batch to `/v1/ingest` has its own `limits` (`cloud.contract.Limits`) and is decoded on one
    of `decode_threads` threads, never on the event loop.

    Retention (`cloud.retention`): telemetry older than `retention_days` is removed by a pass
    each replica runs at start-up and then every `retention_interval_s` (0: never in the
    background; run ``tagway cloud retention`` from cron instead). On a Citus cluster the same
    pass converts the days that ended `compress_after_days` ago (at least 2; 0: never) to
    columnar storage (`cloud.storage.columnar`).

    Two-way (`cloud.hub`, `cloud.api.commands`): commands live `command_ttl_default_s` unless
    the caller says otherwise, at most `command_ttl_max_s`; a gateway holds at most
    `max_pending_commands` queued or delivered ones. A gateway's channel answers a keepalive
    every `channel_keepalive_s` and is closed after `channel_max_s` (with jitter), so the
    gateway reconnects with a fresh token and a revoked one is cut off. Each `/v1/stream`
    client buffers at most `stream_buffer_events` events; beyond that it misses events and is
    told how many. A client's events go out at most every `stream_coalesce_s`, joined in one
    write (what 50 clients cost ingest is mostly the number of writes, not the events).

    Fleet (`cloud.fleet`): a gateway with no batch for `health_offline_after_s` is offline; its
    status document makes it degraded when its backlog is older than `health_backlog_age_s`,
    its outbox disk has less than `health_disk_free_min_percent` free (or the outbox is at
    `health_outbox_full_percent` of its quota), or its clock is unsynchronized or off by more
    than `health_clock_offset_max_s`. A rollout waits `rollout_wave_timeout_s` for each gateway
    of a wave (None: the document's probation plus `rollout_wave_margin_s`). Every
    `fleet_sweep_s` a replica fails the gateways past their deadline and refreshes the fleet
    gauges, which name at most `metrics_max_tenants` tenants (the rest are ``other``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str = "sqlite:///tagway-cloud.db"
    migrate_database_url: str | None = None
    telemetry_database_url: str | None = None
    migrate_on_start: bool = True
    platform_admin_key: SecretStr | None = None
    pool_min_size: int = Field(default=1, ge=1)
    pool_max_size: int = Field(default=8, ge=1)
    pool_reserved_for_reads: int = Field(default=2, ge=0)
    sqlite_ingest_writers: int = Field(default=2, ge=1, le=64)
    db_classes: DbClasses = DbClasses()
    limits: Limits = Limits()
    max_json_body_bytes: int = Field(default=256 * 1024, ge=1024)
    max_public_body_bytes: int = Field(default=32 * 1024, ge=1024)
    max_json_depth: int = Field(default=16, ge=2, le=64)
    max_json_values: int = Field(default=10_000, ge=10)
    decode_threads: int = Field(default=2, ge=1, le=64)
    default_ingest_quota_per_day: int = Field(default=1_000_000_000, ge=0)
    default_rate_limit: int = Field(default=600, ge=1, description="ingest requests per window")
    default_max_devices: int = Field(default=10_000, ge=1)
    default_max_series: int = Field(default=100_000, ge=1)
    # At least the series one chunk of a gateway holds (chunk_readings, 5,000 by default): a
    # single chunk cannot be split, so a lower limit holds it back until an operator acts.
    max_new_series_per_batch: int = Field(default=5_000, ge=1)
    rate_window_s: int = Field(default=60, ge=1)
    max_future_skew_s: int = Field(default=600, ge=0)
    max_age_days: int = Field(default=400, ge=1)
    partitions_ahead_days: int = Field(default=7, ge=1)
    retention_days: int = Field(default=365, ge=1)
    retention_interval_s: int = Field(default=3600, ge=0)
    compress_after_days: int = Field(default=7, ge=0)
    app_role: str = Field(default="tagway_app", pattern=r"^[a-z_][a-z0-9_]*$")
    public_url: str = Field(default="http://127.0.0.1:8000", pattern=r"^https?://")
    master_key_file: Path | None = None
    create_master_key: bool | None = None
    certificate_validity_days: int = Field(default=365, ge=1, le=3650)
    token_max_lifetime_s: int = Field(default=3600, ge=60, le=86_400)
    token_leeway_s: int = Field(default=60, ge=0, le=600)
    allow_static_gateway_tokens: bool = True
    command_ttl_default_s: int = Field(default=600, ge=1)
    command_ttl_max_s: int = Field(default=86_400, ge=1, le=7 * 86_400)
    max_pending_commands: int = Field(default=1_000, ge=1)
    channel_keepalive_s: float = Field(default=20.0, gt=0, le=300)
    channel_max_s: float = Field(default=300.0, gt=0, le=86_400)
    stream_buffer_events: int = Field(default=1_000, ge=1, le=100_000)
    stream_keepalive_s: float = Field(default=15.0, gt=0, le=300)
    stream_coalesce_s: float = Field(
        default=0.25, ge=0, le=2,
        description="a stream client's events are sent at most this often, joined in one "
        "write: each write costs the replica (and the client) about as much as a small event, "
        "and ingest shares the event loop with the fan-out",
    )  # fmt: skip
    health_offline_after_s: float = Field(default=300.0, gt=0)
    health_backlog_age_s: float = Field(default=300.0, gt=0)
    health_disk_free_min_percent: float = Field(default=5.0, ge=0, le=100)
    health_outbox_full_percent: float = Field(default=90.0, gt=0, le=100)
    health_clock_offset_max_s: float = Field(default=5.0, gt=0)
    rollout_wave_timeout_s: int | None = Field(default=None, ge=1, le=86_400)
    rollout_wave_margin_s: int = Field(default=120, ge=0, le=86_400)
    fleet_sweep_s: float = Field(default=5.0, gt=0, le=3600)
    metrics_max_tenants: int = Field(default=50, ge=0, le=10_000)

    @property
    def health_policy(self) -> HealthPolicy:
        """The limits status documents are held to."""
        return HealthPolicy(
            offline_after_s=self.health_offline_after_s,
            backlog_age_s=self.health_backlog_age_s,
            disk_free_min_percent=self.health_disk_free_min_percent,
            outbox_full_percent=self.health_outbox_full_percent,
            clock_offset_max_s=self.health_clock_offset_max_s,
        )

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`, from the URL scheme."""
        return "sqlite" if self.database_url.startswith("sqlite:") else "postgresql"
