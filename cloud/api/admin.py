"""Tenants (platform admin), API keys and gateways (tenant admins)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response

from cloud.api.deps import AdminTenant, Id, PlatformAdmin, Rt, ViewerTenant, now_us
from cloud.api.provision import Enroll
from cloud.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    GatewayCreate,
    GatewayCreated,
    GatewayUpdate,
    TenantCreate,
    TenantLimits,
)
from cloud.auth import API_KEY_PREFIX, GATEWAY_TOKEN_PREFIX, new_secret
from cloud.storage.records import ApiKey, Gateway, Tenant

router = APIRouter()


@router.post("/v1/tenants", status_code=201, tags=["tenants"])
async def create_tenant(body: TenantCreate, _: PlatformAdmin, rt: Rt) -> Tenant:
    """Create a tenant (platform admin)."""
    return await rt.repo.create_tenant(
        name=body.name,
        now_us=now_us(),
        quota=body.ingest_quota_per_day,
        rate_limit=body.rate_limit,
        max_devices=body.max_devices,
        max_series=body.max_series,
        max_assets=body.max_assets,
    )


@router.get("/v1/tenants", tags=["tenants"])
async def list_tenants(_: PlatformAdmin, rt: Rt) -> list[Tenant]:
    """Every tenant (platform admin)."""
    return await rt.repo.list_tenants()


@router.get("/v1/tenants/{tenant_id}", tags=["tenants"])
async def get_tenant(tenant_id: Id, _: PlatformAdmin, rt: Rt) -> Tenant:
    """One tenant (platform admin)."""
    return await rt.repo.get_tenant(tenant_id)


@router.put("/v1/tenants/{tenant_id}/limits", tags=["tenants"])
async def set_tenant_limits(tenant_id: Id, body: TenantLimits, _: PlatformAdmin, rt: Rt) -> Tenant:
    """Set a tenant's ingest quota and rate limit (platform admin; null = service default)."""
    return await rt.repo.update_tenant_limits(
        tenant_id,
        quota=body.ingest_quota_per_day,
        rate_limit=body.rate_limit,
        max_devices=body.max_devices,
        max_series=body.max_series,
        max_assets=body.max_assets,
    )


@router.post("/v1/tenants/{tenant_id}/api-keys", status_code=201, tags=["tenants"])
async def bootstrap_api_key(
    tenant_id: Id, body: ApiKeyCreate, _: PlatformAdmin, rt: Rt
) -> ApiKeyCreated:
    """Create a key in a tenant (platform admin): how a tenant gets its first admin."""
    return await _new_api_key(tenant_id, body, rt)


async def _new_api_key(tenant_id: Id, body: ApiKeyCreate, rt: Rt) -> ApiKeyCreated:
    """Make a key and store only its digest; the secret is in this answer and nowhere else."""
    secret = new_secret(API_KEY_PREFIX)
    key = await rt.repo.create_api_key(
        tenant_id,
        name=body.name,
        role=body.role,
        prefix=secret.prefix,
        digest=secret.digest,
        now_us=now_us(),
    )
    return ApiKeyCreated(key=key, token=secret.token)


@router.get("/v1/tenant", tags=["tenants"])
async def own_tenant(tenant_id: ViewerTenant, rt: Rt) -> Tenant:
    """The caller's own tenant."""
    return await rt.repo.get_tenant(tenant_id)


@router.post("/v1/api-keys", status_code=201, tags=["api-keys"])
async def create_api_key(body: ApiKeyCreate, tenant_id: AdminTenant, rt: Rt) -> ApiKeyCreated:
    """Create an API key; the secret is in this answer and nowhere else, ever."""
    return await _new_api_key(tenant_id, body, rt)


@router.get("/v1/api-keys", tags=["api-keys"])
async def list_api_keys(tenant_id: AdminTenant, rt: Rt) -> list[ApiKey]:
    """The tenant's keys (prefix, role, last used, revoked), never their secrets."""
    return await rt.repo.list_api_keys(tenant_id)


@router.delete("/v1/api-keys/{key_id}", tags=["api-keys"])
async def revoke_api_key(key_id: Id, tenant_id: AdminTenant, rt: Rt) -> ApiKey:
    """Revoke a key; it is refused from the next request on, on every replica."""
    return await rt.repo.revoke_api_key(tenant_id, key_id, now_us=now_us())


@router.post("/v1/gateways", status_code=201, tags=["gateways"])
async def create_gateway(body: GatewayCreate, tenant_id: AdminTenant, rt: Rt) -> GatewayCreated:
    """Register a gateway and issue its interim bearer token (shown once)."""
    secret = new_secret(GATEWAY_TOKEN_PREFIX)
    gateway = await rt.repo.create_gateway(
        tenant_id, name=body.name, prefix=secret.prefix, digest=secret.digest, now_us=now_us()
    )
    return GatewayCreated(gateway=gateway, token=secret.token)


@router.get("/v1/gateways", tags=["gateways"])
async def list_gateways(
    tenant_id: ViewerTenant,
    rt: Rt,
    health: Literal["healthy", "degraded", "offline", "unknown"] | None = None,
) -> list[Gateway]:
    """The tenant's gateways with their labels and health (``?health=degraded``: only those)."""
    gateways = await rt.facts.annotate(
        tenant_id, await rt.repo.list_gateways(tenant_id), now_us=now_us()
    )
    return [g for g in gateways if health is None or (g.health and g.health.state == health)]


@router.get("/v1/gateways/{gateway_id}", tags=["gateways"])
async def get_gateway(gateway_id: Id, tenant_id: ViewerTenant, rt: Rt) -> Gateway:
    """One gateway, with its labels and health."""
    gateway = await rt.repo.get_gateway(tenant_id, gateway_id)
    return (await rt.facts.annotate(tenant_id, [gateway], now_us=now_us()))[0]


@router.patch("/v1/gateways/{gateway_id}", tags=["gateways"])
async def rename_gateway(
    gateway_id: Id, body: GatewayUpdate, tenant_id: AdminTenant, rt: Rt
) -> Gateway:
    """Rename a gateway."""
    return await rt.repo.update_gateway(tenant_id, gateway_id, name=body.name)


@router.post("/v1/gateways/{gateway_id}/token", tags=["gateways"])
async def rotate_gateway_token(gateway_id: Id, tenant_id: AdminTenant, rt: Rt) -> GatewayCreated:
    """Issue a new interim token; the old one is refused at once."""
    secret = new_secret(GATEWAY_TOKEN_PREFIX)
    gateway = await rt.repo.update_gateway(
        tenant_id, gateway_id, token=(secret.prefix, secret.digest)
    )
    return GatewayCreated(gateway=gateway, token=secret.token)


@router.post("/v1/gateways/{gateway_id}/revoke", tags=["gateways"])
async def revoke_gateway(gateway_id: Id, tenant_id: AdminTenant, rt: Rt, enroll: Enroll) -> Gateway:
    """Revoke a gateway's token and certificates; refused from now on (its data is kept)."""
    gateway = await rt.repo.update_gateway(tenant_id, gateway_id, revoke_at=now_us())
    await enroll.revoke(tenant_id, gateway_id)
    return gateway


@router.delete("/v1/gateways/{gateway_id}", status_code=204, tags=["gateways"])
async def delete_gateway(gateway_id: Id, tenant_id: AdminTenant, rt: Rt) -> Response:
    """Delete a gateway with its devices, series, telemetry and alarms."""
    await rt.repo.delete_gateway(tenant_id, gateway_id)
    return Response(status_code=204)
