"""`POST /v1/ingest`: gateways post batches (see `cloud.contract` for the wire format)."""

from __future__ import annotations

import asyncio
import functools

from fastapi import APIRouter, Request

from cloud.api.deps import GatewayCaller, Rt, now_us
from cloud.contract import (
    JSON,
    MSGPACK,
    Batch,
    PayloadTooLarge,
    Refusals,
    batch_digest,
    check_content_type,
    decode_batch,
    refuse_out_of_window,
)
from cloud.errors import Forbidden
from cloud.settings import CloudSettings
from cloud.storage.records import IngestResult
from cloud.storage.telemetry import IngestDefaults, PostedBody

router = APIRouter(tags=["ingest"])

_DOC_BODY = {
    "x-body-limit": "ingest",
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": {"type": "object"}},
            MSGPACK: {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", details={"limit": limit})
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"body exceeds the limit of {limit} bytes", details={"limit": limit}
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/v1/ingest",
    response_model=IngestResult,
    openapi_extra=_DOC_BODY,
    responses={
        403: {"description": "Not a gateway, or the batch names another gateway"},
        415: {"description": "Unknown Content-Type or Content-Encoding"},
        409: {"description": "seq_conflict: the seq was stored with other content"},
        413: {"description": "Body, decompressed size, reading count or new series over a limit"},
        429: {
            "description": "rate_limited, quota_exceeded, device_limit_reached,"
            " series_limit_reached (see Retry-After)"
        },
    },
)
async def ingest(request: Request, caller: GatewayCaller, rt: Rt) -> IngestResult:
    """Store one batch, once per (gateway, seq); a replay answers `duplicate: true`."""
    tenant_id, gateway_id = caller
    settings = rt.settings
    content_type = request.headers.get("content-type")
    check_content_type(content_type)
    body = await read_body(request, settings.limits.max_body_bytes)
    now = now_us()
    policy = await rt.repo.admit_ingest(
        tenant_id, defaults=ingest_defaults(settings), window_s=settings.rate_window_s, now_us=now
    )
    content_encoding = request.headers.get("content-encoding")
    # Decompression, decoding, validation and the digest take milliseconds of CPU per batch
    # (more for a hostile one, though the limits stop that early): on the runtime's decode
    # threads, never on the event loop, so /healthz and other tenants' queries keep their pace.
    batch, digest, refusals = await asyncio.get_running_loop().run_in_executor(
        rt.decoder,
        functools.partial(_decoded, body, content_type, content_encoding, settings, now),
    )
    if batch.gateway_id != str(gateway_id):
        raise Forbidden(
            f"the batch names gateway {batch.gateway_id!r}, but the token is gateway {gateway_id}"
        )
    posted = PostedBody(body, content_type or JSON, content_encoding)
    result = await rt.repo.ingest(
        tenant_id, gateway_id, batch, posted=posted, digest=digest, policy=policy, now_us=now
    )
    rt.metrics.batches.labels("duplicate" if result.duplicate else "stored").inc()
    rt.metrics.readings.inc(result.stored)
    if refusals.series or refusals.alarms:
        answer = refusals.answer()
        answer["readings"] = result.readings + refusals.readings
        result = result.model_validate(result.model_dump() | answer)
    return result


def ingest_defaults(settings: CloudSettings) -> IngestDefaults:
    """The service's limits for tenants without their own."""
    return IngestDefaults(
        quota=settings.default_ingest_quota_per_day,
        rate=settings.default_rate_limit,
        max_devices=settings.default_max_devices,
        max_series=settings.default_max_series,
        max_new_series=settings.max_new_series_per_batch,
    )


def _decoded(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    settings: CloudSettings,
    now: int,
) -> tuple[Batch, bytes, Refusals]:
    """The batch without what the time window refuses, the digest of the batch as posted (a
    replay under the same seq later, with the window moved on, is still the same batch) and what
    was refused (run on a decode thread)."""
    batch = decode_batch(
        body, content_type=content_type, content_encoding=content_encoding, limits=settings.limits
    )
    digest = batch_digest(batch)
    inside, refusals = refuse_out_of_window(
        batch,
        now_us=now,
        max_future_us=settings.max_future_skew_s * 1_000_000,
        max_age_us=settings.max_age_days * 86_400_000_000,
    )
    return inside, digest, refusals
