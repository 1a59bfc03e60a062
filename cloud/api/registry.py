"""Devices (created on first ingest; renamed, tagged with metadata, deleted) and series.

Devices, series and latest values say whether they are simulated, and an answer that carries
any simulated one has the header ``X-Data-Source: simulation``.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from cloud.api.deps import (
    AdminTenant,
    Id,
    IdFilter,
    OperatorTenant,
    Rt,
    ViewerTenant,
    say_data_source,
)
from cloud.api.schemas import DeviceUpdate
from cloud.storage.records import Device, LatestValue, Series

router = APIRouter(tags=["devices"])


@router.get("/v1/devices")
async def list_devices(
    response: Response,
    tenant_id: ViewerTenant,
    rt: Rt,
    gateway_id: IdFilter = None,
    asset_id: IdFilter = None,
) -> list[Device]:
    """The tenant's devices, optionally of one gateway, or under one asset (its whole subtree)."""
    devices = await rt.repo.list_devices(tenant_id, gateway_id=gateway_id, asset_id=asset_id)
    say_data_source(response, simulated=any(d.simulated for d in devices))
    return devices


@router.get("/v1/devices/{device_id}")
async def get_device(device_id: Id, response: Response, tenant_id: ViewerTenant, rt: Rt) -> Device:
    """One device."""
    device = await rt.repo.get_device(tenant_id, device_id)
    say_data_source(response, simulated=device.simulated)
    return device


@router.patch("/v1/devices/{device_id}")
async def update_device(
    device_id: Id, body: DeviceUpdate, response: Response, tenant_id: OperatorTenant, rt: Rt
) -> Device:
    """Set the display name or replace the metadata (the gateway's own name never changes)."""
    device = await rt.repo.update_device(
        tenant_id, device_id, display_name=body.display_name, metadata=body.metadata
    )
    say_data_source(response, simulated=device.simulated)
    return device


@router.delete("/v1/devices/{device_id}", status_code=204)
async def delete_device(device_id: Id, tenant_id: AdminTenant, rt: Rt) -> Response:
    """Delete a device with its series and telemetry."""
    await rt.repo.delete_device(tenant_id, device_id)
    return Response(status_code=204)


@router.get("/v1/devices/{device_id}/latest", tags=["telemetry"])
async def latest(
    device_id: Id, response: Response, tenant_id: ViewerTenant, rt: Rt
) -> list[LatestValue]:
    """The newest reading of every series of the device."""
    values = await rt.repo.latest(tenant_id, device_id)
    say_data_source(response, simulated=any(v.simulated for v in values))
    return values


@router.get("/v1/series", tags=["telemetry"])
async def list_series(
    *,
    response: Response,
    tenant_id: ViewerTenant,
    rt: Rt,
    device_id: IdFilter = None,
    gateway_id: IdFilter = None,
    asset_id: IdFilter = None,
) -> list[Series]:
    """The tenant's series, optionally of one device or gateway, or under one asset (its whole
    subtree); each with its device's asset path."""
    series = await rt.repo.list_series(
        tenant_id, device_id=device_id, gateway_id=gateway_id, asset_id=asset_id
    )
    say_data_source(response, simulated=any(s.simulated for s in series))
    return series
