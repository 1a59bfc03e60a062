"""The gateway's shadow: desired setpoints (the cloud's), reported facts (the gateway's), delta."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Response

from cloud.api.deps import Id, OperatorCaller, Rt, ViewerTenant, now_us, who
from cloud.api.schemas import ShadowPatch
from cloud.auth import Role
from cloud.errors import InvalidRequest
from cloud.storage.records import Shadow

router = APIRouter(tags=["shadow"])

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,18})"?\s*$')


def _if_match(value: str | None) -> int | None:
    """The version an If-Match header names (``"7"``, ``W/"7"`` or ``7``); None for ``*``."""
    if value is None or value.strip() == "*":
        return None
    match = _ETAG.match(value)
    if match is None:
        raise InvalidRequest(
            'If-Match must name a version the shadow gave as its ETag, e.g. "7"',
            path=["header", "if-match"],
        )
    return int(match[1])


@router.get("/v1/gateways/{gateway_id}/shadow")
async def get_shadow(gateway_id: Id, tenant_id: ViewerTenant, rt: Rt, response: Response) -> Shadow:
    """Desired, reported and delta; the ETag is the desired document's version."""
    shadow = await rt.shadows.get(tenant_id, gateway_id, now_us=now_us())
    response.headers["ETag"] = f'"{shadow.version}"'
    return shadow


@router.patch(
    "/v1/gateways/{gateway_id}/shadow",
    responses={412: {"description": "If-Match names a version the document no longer has"}},
)
async def patch_shadow(
    gateway_id: Id,
    *,
    body: ShadowPatch,
    caller: OperatorCaller,
    rt: Rt,
    response: Response,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
) -> Shadow:
    """Change desired setpoints (operator) by a JSON merge patch (``null`` removes one). The
    gateway applies each changed setpoint once, through the tag's limits, now or when it
    reconnects; one past its `expires_at` is never applied."""
    tenant_id = caller.require_user(Role.OPERATOR)
    now = now_us()
    for device, tags in body.desired.setpoints.items():
        for tag, entry in (tags or {}).items():
            if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
                raise InvalidRequest(
                    "expires_at is in the past: the setpoint would never be applied",
                    path=["body", "desired", "setpoints", device, tag, "expires_at"],
                )
    patch = body.desired.model_dump(mode="json")["setpoints"]
    async with rt.repo.live(tenant_id) as (tx, news):
        shadow = await rt.shadows.patch_desired(
            tx, tenant_id, gateway_id, patch, if_match=_if_match(if_match), by=who(caller),
            now_us=now, news=news,
        )  # fmt: skip
    response.headers["ETag"] = f'"{shadow.version}"'
    return shadow
