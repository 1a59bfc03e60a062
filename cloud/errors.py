"""The cloud service's error tree. Every error maps to one HTTP status and one stable code, and
the API answers it as ``{"error": {"code", "message", "details"}}``.

    CloudError                 500 internal
    ├── Unauthenticated        401 unauthenticated: no, unknown, revoked or malformed credentials
    ├── Forbidden              403 forbidden: authenticated, but the role does not allow it
    ├── NotFound               404 not_found: absent, or belongs to another tenant (never 403)
    ├── Conflict               409 conflict: a name already taken in this tenant
    │   ├── IdempotencyConflict    409 idempotency_conflict: the key named another command
    │   ├── CommandNotQueued       409 command_not_queued: too late to cancel
    │   ├── GatewayRevoked         409 gateway_revoked: revocation is final (enroll it anew)
    │   ├── AssetNameTaken         409 asset_name_taken: a sibling asset has that name
    │   ├── AssetNotEmpty          409 asset_not_empty: children or devices (use ?cascade=true)
    │   ├── AssetCycle             409 asset_cycle: moving an asset under itself
    │   ├── AssetLevel             409 asset_level: a child's level must be below its parent's
    │   └── SeqConflict            409 seq_conflict: a seq reused with different content
    ├── PreconditionFailed     412 precondition_failed: If-Match names an old version
    ├── TooManyNewSeries       413 too_many_new_series: a batch creates too many series at once
    ├── InvalidRequest         422 invalid_request: `details["path"]` names the bad field
    ├── RateLimited            429 rate_limited / quota_exceeded / ingest_busy /
    │                              device_limit_reached / series_limit_reached: `retry_after` s
    └── StorageError           503 storage_unavailable: the database failed or is unreachable

Wire-contract errors (`cloud.contract.ContractError`: 413, 415, 422) carry their own status and
code and are answered the same way. Database-driver errors are translated into `StorageError`
at the storage boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class CloudError(Exception):
    """Root of the cloud errors.

    Args:
        message: what was wrong, for people.
        details: machine-readable context.
    """

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class Unauthenticated(CloudError):
    """No credentials, or credentials that are unknown, revoked or malformed."""

    status = 401
    code = "unauthenticated"


class Forbidden(CloudError):
    """The principal is known but its role does not allow the operation."""

    status = 403
    code = "forbidden"


class NotFound(CloudError):
    """The resource does not exist for this tenant (existence elsewhere is never revealed)."""

    status = 404
    code = "not_found"


class Conflict(CloudError):
    """The request collides with existing state (a name already taken)."""

    status = 409
    code = "conflict"


class IdempotencyConflict(Conflict):
    """The Idempotency-Key was used before for a different command."""

    code = "idempotency_conflict"


class CommandNotQueued(Conflict):
    """Only a queued command can be cancelled: this one reached the gateway or finished."""

    code = "command_not_queued"


class PreconditionFailed(CloudError):
    """If-Match named a version the document no longer has; `details["version"]` is current."""

    status = 412
    code = "precondition_failed"


class GatewayRevoked(Conflict):
    """The gateway was revoked; no credential brings it back (it enrolls as a new gateway)."""

    code = "gateway_revoked"


class AssetNameTaken(Conflict):
    """Another asset under the same parent (or at the root) has this name."""

    code = "asset_name_taken"


class AssetNotEmpty(Conflict):
    """The asset has children or devices; delete with ``?cascade=true`` to take them along."""

    code = "asset_not_empty"


class AssetCycle(Conflict):
    """The new parent is the asset itself or one of its descendants."""

    code = "asset_cycle"


class AssetLevel(Conflict):
    """The level does not fit the tree: a child's level must be below its parent's (site, area,
    line, equipment, from the top), also for the children of an asset being moved."""

    code = "asset_level"


class SeqConflict(Conflict):
    """A batch reuses a (gateway, seq) already stored with different content: a gateway bug."""

    code = "seq_conflict"


class TooManyNewSeries(CloudError):
    """A batch would create more new series than one batch may (send it in smaller batches)."""

    status = 413
    code = "too_many_new_series"


class InvalidRequest(CloudError):
    """A parameter or field is invalid; `details["path"]` names it."""

    status = 422
    code = "invalid_request"

    def __init__(self, message: str, *, path: list[str | int]) -> None:
        super().__init__(message, details={"path": path})


class RateLimited(CloudError):
    """Over the tenant's rate limit or daily quota; retry after `retry_after` seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str = "rate_limited") -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = max(1, retry_after)
        self.code = code


class StorageError(CloudError):
    """The database failed or cannot be reached."""

    status = 503
    code = "storage_unavailable"


class IngestUnfinished(StorageError):
    """A batch begun by a replica that writes readings through a Citus worker and not finished,
    retried on a replica that writes through the coordinator: that one cannot finish it (the
    worker's claim decides what the first attempt stored), so the gateway retries."""

    code = "ingest_unfinished"
