"""Config versions on the gateway's disk: what runs, what was last good, what is on trial.

Everything lives next to the config file (``/etc/tagway/config.yaml``)::

    config.yaml                 the file the agent runs (replaced atomically, never edited in place)
    config.yaml.v7              version 7 from the cloud, as received (written once, fsynced)
    config.yaml.local-3f2a9c0e  a local document the gateway ran (by its digest's first 8 hex)
    config.yaml.fleet.json      the record below (the commit point)

The record names the running version, the last good one and, while one is on trial, the
candidate and its phase (``applying``, ``restarting``, ``probation``). Each step writes its files
first and the record last, so after kill -9 or a power cut the record and the files agree:

- ``applying`` or ``probation`` found at start: the agent stopped before the candidate proved
  itself. `recover` puts the last good file back in place (whole, by an atomic rename) and the
  trial counts as ``rolled_back``: the gateway runs the old version, never a mix, and says so.
- ``restarting``: the candidate needed a restart (a section the running agent cannot swap) and
  the agent exited for systemd to start it again; its probation starts now.

Pending reports (an outcome decided while the outbox was closed) wait in the record until the
agent has put them into its outbox.
"""

from __future__ import annotations

import hashlib
import logging
import time
from enum import StrEnum
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from provisioning.files import PUBLIC_MODE, write_atomic

log = logging.getLogger(__name__)

KEEP_FILES: Final = 4
"""Version files kept besides the running and last good ones (the newest)."""
MAX_OUTCOMES: Final = 64


def digest(text: str) -> str:
    """The SHA-256 (hex) of a document's UTF-8 text: the name both sides use for it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Phase(StrEnum):
    """Where a trial of a new config stands."""

    IDLE = "idle"
    APPLYING = "applying"
    RESTARTING = "restarting"
    PROBATION = "probation"


class Version(BaseModel):
    """A config document the gateway ran or tries: the cloud's version (None: a local file)
    and its digest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int | None = None
    digest: str

    @property
    def label(self) -> str:
        """``version 7`` or ``local 3f2a9c0e``."""
        return f"version {self.version}" if self.version is not None else f"local {self.digest[:8]}"


class PendingReport(BaseModel):
    """An outcome to put into the outbox once it is open."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: Version
    outcome: str
    reason: str | None = None
    at: float


class Record(BaseModel):
    """The durable record (``config.yaml.fleet.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: Phase = Phase.IDLE
    running: Version | None = None
    last_good: Version | None = None
    candidate: Version | None = None
    since: float | None = None
    """When the current phase began (Unix time)."""
    expect: tuple[str, ...] = ()
    """The devices the candidate must have connected by the end of its probation."""
    outcomes: dict[int, str] = Field(default_factory=dict)
    """What became of each cloud version tried: a version is tried once."""
    last_outcome: PendingReport | None = None
    pending: tuple[PendingReport, ...] = ()
    report_seq: int = 0
    drift_uploaded: str | None = None
    """The digest of the local document last uploaded as drift."""


class ConfigVersions:
    """The versions next to one config file.

    Args:
        config_path: the file the agent runs.
    """

    def __init__(self, config_path: Path) -> None:
        self.path = config_path
        self.record_path = config_path.with_name(config_path.name + ".fleet.json")
        self.record = self._load()

    # ------------------------------------------------------------------------------ record

    def _load(self) -> Record:
        try:
            return Record.model_validate_json(self.record_path.read_bytes())
        except FileNotFoundError:
            return Record()
        except (OSError, ValidationError) as exc:
            # The record is the commit point; without it the running file is all we know.
            log.warning("config version record %s is unreadable (%s); starting a new one",
                        self.record_path, exc)  # fmt: skip
            return Record()

    def save(self, record: Record) -> None:
        """Make `record` the commit point (atomic, durable)."""
        write_atomic(self.record_path, record.model_dump_json().encode(), mode=PUBLIC_MODE)
        self.record = record

    def update(self, **changes: object) -> Record:
        """Save the record with `changes`."""
        self.save(self.record.model_copy(update=changes))
        return self.record

    def next_seq(self) -> int:
        """Reserve the next report number (at least the wall clock in µs, so a lost record
        never makes the cloud take a new report for an old one)."""
        seq = max(self.record.report_seq + 1, time.time_ns() // 1_000)
        self.update(report_seq=seq)
        return seq

    # ------------------------------------------------------------------------------- files

    def file_of(self, version: Version) -> Path:
        """Where a version's document is kept."""
        suffix = (
            f"v{version.version}" if version.version is not None else f"local-{version.digest[:8]}"
        )
        return self.path.with_name(f"{self.path.name}.{suffix}")

    def current_text(self) -> str:
        """The running file's text."""
        return self.path.read_text(encoding="utf-8")

    def current(self) -> Version:
        """The running file as a version: the record's, when its digest matches; a local
        document otherwise."""
        found = digest(self.current_text())
        running = self.record.running
        if running is not None and running.digest == found:
            return running
        return Version(digest=found)

    def keep(self, version: Version, text: str) -> Path:
        """Write a version's document next to the config (once; fsynced)."""
        target = self.file_of(version)
        if not target.exists() or digest(target.read_text(encoding="utf-8")) != version.digest:
            # the config's own mode: a document may hold the broker's password hashes
            write_atomic(target, text.encode("utf-8"), mode=_mode(self.path))
        return target

    def put_in_place(self, version: Version) -> None:
        """Make `version`'s kept document the running file (an atomic rename)."""
        text = self.file_of(version).read_text(encoding="utf-8")
        if digest(text) != version.digest:
            raise OSError(f"{self.file_of(version)} does not hold {version.label} any more")
        write_atomic(self.path, text.encode("utf-8"), mode=_mode(self.path))

    def adopt_running(self) -> Version:
        """Take the running file as the last good version if the record has none (first start,
        or a lost record), keeping a copy to roll back to."""
        current = self.current()
        if self.record.last_good is None or self.record.running is None:
            self.keep(current, self.current_text())
            self.update(running=current, last_good=current)
        return current

    def prune(self) -> None:
        """Forget old version files, keeping the running, last good and newest ones."""
        record = self.record
        keep = {self.file_of(v) for v in (record.running, record.last_good, record.candidate)
                if v is not None}  # fmt: skip
        kept = sorted(self.path.parent.glob(self.path.name + ".v*"), key=_mtime, reverse=True)
        kept += sorted(self.path.parent.glob(self.path.name + ".local-*"), key=_mtime,
                       reverse=True)  # fmt: skip
        for stale in kept[KEEP_FILES:]:
            if stale not in keep:
                stale.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------- recovery

    def recover(self) -> PendingReport | None:
        """Decide, before the agent loads its config, what an interrupted trial leaves running.

        Returns the outcome to report (None when nothing was interrupted).
        """
        record = self.record
        candidate = record.candidate
        if record.phase is Phase.IDLE or candidate is None:
            return None
        if record.phase is Phase.RESTARTING and self.current().digest == candidate.digest:
            self.update(phase=Phase.PROBATION, since=time.time())
            return None
        reason = (
            f"the agent stopped while applying {candidate.label}"
            if record.phase is Phase.APPLYING
            else f"the agent stopped during the probation of {candidate.label}"
        )
        return self.roll_back(reason)

    def roll_back(self, reason: str) -> PendingReport:
        """Put the last good version back in place; the candidate's trial ends rolled back."""
        record = self.record
        candidate, good = record.candidate, record.last_good
        assert candidate is not None  # noqa: S101 - a trial has its candidate
        assert good is not None  # noqa: S101 - and a last good version to return to
        if self.current().digest != good.digest:
            self.put_in_place(good)
        report = PendingReport(candidate=candidate, outcome="rolled_back", reason=reason,
                               at=time.time())  # fmt: skip
        outcomes = _bounded(record.outcomes, candidate, "rolled_back")
        self.update(phase=Phase.IDLE, candidate=None, since=None, running=good,
                    outcomes=outcomes, last_outcome=report,
                    pending=(*record.pending, report))  # fmt: skip
        log.warning("config: rolled back to %s: %s", good.label, reason)
        return report


def _bounded(outcomes: dict[int, str], candidate: Version, outcome: str) -> dict[int, str]:
    if candidate.version is None:
        return outcomes
    kept = dict(sorted(outcomes.items())[-(MAX_OUTCOMES - 1) :])
    kept[candidate.version] = outcome
    return kept


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return PUBLIC_MODE


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
