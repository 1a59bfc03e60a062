"""The fleet sweep: one task per replica that moves rollouts past their deadlines and keeps
the per-tenant fleet gauges current.

Rollouts move by themselves when a gateway's report arrives (inside the ingest transaction);
a gateway that reports nothing needs a clock, and that is this sweep. Any number of replicas
may run it at once: `RolloutStore.advance` locks the rollout's row first, so a deadline is
acted on once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from cloud.errors import StorageError
from cloud.health import HEALTH_STATES
from cloud.metrics import CloudMetrics
from cloud.settings import CloudSettings
from cloud.storage.fleet_records import FleetCounts
from cloud.storage.repository import Repository
from cloud.storage.rollouts import RolloutStore
from cloud.storage.status import StatusStore

log = logging.getLogger("tagway.cloud.fleet")


def publish_counts(
    metrics: CloudMetrics, counts: Sequence[FleetCounts], *, max_tenants: int
) -> None:
    """Set the fleet gauges: the `max_tenants` largest tenants by name, the rest as ``other``."""
    ranked = sorted(counts, key=lambda c: (-c.gateways, c.tenant_id))
    named, rest = ranked[:max_tenants], ranked[max_tenants:]
    gauge = metrics.fleet_gateways
    gauge.clear()  # no await until every value is set again: a scrape never sees a gap
    for c in named:
        for health in HEALTH_STATES:
            gauge.labels(str(c.tenant_id), health).set(getattr(c, health))
    if rest:
        for health in HEALTH_STATES:
            gauge.labels("other", health).set(sum(getattr(c, health) for c in rest))


async def sweep_once(
    *, repo: Repository, rollouts: RolloutStore, status: StatusStore, metrics: CloudMetrics,
    settings: CloudSettings,
) -> None:  # fmt: skip
    """Fail the rollout gateways past their deadline, then refresh the gauges."""
    now = time.time_ns() // 1000
    for tenant_id, rollout_id in await rollouts.due(now):
        async with repo.live(tenant_id) as (tx, news):
            failed = await rollouts.advance(tx, tenant_id, rollout_id, now_us=now, news=news)
        metrics.rollout_failures.inc(failed)
    counts = await status.all_counts(now_us=now)
    publish_counts(metrics, counts, max_tenants=settings.metrics_max_tenants)


async def run_fleet_sweep(
    *, repo: Repository, rollouts: RolloutStore, status: StatusStore, metrics: CloudMetrics,
    settings: CloudSettings,
) -> None:  # fmt: skip
    """`sweep_once` every `fleet_sweep_s`, until cancelled; a database error is logged and
    the next round tries again."""
    while True:
        try:
            await sweep_once(repo=repo, rollouts=rollouts, status=status, metrics=metrics,
                             settings=settings)  # fmt: skip
        except StorageError as exc:
            log.warning("fleet sweep failed: %s", exc.message)
        await asyncio.sleep(settings.fleet_sweep_s)
