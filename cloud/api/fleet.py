"""Fleet health: each gateway's status and health, its labels, and the counts per tenant.

Gateways send a status document through their outbox (`cloud.contract.StatusReport`); the
cloud derives ``healthy`` or ``degraded`` (with the reasons) from it and ``offline`` from the
time of the last batch (`cloud.health`). `GET /v1/gateways?health=degraded` lists by health
(see `cloud.api.admin`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import Field

from cloud.api.deps import AdminTenant, Caller, Id, Rt, ViewerTenant, now_us
from cloud.api.schemas import Body
from cloud.auth import PrincipalKind, Role
from cloud.storage.fleet_records import FleetCounts, GatewayStatus
from cloud.storage.records import Gateway

router = APIRouter(tags=["fleet"])

LabelKey = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
]
LabelValue = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._/:-]+$")]


class Labels(Body):
    """A gateway's labels, e.g. ``{"site": "plant-a", "line": "2"}`` (replaces all)."""

    labels: dict[LabelKey, LabelValue] = Field(max_length=50)


@router.get("/v1/gateways/{gateway_id}/health")
async def gateway_health(gateway_id: Id, tenant_id: ViewerTenant, rt: Rt) -> GatewayStatus:
    """The gateway's health with its reasons, its newest status document (drivers, backlog,
    outbox disk, clock, config, alarms) and the recent changes of its health."""
    return await rt.status.of(tenant_id, gateway_id, now_us=now_us())


@router.put("/v1/gateways/{gateway_id}/labels")
async def set_labels(gateway_id: Id, body: Labels, tenant_id: AdminTenant, rt: Rt) -> Gateway:
    """Replace the gateway's labels (admin); label rollouts select gateways by them."""
    await rt.facts.set_labels(tenant_id, gateway_id, dict(body.labels))
    gateway = await rt.repo.get_gateway(tenant_id, gateway_id)
    return (await rt.facts.annotate(tenant_id, [gateway], now_us=now_us()))[0]


@router.get("/v1/usage/fleet", tags=["usage"])
async def fleet_usage(caller: Caller, rt: Rt) -> list[FleetCounts]:
    """Gateways per health: the caller's tenant, or every tenant for the platform admin."""
    if caller.kind is PrincipalKind.PLATFORM_ADMIN:
        return await rt.status.all_counts(now_us=now_us())
    tenant_id = caller.require_user(Role.VIEWER)
    return [await rt.status.counts(tenant_id, now_us=now_us())]
