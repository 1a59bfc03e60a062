"""Telemetry reads (raw with cursor pages, bucketed aggregates) and usage."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import date
from typing import Annotated, Final

from fastapi import APIRouter, Query, Response

from cloud.api.deps import BIGINT_MAX, Id, Rt, ViewerTenant, now_us, say_data_source
from cloud.api.ingest import ingest_defaults
from cloud.api.schemas import RawPage
from cloud.errors import InvalidRequest
from cloud.storage.records import Bucket, TenantUsageLimits, Usage

router = APIRouter()

DAY_US: Final = 86_400_000_000
MAX_BUCKETS: Final = 10_000
_EPOCH_DAY: Final = date(1970, 1, 1)
_BUCKET = re.compile(r"^(\d{1,6})(s|m|h|d)$")
_UNIT_US: Final = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": DAY_US}

Micros = Annotated[int, Query(ge=0, le=2**62, description="µs since the epoch, UTC")]


def parse_bucket(text: str) -> int:
    """A bucket width like ``30s``, ``5m``, ``1h``, ``1d`` in µs, between 1 s and 1 day."""
    match = _BUCKET.match(text)
    if not match:
        raise InvalidRequest("bucket must look like 30s, 5m, 1h or 1d", path=["query", "bucket"])
    width = int(match[1]) * _UNIT_US[match[2]]
    if not 1_000_000 <= width <= DAY_US:
        raise InvalidRequest("bucket must be between 1s and 1d", path=["query", "bucket"])
    return width


def _encode_cursor(ts: int) -> str:
    return base64.urlsafe_b64encode(str(ts).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        value = int(text)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("cursor is not one this API gave", path=["query", "cursor"]) from exc
    if not 0 <= value < BIGINT_MAX:
        raise InvalidRequest("cursor is not one this API gave", path=["query", "cursor"])
    return value


def window(start: int | None, end: int | None) -> tuple[int, int]:
    """[start, end) of a query: the last day by default."""
    stop = end if end is not None else now_us() + 1
    first = start if start is not None else stop - DAY_US
    if first >= stop:
        raise InvalidRequest("start must be before end", path=["query", "start"])
    return first, stop


@router.get("/v1/series/{series_id}/raw", tags=["telemetry"])
async def raw(
    series_id: Id,
    *,
    response: Response,
    tenant_id: ViewerTenant,
    rt: Rt,
    start: Micros | None = None,
    end: Micros | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> RawPage:
    """Readings in [start, end) (default: the last day) in time order, one page at a time."""
    first, stop = window(start, end)
    after = _decode_cursor(cursor) if cursor else None
    simulated = await rt.repo.series_simulated(tenant_id, series_id)
    say_data_source(response, simulated=simulated)
    points, last = await rt.repo.raw(
        tenant_id, series_id, start=first, end=stop, after=after, limit=limit
    )
    return RawPage(
        series_id=series_id,
        points=points,
        next_cursor=None if last is None else _encode_cursor(last),
        simulated=simulated,
    )


@router.get("/v1/series/{series_id}/aggregate", tags=["telemetry"])
async def aggregate(
    series_id: Id,
    *,
    response: Response,
    tenant_id: ViewerTenant,
    rt: Rt,
    bucket: Annotated[str, Query(max_length=8, description="1s .. 1d, e.g. 1m")] = "1m",
    start: Micros | None = None,
    end: Micros | None = None,
) -> list[Bucket]:
    """min, max, avg, last and count per bucket of the series in [start, end)."""
    width = parse_bucket(bucket)
    first, stop = window(start, end)
    if (stop - first) // width > MAX_BUCKETS:
        raise InvalidRequest(
            f"more than {MAX_BUCKETS} buckets; widen the bucket or narrow the range",
            path=["query", "bucket"],
        )
    say_data_source(response, simulated=await rt.repo.series_simulated(tenant_id, series_id))
    return await rt.repo.aggregate(tenant_id, series_id, start=first, end=stop, bucket_us=width)


def _day_number(day: date) -> int:
    return (day - _EPOCH_DAY).days


@router.get("/v1/usage", tags=["usage"])
async def usage(
    tenant_id: ViewerTenant,
    rt: Rt,
    start: date | None = None,
    end: date | None = None,
) -> Usage:
    """Per UTC day (default: the last 31): readings stored, bytes, batches, API calls and
    readings the gateways reported dropped; the devices and series the tenant holds; and the
    limits in force (the tenant's own, else the service's)."""
    today = now_us() // DAY_US
    last = _day_number(end) if end else today
    first = _day_number(start) if start else last - 30
    if first > last:
        raise InvalidRequest("start must not be after end", path=["query", "start"])
    days = await rt.repo.usage(tenant_id, first_day=first, last_day=last)
    devices, series = await rt.repo.holdings(tenant_id)
    tenant = await rt.repo.get_tenant(tenant_id)
    policy = ingest_defaults(rt.settings).apply(
        tenant.ingest_quota_per_day, tenant.rate_limit, tenant.max_devices, tenant.max_series
    )
    limits = TenantUsageLimits(
        ingest_quota_per_day=policy.ingest.quota,
        rate_limit=policy.rate,
        rate_window_s=rt.settings.rate_window_s,
        max_devices=policy.ingest.max_devices,
        max_series=policy.ingest.max_series,
        max_new_series_per_batch=policy.ingest.max_new_series,
    )
    return Usage(days=days, devices=devices, series=series, limits=limits)
