"""Remote configuration and fleet health on the wire.

Cloud to gateway, on the channel: `DesiredConfig` (event ``config``) names the config version the
cloud wants the gateway to run; the gateway fetches the document itself (`ConfigDocument`,
``GET /v1/gateway/config/{version}``), so the channel stays small however large a config grows.
Gateway to cloud, inside batches (`cloud.contract.batch.GatewayEvent`): a `ConfigReport` for each
step of applying a version (or a local edit: ``drift``) and a `StatusReport` of its health, on
change and at least every minute.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final, Literal

from pydantic import Field

from cloud.contract.wire import Micros, Wire, WireName, WireText

MAX_CONFIG_BYTES: Final = 1_048_576
"""The largest config document the cloud stores and a gateway accepts (1 MiB of text)."""
MAX_CONFIG_ISSUES: Final = 50
MAX_STATUS_DRIVERS: Final = 5_000
ConfigOutcome = Literal[
    "applying", "probation", "applied", "rolled_back", "refused", "declined", "drift"
]

Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the text, hex")]
Counter = Annotated[int, Field(ge=0, le=2**62)]


def config_digest(document: str) -> str:
    """The SHA-256 (hex) of a config document's UTF-8 text: how both sides name a document."""
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


class DesiredConfig(Wire):
    """The config version the cloud wants the gateway to run (channel event ``config``).

    Sent on connect and on every change. `version` 0 means the cloud assigns nothing: the
    gateway keeps what it runs.
    """

    version: int = Field(ge=0)
    digest: Digest | None = None
    assigned_at: Micros | None = None
    assigned_by: WireName | None = None
    rollout_id: int | None = Field(default=None, ge=1)
    server_time: Micros


class ConfigDocument(Wire):
    """One config version's document, as the gateway fetches it."""

    version: int = Field(ge=1)
    digest: Digest
    document: Annotated[str, Field(max_length=MAX_CONFIG_BYTES)]
    created_at: Micros
    created_by: WireName


class ConfigProblem(Wire):
    """One problem the gateway's validator found: line (when known), field path, message."""

    line: int | None = Field(default=None, ge=1)
    path: Annotated[str, Field(max_length=500, pattern=r"^[^\x00]*$")] = ""
    message: WireText


class ConfigReport(Wire):
    """A step of applying a config version on the gateway, or a local edit (``drift``).

    `outcome`: ``applying`` (written, being applied), ``probation`` (applied, proving itself),
    ``applied`` (passed probation: the new last good version), ``rolled_back`` (probation failed
    or the agent stopped during it; `reason` says which, and the last good version runs again),
    ``refused`` (invalid: `problems` lists what the validator found; nothing changed),
    ``declined`` (the gateway is managed locally: nothing changed, and the version waits for
    ``tagway config pull`` there) or ``drift`` (the file on the gateway differs from every
    version the cloud sent: `digest` names the local document). `version` is the cloud's
    version, None for a local document. `seq` counts up on the gateway, so a late copy never
    replaces a newer report.
    """

    type: Literal["config"]
    seq: int = Field(ge=1, le=2**62)
    version: int | None = Field(default=None, ge=1)
    digest: Digest
    outcome: ConfigOutcome
    reason: WireText | None = None
    problems: Annotated[list[ConfigProblem], Field(max_length=MAX_CONFIG_ISSUES)] = Field(
        default_factory=list
    )
    running_version: int | None = Field(default=None, ge=1)
    running_digest: Digest
    managed: Literal["cloud", "local"]
    probation_s: float | None = Field(default=None, ge=0, le=86_400)
    at: Micros


class DriverStatus(Wire):
    """One driver as the status document reports it."""

    name: WireName
    protocol: WireName | None = None
    state: Literal["idle", "connecting", "connected", "backoff", "closed"]
    last_error: WireText | None = None
    since: Micros | None = None


class StatusConfig(Wire):
    """The config part of a status document."""

    version: int | None = Field(default=None, ge=1)
    digest: Digest | None = None
    managed: Literal["cloud", "local"] = "local"
    outcome: ConfigOutcome | None = None
    probation: Literal["running", "passed", "failed"] | None = None
    reason: WireText | None = None


class StatusReport(Wire):
    """The gateway's health, on change and at least every minute (event ``status``)."""

    type: Literal["status"]
    seq: int = Field(ge=1, le=2**62)
    ts: Micros
    agent_version: WireName
    uptime_s: float = Field(ge=0, allow_inf_nan=False)
    config: StatusConfig = StatusConfig()
    drivers: Annotated[list[DriverStatus], Field(max_length=MAX_STATUS_DRIVERS)] = Field(
        default_factory=list
    )
    backlog_chunks: Counter = 0
    backlog_readings: Counter = 0
    backlog_oldest_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    quarantined: Counter = 0
    refused: Counter = 0
    dead_letters: Counter = 0
    disk_free_bytes: Counter | None = None
    disk_total_bytes: Counter | None = None
    outbox_bytes: Counter | None = None
    outbox_quota_bytes: Counter | None = None
    clock_synchronized: bool | None = None
    clock_offset_s: float | None = Field(default=None, allow_inf_nan=False)
    alarms_active: Counter = 0


MAX_ASSET_DEVICES: Final = 5_000
AssetPathText = Annotated[str, Field(min_length=1, max_length=1_100, pattern=r"^[^\x00]+$")]


class AssetPaths(Wire):
    """The ISA-95 path of each of the gateway's devices that has one (event ``asset_paths``),
    ``enterprise/site/area/line/cell`` as its config names it; sent at start and whenever the
    paths change. A device left out has no path (any placement the gateway made is undone).
    `seq` counts up on the gateway, so a late copy never replaces a newer report.

    A cloud older than the asset model skips it and counts it (``ignored_events``), so the
    gateway's telemetry is never refused for it. The cloud checks each path itself; one it
    cannot place is skipped, never the batch.
    """

    type: Literal["asset_paths"]
    seq: int = Field(ge=1, le=2**62)
    at: Micros
    devices: Annotated[dict[WireName, AssetPathText], Field(max_length=MAX_ASSET_DEVICES)] = Field(
        default_factory=dict
    )
