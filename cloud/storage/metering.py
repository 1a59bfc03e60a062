"""What ingest counts and what it may create: counts that a replay cannot inflate, and the limits
that keep one tenant's gateways from exhausting what other tenants share.

- Usage counts the rows a batch actually stored (a replay of readings under a new seq stores
  nothing and is charged nothing), and the daily quota charges those.
- Drop reports: a batch's `dropped_totals` are running totals per (gateway, outbox life, lane);
  the cloud keeps the largest seen and counts only the growth, so a report sent twice counts
  once. The older `dropped` deltas still add up as before (gateways in the field send them).
- New devices and series: at most `max_new_series` per batch (413 ``too_many_new_series``: the
  uplink sends fewer chunks at a time), and a tenant holds at most `max_devices` devices and
  `max_series` series (429 ``device_limit_reached`` / ``series_limit_reached``, until an
  operator raises the tenant's limits: ``PUT /v1/tenants/{id}/limits``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from cloud.contract import Batch
from cloud.errors import RateLimited, TooManyNewSeries
from cloud.storage.base import Tx

DAY_US: Final = 86_400_000_000
US: Final = 1_000_000
LIMIT_RETRY_S: Final = 300
"""Retry-After of a batch refused for the tenant's device or series limit: an operator's move."""


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    """The limits one batch is held to: the tenant's own, else the service's defaults."""

    quota: int
    max_devices: int
    max_series: int
    max_new_series: int


def check_new_series(policy: IngestPolicy, count: int) -> None:
    """Refuse a batch that would create more series than one batch may."""
    if count > policy.max_new_series:
        raise TooManyNewSeries(
            f"the batch would create {count} new series; at most {policy.max_new_series} per"
            " batch (send fewer at a time)",
            details={"limit": policy.max_new_series, "new_series": count},
        )


async def check_holdings(tx: Tx, tenant_id: int, policy: IngestPolicy) -> None:
    """After creating devices or series: refuse (and so roll back) past the tenant's limits."""
    row = await tx.fetchone(
        "SELECT (SELECT count(*) FROM devices WHERE tenant_id = %s),"
        " (SELECT count(*) FROM series WHERE tenant_id = %s)",
        [tenant_id, tenant_id],
    )
    devices, series = (int(row[0]), int(row[1])) if row else (0, 0)
    for what, held, limit in (("device", devices, policy.max_devices),
                              ("series", series, policy.max_series)):  # fmt: skip
        if held > limit:
            raise RateLimited(
                f"the tenant may hold {limit} {what if what == 'series' else 'devices'}; this"
                f" batch would make {held} (an operator can raise the tenant's limits)",
                retry_after=LIMIT_RETRY_S,
                code=f"{what}_limit_reached",
            )


async def record_drops(tx: Tx, tenant_id: int, gateway_id: int, batch: Batch) -> int:
    """Record the batch's drop reports; the readings newly reported dropped."""
    grown: dict[str, int] = {lane: n for lane, n in batch.dropped.items() if n}
    totals = batch.dropped_totals
    if totals is not None:
        for lane, reported in sorted(totals.lanes.items()):
            known = await _known_total(tx, tenant_id, gateway_id, totals.life, lane)
            if reported > known:
                await tx.execute(
                    "UPDATE gateway_drop_totals SET total = %s"
                    " WHERE gateway_id = %s AND life = %s AND lane = %s",
                    [reported, gateway_id, totals.life, lane],
                )
                grown[lane] = grown.get(lane, 0) + reported - known
    for lane, count in sorted(grown.items()):
        await tx.execute(
            "INSERT INTO gateway_drops AS g (tenant_id, gateway_id, lane, dropped)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (gateway_id, lane)"
            " DO UPDATE SET dropped = g.dropped + excluded.dropped",
            [tenant_id, gateway_id, lane, count],
        )
    return sum(grown.values())


async def _known_total(tx: Tx, tenant_id: int, gateway_id: int, life: str, lane: str) -> int:
    """The largest total stored for (gateway, life, lane), its row locked until the commit (the
    no-op UPDATE takes PostgreSQL's row lock; SQLite has one writer)."""
    await tx.execute(
        "INSERT INTO gateway_drop_totals (tenant_id, gateway_id, life, lane, total)"
        " VALUES (%s, %s, %s, %s, 0) ON CONFLICT (gateway_id, life, lane) DO NOTHING",
        [tenant_id, gateway_id, life, lane],
    )
    await tx.execute(
        "UPDATE gateway_drop_totals SET total = total"
        " WHERE gateway_id = %s AND life = %s AND lane = %s",
        [gateway_id, life, lane],
    )
    row = await tx.fetchone(
        "SELECT total FROM gateway_drop_totals WHERE gateway_id = %s AND life = %s AND lane = %s",
        [gateway_id, life, lane],
    )
    return int(row[0]) if row else 0


async def charge(
    tx: Tx, tenant_id: int, *, stored: int, dropped: int, body_bytes: int, quota: int, now_us: int
) -> None:
    """Count the batch in today's usage: the rows it stored, unless that passes the quota."""
    day = now_us // DAY_US
    # One statement: insert today's row or add to it, unless that would pass the quota.
    # Concurrent batches serialize on the row, so the quota holds across replicas.
    charged = None
    if stored <= quota:
        charged = await tx.fetchone(
            "INSERT INTO usage_daily AS u (tenant_id, day, readings, bytes, batches, dropped)"
            " VALUES (%s, %s, %s, %s, 1, %s) ON CONFLICT (tenant_id, day) DO UPDATE SET"
            " readings = u.readings + excluded.readings, bytes = u.bytes + excluded.bytes,"
            " batches = u.batches + 1, dropped = u.dropped + excluded.dropped"
            " WHERE u.readings + excluded.readings <= %s RETURNING readings",
            [tenant_id, day, stored, body_bytes, dropped, quota],
        )
    if charged is None:
        raise RateLimited(
            f"the tenant's daily quota of {quota} readings is used up",
            retry_after=math.ceil(((day + 1) * DAY_US - now_us) / US),
            code="quota_exceeded",
        )


async def refund(tx: Tx, tenant_id: int, *, readings: int, charged_us: int) -> None:
    """Take back readings a batch was charged in advance but did not store (the split ingest
    charges every reading before writing them and refunds the duplicates after)."""
    if readings:
        await tx.execute(
            "UPDATE usage_daily SET readings = readings - %s WHERE tenant_id = %s AND day = %s",
            [readings, tenant_id, charged_us // DAY_US],
        )
