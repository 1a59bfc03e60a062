"""Gateway status documents and the health the cloud derives from them.

The newest status document of each gateway (by the gateway's own `seq`: a late copy never
replaces a newer one) is kept with the health `cloud.health.assess` found in it. A change of
health, or of the causes behind a degraded one, is also kept as a `HealthEvent` at the gateway's
time, so after an outage the cloud knows when the gateway was degraded while it could not tell.
``offline`` is decided when asked: no batch from the gateway for `offline_after_s`.
"""

from __future__ import annotations

import json
from typing import Any, Final

from cloud.contract import ConfigReport, StatusReport
from cloud.health import HEALTH_STATES, HealthPolicy, assess
from cloud.live import News
from cloud.storage.base import Database, Row, Tx
from cloud.storage.configs import ensure_row, gateway_exists, log_event
from cloud.storage.fleet_records import FleetCounts, GatewayStatus, HealthEvent
from cloud.storage.records import Gateway, GatewayHealth
from cloud.storage.rollouts import RolloutStore

US: Final = 1_000_000
EVENTS_SHOWN: Final = 50


def health_sql(offline_after_us: int, now_us: int) -> tuple[str, list[Any]]:
    """The SQL expression of a gateway's health (`g` the gateway, `s` its status row)."""
    sql = (
        "CASE WHEN g.last_seen_at IS NULL OR g.last_seen_at < %s THEN 'offline'"
        " ELSE COALESCE(s.health, 'unknown') END"
    )
    return sql, [now_us - offline_after_us]


def health_of(row: Row, *, now_us: int, policy: HealthPolicy) -> GatewayHealth:
    """A `GatewayHealth` from (last_seen_at, health, reasons, health_since, ts)."""
    last_seen, health, reasons, since, status_at = row
    if last_seen is None or last_seen < now_us - int(policy.offline_after_s * US):
        return GatewayHealth(
            state="offline",
            reasons=[f"no contact for more than {policy.offline_after_s:.0f} s"],
            since=last_seen, last_contact_at=last_seen, status_at=status_at,
        )  # fmt: skip
    return GatewayHealth(
        state=health or "unknown", reasons=json.loads(reasons) if reasons else [],
        since=since, last_contact_at=last_seen, status_at=status_at,
    )  # fmt: skip


async def apply_status(
    tx: Tx, tenant_id: int, gateway_id: int, status: StatusReport, *, now_us: int,
    policy: HealthPolicy,
) -> None:  # fmt: skip
    """Keep the document if it is the newest; record a change of health."""
    known = await tx.fetchone(
        "SELECT seq, health, reasons FROM gateway_status WHERE tenant_id = %s AND gateway_id = %s",
        [tenant_id, gateway_id],
    )
    if known is not None and known[0] >= status.seq:
        return  # a replay, or an older document arriving late
    health, reasons = assess(status, policy)
    texts = [r.text for r in reasons]
    keys = sorted(r.key for r in reasons)
    before = (known[1], _keys(known[2])) if known is not None else None
    changed = before != (health, keys)
    document = status.model_dump_json(exclude={"type"}, exclude_none=True)
    await tx.execute(
        "INSERT INTO gateway_status (gateway_id, tenant_id, seq, ts, received_at, document,"
        " health, reasons, health_since) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (gateway_id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts,"
        " received_at = excluded.received_at, document = excluded.document,"
        " health = excluded.health, reasons = excluded.reasons, health_since = CASE"
        " WHEN gateway_status.health = excluded.health THEN gateway_status.health_since"
        " ELSE excluded.health_since END"
        " WHERE gateway_status.seq < excluded.seq",  # two batches at once: the newer one wins
        [gateway_id, tenant_id, status.seq, status.ts, now_us, document, health,
         json.dumps([{"key": r.key, "text": r.text} for r in reasons]), status.ts],
    )  # fmt: skip
    if changed:
        await tx.execute(
            "INSERT INTO gateway_health_events (tenant_id, gateway_id, at, health, reasons)"
            " VALUES (%s, %s, %s, %s, %s)",
            [tenant_id, gateway_id, status.ts, health, json.dumps(texts)],
        )


def _keys(stored: str | None) -> list[str]:
    return sorted(r["key"] for r in json.loads(stored or "[]"))


def _texts(stored: str | None) -> str:
    return json.dumps([r["text"] for r in json.loads(stored or "[]")])


async def apply_config_report(
    tx: Tx, tenant_id: int, gateway_id: int, report: ConfigReport, *, now_us: int, news: News,
    rollouts: RolloutStore,
) -> None:  # fmt: skip
    """Record a step of applying a config on the gateway, once, and move its rollouts."""
    await ensure_row(tx, tenant_id, gateway_id)
    changed = await tx.execute(
        "UPDATE gateway_configs SET report_seq = %s, managed = %s, running_version = %s,"
        " running_digest = %s, outcome = %s, outcome_version = %s, outcome_digest = %s,"
        " reason = %s, problems = %s, outcome_at = %s,"
        " last_good_version = CASE WHEN %s THEN %s ELSE last_good_version END,"
        " local_digest = CASE WHEN %s THEN %s ELSE local_digest END,"
        " local_at = CASE WHEN %s AND (local_digest IS NULL OR local_digest <> %s) THEN %s"
        " ELSE local_at END"
        " WHERE tenant_id = %s AND gateway_id = %s AND report_seq < %s",
        [report.seq, report.managed, report.running_version, report.running_digest,
         report.outcome, report.version, report.digest, report.reason,
         json.dumps([p.model_dump(exclude_none=True) for p in report.problems]), report.at,
         report.outcome == "applied" and report.version is not None, report.version,
         report.outcome == "drift", report.digest,
         report.outcome == "drift", report.digest, report.at,
         tenant_id, gateway_id, report.seq],
    )  # fmt: skip
    if not changed:
        return  # a replay, or an older report arriving late
    detail: dict[str, Any] = {"digest": report.digest, "running_version": report.running_version}
    if report.reason:
        detail["reason"] = report.reason
    if report.problems:
        detail["problems"] = [p.model_dump(exclude_none=True) for p in report.problems]
    await log_event(tx, tenant_id, gateway_id, at=report.at, kind=report.outcome,
                    version=report.version, by=f"gateway {gateway_id}", detail=detail)  # fmt: skip
    await rollouts.on_report(tx, tenant_id, gateway_id, report, now_us=now_us, news=news)


class StatusStore:
    """The tenant's gateways' status and health."""

    def __init__(self, db: Database, policy: HealthPolicy) -> None:
        self.db = db
        self.policy = policy

    @property
    def offline_after_us(self) -> int:
        """No contact for this long makes a gateway offline."""
        return int(self.policy.offline_after_s * US)

    async def of(self, tenant_id: int, gateway_id: int, *, now_us: int) -> GatewayStatus:
        """The gateway's health, newest status document and recent changes of health."""
        async with self.db.transaction(tenant_id) as tx:
            await gateway_exists(tx, tenant_id, gateway_id)
            row = await tx.fetchone(
                "SELECT g.last_seen_at, s.health, s.reasons, s.health_since, s.ts, s.document,"
                " s.received_at FROM gateways g LEFT JOIN gateway_status s ON s.gateway_id = g.id"
                " WHERE g.tenant_id = %s AND g.id = %s",
                [tenant_id, gateway_id],
            )
            events = await tx.fetch(
                "SELECT at, health, reasons FROM gateway_health_events"
                " WHERE tenant_id = %s AND gateway_id = %s ORDER BY id DESC LIMIT %s",
                [tenant_id, gateway_id, EVENTS_SHOWN],
            )
        assert row is not None  # noqa: S101 - the gateway exists (checked above)
        health = health_of((row[0], row[1], _texts(row[2]) if row[2] else None, row[3], row[4]),
                           now_us=now_us, policy=self.policy)  # fmt: skip
        return GatewayStatus(
            gateway_id=gateway_id, health=health,
            status=json.loads(row[5]) if row[5] else None, received_at=row[6],
            events=[HealthEvent(at=e[0], state=e[1], reasons=json.loads(e[2])) for e in events],
        )  # fmt: skip

    async def counts(self, tenant_id: int, *, now_us: int) -> FleetCounts:
        """Gateways of the tenant per health (revoked ones left out)."""
        expr, params = health_sql(self.offline_after_us, now_us)
        async with self.db.transaction(tenant_id) as tx:
            rows = await tx.fetch(
                f"SELECT {expr}, count(*) FROM gateways g LEFT JOIN gateway_status s"
                " ON s.gateway_id = g.id WHERE g.tenant_id = %s AND g.revoked_at IS NULL"
                " GROUP BY 1",
                [*params, tenant_id],
            )
        return _counts(tenant_id, [(tenant_id, r[0], r[1]) for r in rows])

    async def all_counts(self, *, now_us: int) -> list[FleetCounts]:
        """Every tenant's counts (for the metrics: the only question across tenants)."""
        async with self.db.transaction(None) as tx:
            if self.db.info.backend == "postgresql":
                rows = await tx.fetch(
                    "SELECT * FROM tagway_fleet_health(%s, %s)", [now_us, self.offline_after_us]
                )
            else:
                expr, params = health_sql(self.offline_after_us, now_us)
                rows = await tx.fetch(
                    f"SELECT g.tenant_id, {expr}, count(*) FROM gateways g LEFT JOIN"
                    " gateway_status s ON s.gateway_id = g.id WHERE g.revoked_at IS NULL"
                    " GROUP BY 1, 2",
                    params,
                )
        by_tenant: dict[int, list[tuple[int, str, int]]] = {}
        for tenant, health, n in rows:
            by_tenant.setdefault(int(tenant), []).append((int(tenant), str(health), int(n)))
        return [_counts(t, r) for t, r in sorted(by_tenant.items())]


def _counts(tenant_id: int, rows: list[tuple[int, str, int]]) -> FleetCounts:
    per = dict.fromkeys(HEALTH_STATES, 0)
    for _, health, n in rows:
        per[health] = per.get(health, 0) + int(n)
    return FleetCounts(tenant_id=tenant_id, gateways=sum(per.values()), **per)


class GatewayFacts:
    """Labels and health added to the gateways the registry lists (`GET /v1/gateways`)."""

    def __init__(self, store: StatusStore) -> None:
        self.store = store

    async def annotate(
        self, tenant_id: int, gateways: list[Gateway], *, now_us: int
    ) -> list[Gateway]:
        """The gateways with their labels and health."""
        if not gateways:
            return []
        async with self.store.db.transaction(tenant_id) as tx:
            labels = await tx.fetch(
                "SELECT gateway_id, key, value FROM gateway_labels WHERE tenant_id = %s",
                [tenant_id],
            )
            status = await tx.fetch(
                "SELECT gateway_id, health, reasons, health_since, ts FROM gateway_status"
                " WHERE tenant_id = %s",
                [tenant_id],
            )
        by_gateway: dict[int, dict[str, str]] = {}
        for gateway_id, key, value in labels:
            by_gateway.setdefault(int(gateway_id), {})[key] = value
        known = {int(r[0]): r[1:] for r in status}
        out = []
        for g in gateways:
            s = known.get(g.id, (None, None, None, None))
            health = health_of((g.last_seen_at, s[0], _texts(s[1]) if s[1] else None, s[2], s[3]),
                               now_us=now_us, policy=self.store.policy)  # fmt: skip
            out.append(g.model_copy(update={"labels": by_gateway.get(g.id, {}), "health": health}))
        return out

    async def set_labels(self, tenant_id: int, gateway_id: int, labels: dict[str, str]) -> None:
        """Replace the gateway's labels."""
        async with self.store.db.transaction(tenant_id) as tx:
            await gateway_exists(tx, tenant_id, gateway_id)
            await tx.execute(
                "DELETE FROM gateway_labels WHERE tenant_id = %s AND gateway_id = %s",
                [tenant_id, gateway_id],
            )
            for key, value in sorted(labels.items()):
                await tx.execute(
                    "INSERT INTO gateway_labels (tenant_id, gateway_id, key, value)"
                    " VALUES (%s, %s, %s, %s)",
                    [tenant_id, gateway_id, key, value],
                )
