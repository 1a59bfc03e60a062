"""The wire contract's errors: each carries an HTTP status, a stable code and details, so the
cloud answers them as they are and the CLI prints them in one line.

    ContractError
    ├── PayloadTooLarge        413: body, decompressed size or a count over the limit
    │   └── ChunkTooExpansive  413: a chunk decompresses past its own budget (ratio, readings)
    ├── UnsupportedEncoding    415: unknown Content-Type or Content-Encoding
    └── InvalidBatch           422: malformed or wrong-typed; `details["path"]` names the field
        └── ChunkError         422: a chunk that cannot be decoded (damaged, unknown version)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Path = tuple[str | int, ...]


class ContractError(Exception):
    """Root of the wire-contract errors.

    Args:
        message: what was wrong, for people.
        details: machine-readable context (`path` for 422s, `limit` for 413s).
    """

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class PayloadTooLarge(ContractError):
    """The body, its decompressed form or its reading count exceeds a stated limit."""

    status = 413
    code = "payload_too_large"


class ChunkTooExpansive(PayloadTooLarge):
    """A chunk decompresses to more than its own budget allows: far more than its compressed
    size and the readings it declares can explain (a decompression bomb), refused at the budget,
    before the rest is inflated. ``details`` names the chunk (`path`) and the budget (`limit`)."""

    code = "chunk_too_expansive"


class UnsupportedEncoding(ContractError):
    """The Content-Type or Content-Encoding is not one the contract knows."""

    status = 415
    code = "unsupported_media_type"


class InvalidBatch(ContractError):
    """The batch is malformed or a field has the wrong type; `details["path"]` names the field."""

    status = 422
    code = "invalid_batch"

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message, details={"path": list(path)})
        self.path = path


class ChunkError(InvalidBatch):
    """A chunk cannot be decoded (unknown version, damaged); the message says which and why.

    Args:
        message: what is wrong with it.
        path: where the chunk sits in a batch (``("chunks", 3)``); empty outside one.
    """

    code = "invalid_chunk"

    def __init__(self, message: str, *, path: Path = ()) -> None:
        super().__init__(message, path=path)
