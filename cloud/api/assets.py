"""The ISA-95 asset tree (sites, areas, lines, equipment), devices placed in it, and telemetry
read by asset (`cloud.storage.assets`).

Viewers read; operators and admins create, rename, move and delete assets and place devices.
Conflicts with the tree answer 409 with a stable code: ``asset_name_taken``, ``asset_level``,
``asset_cycle``, ``asset_not_empty``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Response

from cloud.api.deps import Id, IdFilter, OperatorTenant, Rt, ViewerTenant, now_us, say_data_source
from cloud.api.query import MAX_BUCKETS, Micros, parse_bucket, window
from cloud.api.schemas import AssetCreate, AssetUpdate, DeviceAsset
from cloud.errors import InvalidRequest
from cloud.storage.records import Asset, AssetLatestValue, Device, SeriesBuckets

router = APIRouter(tags=["assets"])

MAX_ASSET_BUCKETS: Final = 100_000
"""The most buckets one aggregate by asset answers, over all its series."""
MAX_ASSET_SERIES: Final = 2_000
"""The most series one read by asset (latest or aggregate) covers (each series is one query:
about 1 ms on PostgreSQL)."""

_CONFLICTS: Final[dict[int | str, dict[str, Any]]] = {
    409: {"description": "asset_name_taken, asset_level or asset_cycle"}
}
TagFilter = Annotated[str | None, Query(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]


def _check_series(series: int) -> None:
    """422 ``invalid_request`` when a read by asset would cover more than `MAX_ASSET_SERIES`."""
    if series > MAX_ASSET_SERIES:
        raise InvalidRequest(
            f"{series} series under the asset exceed the {MAX_ASSET_SERIES} one read by asset"
            " covers; name a tag or ask for a smaller asset",
            path=["query", "tag"],
        )


@router.post("/v1/assets", status_code=201, responses=_CONFLICTS)
async def create_asset(body: AssetCreate, tenant_id: OperatorTenant, rt: Rt) -> Asset:
    """A new asset under `parent_id` (or at the root)."""
    return await rt.assets.create(
        tenant_id, parent_id=body.parent_id, level=body.level, name=body.name, now_us=now_us()
    )


@router.get("/v1/assets")
async def list_assets(tenant_id: ViewerTenant, rt: Rt, parent_id: IdFilter = None) -> list[Asset]:
    """The tenant's assets in path order, each with its path; only the children of
    `parent_id` when given."""
    return await rt.assets.list_assets(tenant_id, parent_id=parent_id)


@router.get("/v1/assets/{asset_id}")
async def get_asset(asset_id: Id, tenant_id: ViewerTenant, rt: Rt) -> Asset:
    """One asset, with its path."""
    return await rt.assets.get(tenant_id, asset_id)


@router.patch("/v1/assets/{asset_id}", responses=_CONFLICTS)
async def update_asset(asset_id: Id, body: AssetUpdate, tenant_id: OperatorTenant, rt: Rt) -> Asset:
    """Rename and/or move the asset (its subtree and devices come along)."""
    return await rt.assets.update(
        tenant_id, asset_id, name=body.name, move="parent_id" in body.model_fields_set,
        parent_id=body.parent_id,
    )  # fmt: skip


@router.delete(
    "/v1/assets/{asset_id}",
    status_code=204,
    responses={409: {"description": "asset_not_empty: it has children or devices"}},
)
async def delete_asset(
    asset_id: Id, tenant_id: OperatorTenant, rt: Rt, cascade: bool = False
) -> Response:
    """Delete the asset. While it has children or devices: 409 ``asset_not_empty``, unless
    ``cascade=true``: then its whole subtree goes and the devices under it stay, unassigned and
    pinned so (their gateways' paths do not place them again)."""
    await rt.assets.delete(tenant_id, asset_id, cascade=cascade)
    return Response(status_code=204)


@router.put("/v1/devices/{device_id}/asset", tags=["devices"])
async def place_device(
    device_id: Id, body: DeviceAsset, response: Response, tenant_id: OperatorTenant, rt: Rt
) -> Device:
    """Place the device under an asset (or nowhere, with null), pinned: the path its gateway
    reports no longer moves it."""
    device = await rt.assets.pin_device(tenant_id, device_id, body.asset_id)
    say_data_source(response, simulated=device.simulated)
    return device


@router.delete("/v1/devices/{device_id}/asset", tags=["devices"])
async def release_device(
    device_id: Id, response: Response, tenant_id: OperatorTenant, rt: Rt
) -> Device:
    """Unpin the device: its gateway's reported path places it again (unassigned when the
    gateway reports none)."""
    device = await rt.assets.unpin_device(tenant_id, device_id, now_us=now_us())
    say_data_source(response, simulated=device.simulated)
    return device


@router.get("/v1/assets/{asset_id}/latest", tags=["telemetry"])
async def asset_latest(
    asset_id: Id, response: Response, tenant_id: ViewerTenant, rt: Rt
) -> list[AssetLatestValue]:
    """The newest reading of every tag of every device under the asset (its whole subtree),
    each with its device, series and asset path. More than `MAX_ASSET_SERIES` series under
    the asset: 422 ``invalid_request``, as for the aggregate."""
    _check_series(await rt.assets.count_series(tenant_id, asset_id, tag=None))
    values = await rt.assets.latest(tenant_id, asset_id)
    say_data_source(response, simulated=any(v.simulated for v in values))
    return values


@router.get("/v1/assets/{asset_id}/aggregate", tags=["telemetry"])
async def asset_aggregate(
    asset_id: Id,
    *,
    response: Response,
    tenant_id: ViewerTenant,
    rt: Rt,
    bucket: Annotated[str, Query(max_length=8, description="1s .. 1d, e.g. 1m")] = "1m",
    start: Micros | None = None,
    end: Micros | None = None,
    tag: TagFilter = None,
) -> list[SeriesBuckets]:
    """min, max, avg, last and count per bucket in [start, end) of every series under the
    asset (its whole subtree; only the series of `tag`, when given), series by series."""
    width = parse_bucket(bucket)
    first, stop = window(start, end)
    per_series = (stop - first) // width
    if per_series > MAX_BUCKETS:
        raise InvalidRequest(
            f"more than {MAX_BUCKETS} buckets; widen the bucket or narrow the range",
            path=["query", "bucket"],
        )
    series = await rt.assets.count_series(tenant_id, asset_id, tag=tag)
    _check_series(series)
    if series * max(per_series, 1) > MAX_ASSET_BUCKETS:
        raise InvalidRequest(
            f"{series} series of about {per_series} buckets each exceed {MAX_ASSET_BUCKETS}"
            " buckets; widen the bucket, narrow the range, or name a tag",
            path=["query", "bucket"],
        )
    answer = await rt.assets.aggregate(
        tenant_id, asset_id, start=first, end=stop, bucket_us=width, tag=tag
    )
    say_data_source(response, simulated=any(s.simulated for s in answer))
    return answer
