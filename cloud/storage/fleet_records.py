"""What the fleet stores answer: config versions, a gateway's config state, rollouts, health.

Times are int microseconds since the epoch, UTC, like every other record.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cloud.storage.records import GatewayHealth, Record


class ConfigVersion(Record):
    """One config document version. `document` comes only with a single version, and
    `redacted` says whether its secrets were replaced (for users below admin)."""

    version: int
    digest: str
    size: int
    created_at: int
    created_by: str
    comment: str | None = None
    source: str
    """``cloud`` (pushed by a user) or ``gateway`` (adopted from a gateway's file)."""
    gateway_id: int | None = None
    document: str | None = None
    redacted: bool = False


class ConfigDiff(Record):
    """A unified diff between two versions (secrets redacted below admin)."""

    from_version: int
    to_version: int
    diff: str
    redacted: bool


class ConfigEvent(Record):
    """One entry of a gateway's config history: who changed what, and when.

    `kind`: ``assigned`` (the cloud's desired version changed: `by` says who, `detail.via` how),
    ``applying``, ``probation``, ``applied``, ``rolled_back``, ``refused`` (what the gateway
    reported, with its reason and problems), ``drift`` (the file on the gateway was edited
    there), ``adopted`` (the gateway's file became a cloud version: ``tagway config push``).
    """

    id: int
    gateway_id: int
    at: int
    kind: str
    version: int | None = None
    by: str
    detail: dict[str, Any] = Field(default_factory=dict)


class Assignment(Record):
    """The version the cloud wants a gateway to run, and how that came to be."""

    version: int
    digest: str
    at: int
    by: str
    via: str
    """``gateway`` (its own assignment) or ``label key=value``."""
    rollout_id: int | None = None


class ConfigOutcome(Record):
    """What the gateway last reported about applying a version."""

    outcome: str
    version: int | None = None
    digest: str | None = None
    reason: str | None = None
    problems: list[dict[str, Any]] = Field(default_factory=list)
    at: int


class Drift(Record):
    """The gateway's file, edited there and differing from what the cloud sent."""

    digest: str
    at: int
    document: str | None = None
    """Uploaded by the gateway (None until it arrives); redacted below admin."""
    diff: str | None = None
    """From the desired version's document to the local one."""


class GatewayConfig(Record):
    """A gateway's configuration as the cloud sees it."""

    gateway_id: int
    managed: str | None = None
    """``cloud`` or ``local``, as the gateway last reported (None: never reported)."""
    pinned: bool = False
    """It has its own assignment: label rollouts pass it by."""
    desired: Assignment | None = None
    running_version: int | None = None
    running_digest: str | None = None
    last_good_version: int | None = None
    last: ConfigOutcome | None = None
    drift: Drift | None = None
    redacted: bool = False


class RolloutGateway(Record):
    """One gateway of a rollout: ``waiting`` (its wave has not started), ``sent``, ``passed``,
    ``failed``, ``skipped`` (it has its own assignment, or it is managed locally and declined)
    or ``cancelled``."""

    gateway_id: int
    name: str
    wave: int
    state: str
    previous_version: int | None = None
    started_at: int | None = None
    deadline: int | None = None
    finished_at: int | None = None
    reason: str | None = None


class Rollout(Record):
    """A version sent to one gateway or to every gateway carrying a label, in waves.

    `state`: ``running``, ``completed`` (every wave passed), ``stopped`` (a gateway failed or
    timed out: the waves after it were not started, `reason` says why), ``cancelled`` (by a
    user) or ``superseded`` (a newer rollout to the same target took over).
    """

    id: int
    version: int
    target: str
    gateway_id: int | None = None
    label: str | None = None
    wave_size: int | None = None
    wave_percent: int | None = None
    wave_timeout_s: int
    state: str
    reason: str | None = None
    created_at: int
    created_by: str
    finished_at: int | None = None
    waves: int
    current_wave: int | None = None
    counts: dict[str, int]
    gateways: list[RolloutGateway] = Field(default_factory=list)


class HealthEvent(Record):
    """A change of a gateway's health, at the gateway's time of the status that showed it."""

    at: int
    state: str
    reasons: list[str]


class GatewayStatus(Record):
    """`GET /v1/gateways/{id}/health`: the health, the newest status document, the changes."""

    gateway_id: int
    health: GatewayHealth
    status: dict[str, Any] | None = None
    received_at: int | None = None
    events: list[HealthEvent] = Field(default_factory=list)


class FleetCounts(Record):
    """Gateways per health in one tenant."""

    tenant_id: int
    gateways: int
    healthy: int = 0
    degraded: int = 0
    offline: int = 0
    unknown: int = 0
