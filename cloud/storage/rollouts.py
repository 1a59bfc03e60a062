"""Rollouts: a config version sent to one gateway or to every gateway carrying a label, in waves.

The gateways (by id; those with their own assignment are skipped by a label rollout) are cut
into waves of `wave_size` gateways or `wave_percent` of them. A wave starts by making the
version each gateway's desired one; the next starts only when every gateway of the wave
reported ``applied`` (its probation passed). The first gateway that reports ``rolled_back`` or
``refused``, or that reports nothing before its deadline, stops the rollout: no further wave
starts, and the failed gateway's desired version goes back to the one it had, which it runs
again after its own rollback. So a stopped rollout leaves every gateway on a known version.

Nothing here waits: a rollout moves when a gateway's report arrives (inside the ingest
transaction) and when the fleet sweep finds a deadline passed (`due`).
"""

from __future__ import annotations

import math
from typing import Any, Final

from cloud.contract import ConfigReport
from cloud.errors import Conflict, NotFound
from cloud.live import News
from cloud.storage.base import Database, Row, Tx
from cloud.storage.configs import assign, gateway_exists
from cloud.storage.fleet_records import Rollout, RolloutGateway

_ROLLOUT: Final = (
    "id, version_id, target, gateway_id, label_key, label_value, wave_size, wave_percent,"
    " wave_timeout_s, state, reason, created_at, created_by, finished_at"
)
_MEMBER: Final = (
    "m.gateway_id, g.name, m.wave, m.state, m.previous_version, m.started_at, m.deadline,"
    " m.finished_at, m.reason"
)
MEMBER_STATES: Final = ("waiting", "sent", "passed", "failed", "skipped", "cancelled")
ROLLOUT_STATES: Final = ("running", "completed", "stopped", "cancelled", "superseded")
PASSED: Final = frozenset({"applied"})
FAILED: Final = frozenset({"rolled_back", "refused"})
DECLINED: Final = frozenset({"declined"})  # a locally managed gateway: passed by, not failed


def wave_count(gateways: int, *, size: int | None, percent: int | None) -> int:
    """How many gateways go in each wave (at least one)."""
    if size is not None:
        return max(1, size)
    return max(1, math.ceil(gateways * (percent or 100) / 100))


def _member(row: Row) -> RolloutGateway:
    return RolloutGateway(
        gateway_id=row[0], name=row[1], wave=row[2], state=row[3], previous_version=row[4],
        started_at=row[5], deadline=row[6], finished_at=row[7], reason=row[8],
    )  # fmt: skip


class RolloutStore:
    """The tenant's rollouts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        tx: Tx,
        tenant_id: int,
        *,
        version: int,
        gateway_id: int | None,
        label: tuple[str, str] | None,
        wave_size: int | None,
        wave_percent: int | None,
        wave_timeout_s: int,
        by: str,
        now_us: int,
        news: News,
    ) -> int:
        """Start a rollout (superseding a running one to the same target); its id."""
        if not await tx.fetchone(
            "SELECT 1 FROM config_versions WHERE tenant_id = %s AND id = %s", [tenant_id, version]
        ):
            raise NotFound(f"config version {version} not found")
        if gateway_id is not None:
            await gateway_exists(tx, tenant_id, gateway_id)
            if await tx.fetchone(
                "SELECT 1 FROM gateways WHERE id = %s AND revoked_at IS NOT NULL", [gateway_id]
            ):
                raise Conflict(f"gateway {gateway_id} is revoked")
            target, members, skipped = f"gateway {gateway_id}", [gateway_id], list[int]()
        else:
            assert label is not None  # noqa: S101 - the API asks for exactly one target
            target = f"label {label[0]}={label[1]}"
            members, skipped = await self._label_members(tx, tenant_id, label)
        await self._supersede(tx, tenant_id, target, now_us=now_us)
        row = await tx.fetchone(
            "INSERT INTO rollouts (tenant_id, version_id, target, label_key, label_value,"
            " gateway_id, wave_size, wave_percent, wave_timeout_s, state, created_at, created_by)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'running', %s, %s) RETURNING id",
            [tenant_id, version, target, label[0] if label else None, label[1] if label else None,
             gateway_id, wave_size, wave_percent, wave_timeout_s, now_us, by],
        )  # fmt: skip
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
        rollout_id = int(row[0])
        per_wave = wave_count(len(members), size=wave_size, percent=wave_percent)
        for i, member in enumerate(members):
            await self._add(tx, tenant_id, rollout_id, member, wave=i // per_wave + 1,
                            state="waiting", reason=None)  # fmt: skip
        for member in skipped:
            await self._add(tx, tenant_id, rollout_id, member, wave=0, state="skipped",
                            reason="it has its own assignment")  # fmt: skip
        await self.advance(tx, tenant_id, rollout_id, now_us=now_us, news=news)
        return rollout_id

    async def _label_members(
        self, tx: Tx, tenant_id: int, label: tuple[str, str]
    ) -> tuple[list[int], list[int]]:
        rows = await tx.fetch(
            "SELECT g.id, COALESCE(c.pinned, 0) FROM gateway_labels l"
            " JOIN gateways g ON g.tenant_id = l.tenant_id AND g.id = l.gateway_id"
            " LEFT JOIN gateway_configs c ON c.tenant_id = g.tenant_id AND c.gateway_id = g.id"
            " WHERE l.tenant_id = %s AND l.key = %s AND l.value = %s AND g.revoked_at IS NULL"
            " ORDER BY g.id",
            [tenant_id, label[0], label[1]],
        )
        return [int(r[0]) for r in rows if not r[1]], [int(r[0]) for r in rows if r[1]]

    async def _add(
        self, tx: Tx, tenant_id: int, rollout_id: int, gateway_id: int, *, wave: int, state: str,
        reason: str | None,
    ) -> None:  # fmt: skip
        await tx.execute(
            "INSERT INTO rollout_gateways (rollout_id, gateway_id, tenant_id, wave, state, reason,"
            " previous_version) VALUES (%s, %s, %s, %s, %s, %s, (SELECT desired_version FROM"
            " gateway_configs WHERE tenant_id = %s AND gateway_id = %s))",
            [rollout_id, gateway_id, tenant_id, wave, state, reason, tenant_id, gateway_id],
        )

    async def _supersede(self, tx: Tx, tenant_id: int, target: str, *, now_us: int) -> None:
        rows = await tx.fetch(
            "UPDATE rollouts SET state = 'superseded', finished_at = %s,"
            " reason = 'a newer rollout to the same target took over'"
            " WHERE tenant_id = %s AND target = %s AND state = 'running' RETURNING id",
            [now_us, tenant_id, target],
        )
        for (old,) in rows:
            await self._end_waiting(tx, tenant_id, int(old), now_us=now_us)

    async def _end_waiting(self, tx: Tx, tenant_id: int, rollout_id: int, *, now_us: int) -> None:
        await tx.execute(
            "UPDATE rollout_gateways SET state = 'cancelled', finished_at = %s"
            " WHERE tenant_id = %s AND rollout_id = %s AND state = 'waiting'",
            [now_us, tenant_id, rollout_id],
        )

    async def cancel(
        self, tx: Tx, tenant_id: int, rollout_id: int, *, by: str, now_us: int
    ) -> None:
        """Start no further wave; gateways already sent the version keep going."""
        changed = await tx.execute(
            "UPDATE rollouts SET state = 'cancelled', finished_at = %s, reason = %s"
            " WHERE tenant_id = %s AND id = %s AND state = 'running'",
            [now_us, f"cancelled by {by}", tenant_id, rollout_id],
        )
        if not changed:
            found = await self.get_in(tx, tenant_id, rollout_id)
            raise Conflict(f"rollout {rollout_id} is {found.state}, not running")
        await self._end_waiting(tx, tenant_id, rollout_id, now_us=now_us)

    # ------------------------------------------------------------------------------ moving

    async def advance(
        self, tx: Tx, tenant_id: int, rollout_id: int, *, now_us: int, news: News
    ) -> int:
        """Fail what is past its deadline, then stop, start the next wave, or complete; how
        many gateways timed out."""
        # An UPDATE that changes nothing, to lock the row: replicas advancing the same rollout
        # (a report here, a deadline there) take turns, and each sees the other's outcome.
        head = await tx.fetchone(
            "UPDATE rollouts SET state = state WHERE tenant_id = %s AND id = %s"
            " RETURNING state, version_id, target, wave_timeout_s, label_key, label_value",
            [tenant_id, rollout_id],
        )
        if head is None or head[0] != "running":
            return 0
        timed_out = await tx.execute(
            "UPDATE rollout_gateways SET state = 'failed', finished_at = %s, reason = %s"
            " WHERE tenant_id = %s AND rollout_id = %s AND state = 'sent' AND deadline <= %s",
            [now_us, f"no result within {head[3]} s", tenant_id, rollout_id, now_us],
        )
        failed = await tx.fetchone(
            "SELECT gateway_id, reason, previous_version FROM rollout_gateways"
            " WHERE tenant_id = %s AND rollout_id = %s AND state = 'failed'"
            " ORDER BY finished_at, gateway_id LIMIT 1",
            [tenant_id, rollout_id],
        )
        if failed is not None:
            await self._stop(tx, tenant_id, rollout_id, failed, now_us=now_us, news=news)
            return timed_out
        wave = await tx.fetchone(
            "SELECT min(wave), sum(CASE WHEN state = 'sent' THEN 1 ELSE 0 END)"
            " FROM rollout_gateways WHERE tenant_id = %s AND rollout_id = %s"
            " AND state IN ('waiting', 'sent')",
            [tenant_id, rollout_id],
        )
        if wave is None or wave[0] is None:
            await self._complete(tx, tenant_id, rollout_id, head, now_us=now_us, news=news)
        elif not wave[1]:
            await self._start_wave(tx, tenant_id, rollout_id, int(wave[0]), head, now_us=now_us,
                                   news=news)  # fmt: skip
        return timed_out

    async def _start_wave(
        self, tx: Tx, tenant_id: int, rollout_id: int, wave: int, head: Row, *, now_us: int,
        news: News,
    ) -> None:  # fmt: skip
        version, target, timeout = int(head[1]), str(head[2]), int(head[3])
        members = await tx.fetch(
            "SELECT m.gateway_id, c.running_version, c.outcome, c.outcome_version"
            " FROM rollout_gateways m LEFT JOIN gateway_configs c"
            " ON c.tenant_id = m.tenant_id AND c.gateway_id = m.gateway_id"
            " WHERE m.tenant_id = %s AND m.rollout_id = %s AND m.wave = %s",
            [tenant_id, rollout_id, wave],
        )
        for gateway_id, running, outcome, outcome_version in members:
            already = running == version and outcome == "applied" and outcome_version == version
            await tx.execute(
                "UPDATE rollout_gateways SET state = %s, started_at = %s, deadline = %s,"
                " finished_at = %s, reason = %s"
                " WHERE tenant_id = %s AND rollout_id = %s AND gateway_id = %s",
                ["passed" if already else "sent", now_us, now_us + timeout * 1_000_000,
                 now_us if already else None, "runs it already" if already else None,
                 tenant_id, rollout_id, gateway_id],
            )  # fmt: skip
            pin = True if target.startswith("gateway ") else None
            await assign(tx, tenant_id, int(gateway_id), version=version,
                         by=f"rollout {rollout_id}", via="gateway" if pin else target,
                         rollout_id=rollout_id, now_us=now_us, news=news, pin=pin)  # fmt: skip
        if all(m[1] == version and m[2] == "applied" and m[3] == version for m in members):
            await self.advance(tx, tenant_id, rollout_id, now_us=now_us, news=news)

    async def _stop(
        self, tx: Tx, tenant_id: int, rollout_id: int, failed: Row, *, now_us: int, news: News
    ) -> None:
        gateway_id, reason, previous = int(failed[0]), failed[1], failed[2]
        await tx.execute(
            "UPDATE rollouts SET state = 'stopped', finished_at = %s, reason = %s"
            " WHERE tenant_id = %s AND id = %s",
            [now_us, f"gateway {gateway_id} failed: {reason}", tenant_id, rollout_id],
        )
        await self._end_waiting(tx, tenant_id, rollout_id, now_us=now_us)
        await assign(tx, tenant_id, gateway_id, version=previous, by=f"rollout {rollout_id}",
                     via=f"rollout {rollout_id} stopped: back to the version it had",
                     rollout_id=rollout_id, now_us=now_us, news=news)  # fmt: skip

    async def _complete(
        self, tx: Tx, tenant_id: int, rollout_id: int, head: Row, *, now_us: int, news: News
    ) -> None:
        await tx.execute(
            "UPDATE rollouts SET state = 'completed', finished_at = %s"
            " WHERE tenant_id = %s AND id = %s",
            [now_us, tenant_id, rollout_id],
        )
        if head[4] is None:
            return
        # Gateways that joined the label while the rollout ran: not pinned, never assigned.
        late = await tx.fetch(
            "SELECT l.gateway_id FROM gateway_labels l LEFT JOIN gateway_configs c"
            " ON c.tenant_id = l.tenant_id AND c.gateway_id = l.gateway_id"
            " WHERE l.tenant_id = %s AND l.key = %s AND l.value = %s"
            " AND COALESCE(c.pinned, 0) = 0 AND c.desired_version IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM rollout_gateways m WHERE m.tenant_id = l.tenant_id"
            " AND m.rollout_id = %s AND m.gateway_id = l.gateway_id)",
            [tenant_id, head[4], head[5], rollout_id],
        )
        for (gateway_id,) in late:
            await assign(tx, tenant_id, int(gateway_id), version=int(head[1]),
                         by=f"rollout {rollout_id}", via=str(head[2]), rollout_id=rollout_id,
                         now_us=now_us, news=news)  # fmt: skip

    async def on_report(
        self, tx: Tx, tenant_id: int, gateway_id: int, report: ConfigReport, *, now_us: int,
        news: News,
    ) -> None:  # fmt: skip
        """A gateway's outcome for a version: passes or fails it in the rollouts waiting for it."""
        if report.version is None or report.outcome not in PASSED | FAILED | DECLINED:
            return
        rows = await tx.fetch(
            "SELECT m.rollout_id FROM rollout_gateways m JOIN rollouts r"
            " ON r.tenant_id = m.tenant_id AND r.id = m.rollout_id"
            " WHERE m.tenant_id = %s AND m.gateway_id = %s AND m.state = 'sent'"
            " AND r.version_id = %s",
            [tenant_id, gateway_id, report.version],
        )
        state = ("passed" if report.outcome in PASSED
                 else "skipped" if report.outcome in DECLINED else "failed")  # fmt: skip
        reason = None if state == "passed" else f"{report.outcome}: {report.reason or 'no reason'}"
        for (rollout_id,) in rows:
            await tx.execute(
                "UPDATE rollout_gateways SET state = %s, finished_at = %s, reason = %s"
                " WHERE tenant_id = %s AND rollout_id = %s AND gateway_id = %s",
                [state, now_us, reason, tenant_id, rollout_id, gateway_id],
            )
            await self.advance(tx, tenant_id, int(rollout_id), now_us=now_us, news=news)

    # ----------------------------------------------------------------------------- reading

    async def get(self, tenant_id: int, rollout_id: int) -> Rollout:
        """One rollout with every gateway's state."""
        async with self.db.transaction(tenant_id) as tx:
            return await self.get_in(tx, tenant_id, rollout_id)

    async def get_in(self, tx: Tx, tenant_id: int, rollout_id: int) -> Rollout:
        """`get` inside an open transaction."""
        row = await tx.fetchone(
            f"SELECT {_ROLLOUT} FROM rollouts WHERE tenant_id = %s AND id = %s",
            [tenant_id, rollout_id],
        )
        if row is None:
            raise NotFound("rollout not found")
        members = await tx.fetch(
            f"SELECT {_MEMBER} FROM rollout_gateways m JOIN gateways g ON g.id = m.gateway_id"
            " WHERE m.tenant_id = %s AND m.rollout_id = %s ORDER BY m.wave, m.gateway_id",
            [tenant_id, rollout_id],
        )
        return _rollout(row, [_member(m) for m in members])

    async def find(
        self, tenant_id: int, *, state: str | None, before: int | None, limit: int
    ) -> list[Rollout]:
        """Rollouts newest first (without their gateways; counts only)."""
        sql = f"SELECT {_ROLLOUT} FROM rollouts WHERE tenant_id = %s"
        params: list[Any] = [tenant_id]
        for column, op, value in (("state", "=", state), ("id", "<", before)):
            if value is not None:
                sql += f" AND {column} {op} %s"
                params.append(value)
        async with self.db.transaction(tenant_id) as tx:
            rows = await tx.fetch(sql + " ORDER BY id DESC LIMIT %s", [*params, limit])
            out = []
            for row in rows:
                members = await tx.fetch(
                    f"SELECT {_MEMBER} FROM rollout_gateways m JOIN gateways g"
                    " ON g.id = m.gateway_id WHERE m.tenant_id = %s AND m.rollout_id = %s",
                    [tenant_id, row[0]],
                )
                full = _rollout(row, [_member(m) for m in members])
                out.append(full.model_copy(update={"gateways": []}))
        return out

    async def due(self, now_us: int) -> list[tuple[int, int]]:
        """(tenant, rollout) of running rollouts with a gateway past its deadline, every tenant."""
        if self.db.info.backend == "postgresql":
            async with self.db.transaction(None) as tx:
                rows = await tx.fetch("SELECT * FROM tagway_due_rollouts(%s)", [now_us])
        else:
            async with self.db.transaction(None) as tx:
                rows = await tx.fetch(
                    "SELECT DISTINCT tenant_id, rollout_id FROM rollout_gateways"
                    " WHERE state = 'sent' AND deadline <= %s",
                    [now_us],
                )
        return [(int(r[0]), int(r[1])) for r in rows]


def _rollout(row: Row, members: list[RolloutGateway]) -> Rollout:
    counts = dict.fromkeys(MEMBER_STATES, 0)
    for m in members:
        counts[m.state] = counts.get(m.state, 0) + 1
    waves = max((m.wave for m in members), default=0)
    active = [m.wave for m in members if m.state in ("waiting", "sent")]
    label = f"{row[4]}={row[5]}" if row[4] is not None else None
    return Rollout(
        id=row[0], version=row[1], target=row[2], gateway_id=row[3], label=label,
        wave_size=row[6], wave_percent=row[7], wave_timeout_s=row[8], state=row[9],
        reason=row[10], created_at=row[11], created_by=row[12], finished_at=row[13],
        waves=waves, current_wave=min(active) if active and row[9] == "running" else None,
        counts=counts, gateways=members,
    )  # fmt: skip
