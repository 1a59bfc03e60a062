"""The service settings: one frozen model, read once at start-up."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cloud.contract import Limits


class CloudSettings(BaseModel):
    """Everything `create_app` needs; no other configuration is read at run time.

    `database_url` selects the backend: ``sqlite:///path/to/file.db`` (embedded default) or
    ``postgresql://tagway_app@host/db`` (production; connect as the non-owner app role).
    `migrate_database_url`, when set, is the owner's DSN used to apply migrations at start-up.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str = "sqlite:///tagway-cloud.db"
    migrate_database_url: str | None = None
    migrate_on_start: bool = True
    platform_admin_key: SecretStr | None = None
    pool_min_size: int = Field(default=1, ge=1)
    pool_max_size: int = Field(default=8, ge=1)
    limits: Limits = Limits()
    default_ingest_quota_per_day: int = Field(default=1_000_000_000, ge=0)
    default_rate_limit: int = Field(default=600, ge=1, description="ingest requests per window")
    rate_window_s: int = Field(default=60, ge=1)
    max_future_skew_s: int = Field(default=600, ge=0)
    max_age_days: int = Field(default=400, ge=1)
    partitions_ahead_days: int = Field(default=7, ge=1)
    retention_days: int = Field(default=365, ge=1)
    app_role: str = Field(default="tagway_app", pattern=r"^[a-z_][a-z0-9_]*$")

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`, from the URL scheme."""
        return "sqlite" if self.database_url.startswith("sqlite:") else "postgresql"
