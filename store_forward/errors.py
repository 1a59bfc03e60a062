"""The outbox error tree. SQLite (apsw) errors are translated into these at the boundary with
``raise ... from exc``, so callers never import apsw to catch what the outbox raises.

    OutboxError                 root of everything `store_forward` raises
    ├── InvalidChunk            a payload, count, lane or lease limit that cannot be stored
    ├── OutboxClosed            the outbox was used after `close()`
    ├── OutboxMissing           `read_stats()` found no outbox at the path
    ├── OutboxFull              an append does not fit the quota (policy ``reject_new``, or only
    │                           alarms and in-flight chunks are left to drop); nothing was stored
    ├── DiskFull                the disk (or SQLite's page limit) is full; the transaction was
    │                           rolled back and the outbox is unchanged
    ├── SchemaTooNew            the file was written by a newer tagway; it is left untouched
    ├── OutboxDamaged           the file is corrupt and could not be moved aside, or corruption
    │                           was found while running (reopen to recover)
    ├── OutboxBusy              another process held the write lock past the busy timeout
    └── StorageError            any other SQLite or OS failure
"""

from __future__ import annotations


class OutboxError(Exception):
    """Root of the errors raised by `store_forward`."""


class InvalidChunk(OutboxError, ValueError):
    """An argument the outbox cannot store: empty or non-bytes payload, negative count, a lease
    limit below one."""


class OutboxClosed(OutboxError):
    """The outbox was used after `close()`."""


class OutboxMissing(OutboxError):
    """There is no outbox file at the path given to `read_stats()`."""


class OutboxFull(OutboxError):
    """An append does not fit the quota and the policy forbids (or cannot make) room.

    Args:
        message: what did not fit and why.
        needed: payload bytes of the refused append.
        used: payload bytes stored when it was refused.
        quota: the quota in bytes.
    """

    def __init__(self, message: str, *, needed: int, used: int, quota: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.used = used
        self.quota = quota


class DiskFull(OutboxError):
    """The disk, or SQLite's page limit, is full. The transaction was rolled back: nothing of the
    failed call was stored and everything committed before it is intact."""


class SchemaTooNew(OutboxError):
    """The outbox file was written by a newer tagway (a downgrade). The file is left untouched.

    Args:
        message: the path and both versions.
        found: the schema version in the file.
        supported: the newest schema version this code knows.
    """

    def __init__(self, message: str, *, found: int, supported: int) -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported


class OutboxDamaged(OutboxError):
    """The outbox file is corrupt. Raised while running (close and reopen: opening moves the
    damaged file aside) or when a damaged file could not be moved aside."""


class OutboxBusy(OutboxError):
    """Another process held the database lock longer than the busy timeout."""


class StorageError(OutboxError):
    """Any other SQLite or operating-system failure, with the SQLite message."""
