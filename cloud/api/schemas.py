"""Request and response bodies of API v1 that are not stored records."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from cloud.auth import Role
from cloud.contract import (
    AckAlarmCommand,
    PingCommand,
    ReloadConfigCommand,
    RequeueQuarantineCommand,
    SetpointValue,
    WriteCommand,
)
from cloud.storage.records import ApiKey, Gateway, Point


def _json_integer(value: object) -> object:
    """JSON Schema's integer: a number without a fraction (``5`` or ``5.0``); ``true`` and
    ``"5"`` are not integers, though pydantic's lax mode would take them (a tenant's quota of
    ``true`` was stored as 1)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("Input should be a valid integer")  # noqa: TRY004 - pydantic wants it
    return value


JsonInt = BeforeValidator(_json_integer)
"""For the integers of request bodies: refuses booleans and strings (422)."""

# PostgreSQL text cannot hold NUL, so no string field may carry one.
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
BIGINT_MAX = 2**63 - 1
Quota = Annotated[int, Field(ge=0, le=BIGINT_MAX), JsonInt]
Rate = Annotated[int, Field(ge=1, le=2**31 - 1), JsonInt]
MetadataValue = (
    Annotated[str, Field(max_length=1000, pattern=r"^[^\x00]*$")]
    | Annotated[int, Field(ge=-BIGINT_MAX, le=BIGINT_MAX)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | bool
    | None
)


class Body(BaseModel):
    """Base of request bodies: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Count = Annotated[int, Field(ge=1, le=2**31 - 1), JsonInt]


class TenantLimits(Body):
    """A tenant's ingest quota (readings stored per UTC day), rate limit (ingest requests per
    window), the devices and series it may hold and the assets its gateways' paths fill its tree
    to; null means the service's default."""

    ingest_quota_per_day: Quota | None = None
    rate_limit: Rate | None = None
    max_devices: Count | None = None
    max_series: Count | None = None
    max_assets: Count | None = None


class TenantCreate(TenantLimits):
    """A new tenant (platform admin)."""

    name: Name


class ApiKeyCreate(Body):
    """A new API key for a person or a program."""

    name: Name
    role: Role


class ApiKeyCreated(Body):
    """The new key and its secret: the only time the secret is shown."""

    key: ApiKey
    token: str


class GatewayCreate(Body):
    """A new gateway."""

    name: Name


class GatewayUpdate(Body):
    """Rename a gateway."""

    name: Name


class GatewayCreated(Body):
    """The gateway and its interim bearer token: the only time the token is shown."""

    gateway: Gateway
    token: str


class DeviceUpdate(Body):
    """Give a device a display name or replace its metadata."""

    display_name: Name | None = None
    metadata: (
        dict[Annotated[str, Field(max_length=100, pattern=r"^[^\x00]*$")], MetadataValue] | None
    ) = Field(default=None, max_length=50)


class RawPage(Body):
    """One page of raw readings; pass `next_cursor` as `cursor` for the next page."""

    series_id: int
    points: list[Point]
    next_cursor: str | None
    simulated: bool = False
    """True when the series comes from a simulated device."""


class ErrorDetail(Body):
    """The error object."""

    code: str
    message: str
    details: dict[str, object] = {}


class ErrorBody(Body):
    """Every error answer: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorDetail


# --------------------------------------------------------------------------------- two-way

Ttl = Annotated[
    int,
    Field(ge=1, description="seconds until the command expires if not delivered and run"),
    JsonInt,
]
Comment = Annotated[str, Field(max_length=1_000, pattern=r"^[^\x00]*$")]


class _Expiring(Body):
    ttl_s: Ttl | None = Field(
        default=None, description="default 600 s; at most the service's command_ttl_max_s"
    )


class WriteCommandCreate(WriteCommand, _Expiring):
    """Write a setpoint: ``{"kind": "write", "args": {"device", "tag", "value"}}``."""


class AckAlarmCommandCreate(AckAlarmCommand, _Expiring):
    """Acknowledge an alarm on the gateway: ``{"kind": "ack_alarm", "args": {"name"}}``."""


class ReloadConfigCommandCreate(ReloadConfigCommand, _Expiring):
    """Reload the gateway's config file: ``{"kind": "reload_config"}``."""


class RequeueQuarantineCommandCreate(RequeueQuarantineCommand, _Expiring):
    """Requeue the gateway's quarantined outbox chunks: ``{"kind": "requeue_quarantine"}``."""


class PingCommandCreate(PingCommand, _Expiring):
    """Round-trip check: ``{"kind": "ping"}``."""


CommandCreate = Annotated[
    WriteCommandCreate
    | AckAlarmCommandCreate
    | ReloadConfigCommandCreate
    | RequeueQuarantineCommandCreate
    | PingCommandCreate,
    Field(discriminator="kind"),
]


class AlarmAck(Body):
    """What the operator writes with an acknowledgement."""

    comment: Comment | None = None
    ttl_s: Ttl | None = None


class SetpointPatch(Body):
    """A desired setpoint: hold `value` (until `expires_at`, µs since the epoch, if given)."""

    value: SetpointValue
    expires_at: Annotated[int, Field(ge=0, le=2**62), JsonInt] | None = None


class DesiredPatch(Body):
    """A JSON merge patch of the desired setpoints: ``null`` removes a tag or a device."""

    setpoints: dict[Name, dict[Name, SetpointPatch | None] | None] = Field(
        default_factory=dict, max_length=1_000
    )


class ShadowPatch(Body):
    """``PATCH /v1/gateways/{id}/shadow``: only `desired` is the cloud's to change."""

    desired: DesiredPatch


# ---------------------------------------------------------------------------- asset model

AssetName = Annotated[
    str,
    Field(min_length=1, max_length=200, pattern=r"^[^\x00/]+$",
          description="unique among its siblings; no / (it joins the path) and no NUL"),
]  # fmt: skip
AssetLevelName = Literal["site", "area", "line", "equipment"]
AssetRef = Annotated[int, Field(ge=1, le=BIGINT_MAX), JsonInt]


class AssetCreate(Body):
    """A new asset: a site, area, line or equipment, under `parent_id` (null: at the root); its
    level must be below its parent's."""

    name: AssetName
    level: AssetLevelName
    parent_id: AssetRef | None = None


class AssetUpdate(Body):
    """Rename an asset, move it (with its subtree) under another parent (`parent_id`: null moves
    it to the root), or both; a field left out stays as it is."""

    name: AssetName | None = None
    parent_id: AssetRef | None = None


class DeviceAsset(Body):
    """Where a user places a device: under `asset_id`, or nowhere (null). Either way the device is
    pinned: its gateway's path no longer moves it."""

    asset_id: AssetRef | None
