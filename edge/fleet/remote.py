"""Remote configuration on the gateway: a config version from the cloud is validated, written
next to the config file, applied through the reload path, and kept only if it passes probation.

The steps of one trial, each reported to the cloud through the outbox (`ConfigReport`)::

    desired version (channel) → fetch → validate ──invalid──▶ refused (problems with line, field)
        → keep ``config.yaml.vN`` → record "applying" → put in place → reload
        → (a section needs a restart: record "restarting", exit 75 for systemd; probation
           starts with the next process)
        → record "probation" → devices connected before reconnect, new ones connect, the uplink
           succeeds, within ``fleet.probation`` seconds
        → applied (the new last good version)  or  rolled back (the last good file put back)

A gateway is cloud-managed or locally managed (``fleet.managed_by``). A locally managed one
declines what the cloud sends (its rollout passes it by) until an installer runs ``tagway config
pull``; on a cloud-managed
one, a file edited on the gateway and reloaded is reported as ``drift`` and shown to the cloud.
A version is tried once: after a refusal or a rollback, the cloud must send a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cloud.contract import AnyEvent, ConfigOutcome, ConfigProblem, ConfigReport, DesiredConfig
from edge.config import AgentConfig, ConfigError, load_config
from edge.errors import EdgeError
from edge.fleet.cloud_client import CloudConfigClient, CloudConfigError
from edge.fleet.probation import Goal, Observed, watch
from edge.fleet.versions import ConfigVersions, PendingReport, Phase, Version, digest
from edge.reload import ReloadResult

log = logging.getLogger(__name__)

EX_RESTART = 75
"""The agent's exit status when a new config needs a restart (systemd restarts it)."""


class RemoteConfigError(EdgeError):
    """A config action the installer asked for (pull, push) cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a trial ended: ``applied``, ``rolled_back``, ``refused`` or ``restarting``."""

    outcome: str
    version: Version
    reason: str | None = None
    problems: tuple[ConfigProblem, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentHooks:
    """What remote configuration needs of the running agent.

    Args:
        config: the running config.
        reload: reread the config file and apply it (the SIGHUP path).
        observe: the devices' links and the uplink's last success.
        emit: put config reports into the outbox's event lane.
        restart: stop the agent with `EX_RESTART` so systemd starts it again.
    """

    config: Callable[[], AgentConfig]
    reload: Callable[[], Awaitable[ReloadResult]]
    observe: Callable[[], Observed]
    emit: Callable[[Sequence[AnyEvent]], Awaitable[None]]
    restart: Callable[[], None]


def validate(path: Path) -> tuple[AgentConfig | None, tuple[ConfigProblem, ...]]:
    """The config in `path` checked by the agent's own loader (what `tagway config validate`
    runs): the config, or every problem with its line and field."""
    try:
        return load_config(path), ()
    except ConfigError as exc:
        return None, tuple(
            ConfigProblem(line=i.line, path=i.path[:500], message=i.message[:4_000])
            for i in exc.issues[:50]
        )


class RemoteConfig:
    """Applies config versions with a probation, and reports every step.

    Args:
        versions: the version files and record next to the config file.
        hooks: the running agent.
        cloud: the cloud's config endpoints (None: no cloud, so nothing remote to apply).
    """

    def __init__(
        self, *, versions: ConfigVersions, hooks: AgentHooks, cloud: CloudConfigClient | None
    ) -> None:
        self.versions = versions
        self.hooks = hooks
        self.cloud = cloud
        self.desired: DesiredConfig | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------------------- inputs

    def offer(self, desired: DesiredConfig) -> None:
        """The cloud's desired version (from the channel); the worker acts on the newest."""
        self.desired = desired
        self._wake.set()

    @property
    def managed(self) -> Literal["cloud", "local"]:
        """``cloud`` or ``local``, as the running config says."""
        return self.hooks.config().fleet.managed_by

    # ------------------------------------------------------------------------------- worker

    async def run(self) -> None:
        """Report what start-up recovery decided, finish a probation a restart interrupted,
        note a file edited while the agent was stopped, then act on each desired version the
        channel brings."""
        await self._flush_pending()
        if self.versions.record.phase is Phase.IDLE:
            await self.check_drift()
        if self.versions.record.phase is Phase.PROBATION:
            async with self._lock:
                await self._finish_probation(restarted=True)
        while True:
            await self._wake.wait()
            self._wake.clear()
            desired = self.desired
            if desired is not None:
                async with self._lock:
                    await self._consider(desired)

    async def _consider(self, desired: DesiredConfig) -> None:
        record = self.versions.record
        if desired.version == 0 or desired.digest is None or record.phase is not Phase.IDLE:
            return
        wanted = Version(version=desired.version, digest=desired.digest)
        if desired.version in record.outcomes:
            return  # tried once: refused or rolled back; the cloud must send a new version
        if record.running is not None and record.running == wanted:
            return
        if self.versions.current().digest == desired.digest:
            await self._already_running(wanted)
            return
        if self.managed != "cloud":
            reason = ("this gateway is managed locally (fleet.managed_by: local); run "
                      "`tagway config pull` on it to take the cloud's version")  # fmt: skip
            self.versions.update(outcomes={**record.outcomes, desired.version: "declined"})
            await self._report(wanted, "declined", reason=reason)
            return
        try:
            document = await self._cloud().fetch(desired.version)
        except CloudConfigError as exc:
            log.warning("config version %d not fetched: %s", desired.version, exc)
            return  # the channel offers it again on its next connection
        await self.trial(wanted, document.document)

    async def _already_running(self, version: Version) -> None:
        """The file already is that document (adopted, or pushed unchanged): record it."""
        self.versions.keep(version, self.versions.current_text())
        self.versions.update(running=version, last_good=version,
                             outcomes={**self.versions.record.outcomes,
                                       version.version or 0: "applied"})  # fmt: skip
        await self._report(version, "applied", reason="the gateway runs this document already")

    # ------------------------------------------------------------------------------ a trial

    async def trial(self, candidate: Version, text: str) -> Outcome:
        """Validate, apply and prove `candidate`; roll back if it fails (see the module)."""
        versions = self.versions
        good = versions.adopt_running()
        path = versions.keep(candidate, text)
        new, problems = validate(path)
        if new is None:
            return await self._refuse(candidate, "the config does not validate", problems)
        config = self.hooks.config()
        links = self.hooks.observe().links
        before = sorted(name for name, link in links.items() if link.connected)
        added = {d.name for d in new.devices} - {d.name for d in config.devices}
        expect = sorted(set(before) & {d.name for d in new.devices} | added)
        versions.update(phase=Phase.APPLYING, candidate=candidate, since=time.time(),
                        last_good=good, expect=tuple(expect))  # fmt: skip
        await self._report(candidate, "applying")
        versions.put_in_place(candidate)
        result = await self.hooks.reload()
        if not result.applied:
            versions.put_in_place(good)
            versions.update(phase=Phase.IDLE, candidate=None, since=None)
            await self.hooks.reload()
            return await self._refuse(candidate, f"the reload refused it: {result.error}", ())
        if result.needs_restart:
            versions.update(phase=Phase.RESTARTING, since=time.time())
            log.warning("config %s needs a restart (%s): restarting", candidate.label,
                        ", ".join(result.needs_restart))  # fmt: skip
            self.hooks.restart()
            return Outcome("restarting", candidate)
        versions.update(phase=Phase.PROBATION, since=time.time())
        return await self._finish_probation(restarted=False)

    async def _finish_probation(self, *, restarted: bool) -> Outcome:
        versions = self.versions
        record = versions.record
        candidate = record.candidate
        assert candidate is not None  # noqa: S101 - a probation has its candidate
        probation = self.hooks.config().fleet.probation
        since = record.since or time.time()
        uplink_after = since if self.hooks.config().cloud is not None else None
        goal = Goal(devices=frozenset(record.expect), uplink_after=uplink_after)
        await self._report(candidate, "probation", probation_s=probation)
        log.info("config %s applied%s; probation of %g s", candidate.label,
                 " after a restart" if restarted else "", probation)  # fmt: skip
        reason = await watch(goal, self.hooks.observe, limit_s=probation)
        if reason is None:
            outcomes = {**record.outcomes}
            if candidate.version is not None:
                outcomes[candidate.version] = "applied"
            versions.update(phase=Phase.IDLE, candidate=None, since=None, running=candidate,
                            last_good=candidate, outcomes=outcomes, expect=())  # fmt: skip
            versions.prune()
            log.info("config %s passed its probation", candidate.label)
            await self._report(candidate, "applied")
            return Outcome("applied", candidate)
        return await self._roll_back(candidate, f"probation failed: {reason}")

    async def _roll_back(self, candidate: Version, reason: str) -> Outcome:
        report = self.versions.roll_back(reason)
        result = await self.hooks.reload()
        await self._flush_pending()
        if result.needs_restart:
            self.hooks.restart()
        return Outcome("rolled_back", candidate, report.reason)

    async def _refuse(
        self, candidate: Version, reason: str, problems: tuple[ConfigProblem, ...]
    ) -> Outcome:
        record = self.versions.record
        if candidate.version is not None:
            self.versions.update(outcomes={**record.outcomes, candidate.version: "refused"})
        lines = "".join(f"\n  {p.line or '?'}: {p.path}: {p.message}" for p in problems)
        log.error("config %s refused: %s%s", candidate.label, reason, lines)
        await self._report(candidate, "refused", reason=reason, problems=problems)
        return Outcome("refused", candidate, reason, problems)

    # ------------------------------------------------------------------------------ reports

    async def _flush_pending(self) -> None:
        pending = self.versions.record.pending
        for item in pending:
            await self._report(item.candidate, "rolled_back", reason=item.reason, at=item.at)
        if pending:
            self.versions.update(pending=())

    async def _report(
        self, about: Version, outcome: ConfigOutcome, *, reason: str | None = None,
        problems: tuple[ConfigProblem, ...] = (), probation_s: float | None = None,
        at: float | None = None,
    ) -> None:  # fmt: skip
        record = self.versions.record
        running = record.running or self.versions.current()
        report = ConfigReport(
            type="config", seq=self.versions.next_seq(), version=about.version,
            digest=about.digest, outcome=outcome,
            reason=reason[:4_000] if reason else None, problems=list(problems),
            running_version=running.version, running_digest=running.digest,
            managed=self.managed, probation_s=probation_s,
            at=int((at or time.time()) * 1_000_000),
        )  # fmt: skip
        last = PendingReport(candidate=about, outcome=outcome, reason=reason,
                             at=at or time.time())  # fmt: skip
        self.versions.update(last_outcome=last)
        await self.hooks.emit([report])

    # --------------------------------------------------------------------- local edits, CLI

    async def after_reload(self, result: ReloadResult) -> None:
        """A reload not of our making (SIGHUP): a local edit now runs. On a cloud-managed
        gateway it is drift, shown to the cloud."""
        if not result.applied or self._lock.locked():
            return
        await self.check_drift()

    async def check_drift(self) -> None:
        """Note a running file that is no version the record knows; report it as drift once."""
        versions = self.versions
        if versions.record.phase is not Phase.IDLE:
            return
        current = versions.current()
        if current.version is None and (versions.record.running or current) != current:
            versions.keep(current, versions.current_text())
            versions.update(running=current, last_good=current)
        ran_cloud_versions = "applied" in versions.record.outcomes.values()
        if self.managed != "cloud" or current.version is not None or not ran_cloud_versions:
            return  # drift is a departure from what the cloud sent; there is none to depart from
        if versions.record.drift_uploaded == current.digest:
            return
        log.warning("config: %s was edited on the gateway (drift from the cloud's version)",
                    versions.path)  # fmt: skip
        await self._report(current, "drift", reason="the config file was edited on the gateway")
        if self.cloud is not None:
            try:
                await self.cloud.upload_local(versions.current_text())
            except CloudConfigError as exc:
                log.warning("config: the drifted file was not uploaded: %s", exc)
                return
        versions.update(drift_uploaded=current.digest)

    async def pull(self) -> Outcome:
        """`tagway config pull`: take the cloud's version for this gateway now, whatever
        ``managed_by`` says, with the same validation and probation."""
        async with self._lock:
            if self.versions.record.phase is not Phase.IDLE:
                raise RemoteConfigError("a config trial is running; wait for its outcome")
            try:
                document = await self._cloud().fetch(None)
            except CloudConfigError as exc:
                raise RemoteConfigError(f"cannot fetch the cloud's config: {exc}") from exc
            wanted = Version(version=document.version, digest=document.digest)
            if self.versions.current().digest == document.digest:
                await self._already_running(wanted)
                return Outcome("applied", wanted, "the gateway runs this document already")
            return await self.trial(wanted, document.document)

    async def push(self) -> int:
        """`tagway config push`: the file on the gateway becomes the cloud's version for it."""
        async with self._lock:
            versions = self.versions
            if versions.record.phase is not Phase.IDLE:
                raise RemoteConfigError("a config trial is running; wait for its outcome")
            text = versions.current_text()
            try:
                number = await self._cloud().adopt(text)
            except CloudConfigError as exc:
                raise RemoteConfigError(f"the cloud did not take the file: {exc}") from exc
            version = Version(version=number, digest=digest(text))
            await self._already_running(version)
            versions.update(drift_uploaded=None)
            return number

    def _cloud(self) -> CloudConfigClient:
        if self.cloud is None:
            raise RemoteConfigError("this gateway has no cloud section: nothing to pull or push")
        return self.cloud
