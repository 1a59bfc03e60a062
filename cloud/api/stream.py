"""`GET /v1/stream`: live readings, alarm transitions and command changes of the caller's
tenant, as server-sent events (see `cloud.stream` for the events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from cloud.api.deps import IdFilter, Rt, Runtime, ViewerTenant
from cloud.errors import InvalidRequest
from cloud.stream import KINDS, StreamFilter, Subscription

router = APIRouter(tags=["stream"])


@router.get(
    "/v1/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "readings, alarm, command, missed and gap events"}},
)  # fmt: skip
async def stream(
    *,
    tenant_id: ViewerTenant,
    rt: Rt,
    gateway_id: IdFilter = None,
    device: Annotated[str | None, Query(max_length=200)] = None,
    tag: Annotated[str | None, Query(max_length=200)] = None,
    kinds: Annotated[
        str, Query(max_length=64, description="comma-separated: readings, alarms, commands")
    ] = ",".join(KINDS),
) -> StreamingResponse:
    """Events of the caller's tenant as they are stored, filtered. The first line is the
    comment ``: subscribed``; a client that reads too slowly gets ``missed`` events instead of
    the ones it could not hold, and never slows anything down."""
    chosen = frozenset(k.strip() for k in kinds.split(",") if k.strip())
    if not chosen or not chosen <= set(KINDS):
        raise InvalidRequest(f"kinds must be some of {', '.join(KINDS)}", path=["query", "kinds"])
    where = StreamFilter(kinds=chosen, gateway_id=gateway_id, device=device, tag=tag)
    subscription = Subscription(
        tenant_id=tenant_id, where=where, buffer=rt.settings.stream_buffer_events
    )
    return StreamingResponse(
        _events(rt, subscription),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(rt: Runtime, subscription: Subscription) -> AsyncIterator[bytes]:
    keepalive, coalesce = rt.settings.stream_keepalive_s, rt.settings.stream_coalesce_s
    with rt.hub.subscribe(subscription):
        yield b": subscribed\n\n"
        while True:
            try:
                async with asyncio.timeout(keepalive):
                    await subscription.ready.wait()
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if coalesce:
                await asyncio.sleep(coalesce)  # let the events of the next moments join this write
            yield b"".join(subscription.drain())  # one write for what piled up meanwhile
