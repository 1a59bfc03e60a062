"""`create_app(settings)`: the stateless FastAPI service.

Everything that matters lives in the database (idempotency, quotas, rate windows, usage), so any
number of replicas can serve behind a load balancer. Errors are answered as
``{"error": {"code", "message", "details"}}`` (see `cloud.errors`, `cloud.api.error_answers`),
429s with Retry-After. Every request passes the `cloud.api.guard.RequestGuard` (credentials,
role and body limits) before its body is read.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud.api import (
    admin,
    alarms,
    assets,
    commands,
    configs,
    fleet,
    ingest,
    provision,
    query,
    registry,
    shadow,
    stream,
)
from cloud.api.deps import Runtime, StoredTokenAuthenticator, runtime
from cloud.api.error_answers import document_errors, install_error_handlers
from cloud.api.guard import RequestGuard, api_routes, route_policy
from cloud.api.schemas import ErrorBody
from cloud.auth import PlatformKeyAuthenticator
from cloud.enrollment import Enrollment, authenticators, load_master_key
from cloud.errors import StorageError
from cloud.fleet import run_fleet_sweep
from cloud.hub import Hub
from cloud.metrics import CloudMetrics, MetricsMiddleware
from cloud.retention import run_retention
from cloud.settings import CloudSettings
from cloud.storage import open_database
from cloud.storage.alarms import AlarmStore
from cloud.storage.assets import AssetStore
from cloud.storage.base import Database
from cloud.storage.commands import CommandStore
from cloud.storage.configs import ConfigStore
from cloud.storage.repository import Repository
from cloud.storage.rollouts import RolloutStore
from cloud.storage.shadow import ShadowStore
from cloud.storage.status import GatewayFacts, StatusStore
from cloud.storage.writes import WriteStore

log = logging.getLogger("tagway.cloud")


_SHUTDOWN_WAIT_S = 10.0  # seconds a background task gets to stop at shutdown


def create_app(settings: CloudSettings) -> FastAPI:
    """The service for these settings; storage opens in the lifespan, closes at shutdown."""
    metrics = CloudMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        master_key = load_master_key(settings)
        db = await open_database(settings)
        hub = Hub(db=db, metrics=metrics)
        repo = Repository(db, hub.announce, health=settings.health_policy)
        status = StatusStore(db, settings.health_policy)
        rollouts = RolloutStore(db)
        key = settings.platform_admin_key
        enrollment = Enrollment(settings=settings, db=db, master_key=master_key)
        decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="tagway-decode")
        app.state.enrollment = enrollment
        app.state.runtime = Runtime(
            settings=settings,
            db=db,
            repo=repo,
            metrics=metrics,
            authenticators=(
                PlatformKeyAuthenticator(key.get_secret_value() if key else None),
                *authenticators(enrollment, StoredTokenAuthenticator(repo)),
            ),
            hub=hub,
            alarms=AlarmStore(db),
            commands=CommandStore(db),
            shadows=ShadowStore(db),
            writes=WriteStore(db),
            decoder=decoder,
            configs=ConfigStore(db),
            rollouts=rollouts,
            status=status,
            facts=GatewayFacts(status),
            assets=AssetStore(db),
        )
        log.info(
            "storage: %s, timescaledb=%s, partitioning=%s, schema v%s%s",
            db.info.backend,
            db.info.timescaledb,
            db.info.partitioning,
            db.info.schema_version,
            f": {db.info.storage}" if db.info.storage else "",
        )
        await _follow_retention(db, settings.retention_days)
        live = asyncio.create_task(hub.run(), name="cloud-hub")
        retention = None
        if settings.retention_interval_s:
            retention = asyncio.create_task(
                run_retention(
                    db,
                    metrics,
                    keep_days=settings.retention_days,
                    interval_s=settings.retention_interval_s,
                    compress_after_days=settings.compress_after_days,
                ),
                name="cloud-retention",
            )
        fleet = asyncio.create_task(
            run_fleet_sweep(repo=repo, rollouts=rollouts, status=status, metrics=metrics,
                            settings=settings),
            name="cloud-fleet-sweep",
        )  # fmt: skip
        try:
            yield
        finally:
            background = [t for t in (live, retention, fleet) if t is not None]
            for task in background:
                task.cancel()
            # Shutdown never hangs on a background task stuck in the database: bounded wait.
            _, stuck = await asyncio.wait(background, timeout=_SHUTDOWN_WAIT_S)
            for task in stuck:
                log.warning(
                    "shutdown: %s did not stop in %.0f s", task.get_name(), _SHUTDOWN_WAIT_S
                )
            decoder.shutdown(wait=True)
            await db.close()

    app = FastAPI(
        title="tagway cloud",
        version="1",
        summary="Multi-tenant ingestion and query service for tagway gateways.",
        lifespan=lifespan,
        responses={
            422: {"model": ErrorBody, "description": "Invalid request"},
        },
    )
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts refusals too
    install_error_handlers(app)
    for router in (ingest.router, admin.router, registry.router, query.router, provision.router,
                   alarms.router, commands.router, shadow.router, stream.router, configs.router,
                   fleet.router, assets.router):  # fmt: skip
        app.include_router(router)
    _add_operations(app, metrics)
    for route in api_routes(app.routes):
        document_errors(route, route_policy(route).error_statuses())
    _document_no_nul(app)
    return app


NO_NUL: Final = "^[^\\x00]*$"
"""The pattern every string of the API meets: the request guard refuses NUL (422) in parameters
and JSON bodies alike, so the document says so."""


def _document_no_nul(app: FastAPI) -> None:
    """Give every string schema of the OpenAPI document that has no pattern, enum or binary
    format the `NO_NUL` pattern (parameters, bodies and answers)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _forbid_nul(generate())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _forbid_nul(node: Any) -> None:
    if isinstance(node, dict):
        if (node.get("type") == "string" and node.get("format") != "binary"
                and not {"pattern", "enum", "const"} & node.keys()):  # fmt: skip
            node["pattern"] = NO_NUL
        for value in node.values():
            _forbid_nul(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_nul(value)


def _add_operations(app: FastAPI, metrics: CloudMetrics) -> None:
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> dict[str, Any]:
        """Readiness: the database answers. Reports the backend, how telemetry is stored and
        why, and the database's background jobs (TimescaleDB): their failures do not make the
        replica unready, but `jobs` says ``failing`` when one failed with its work not done."""
        rt = runtime(request)
        await rt.db.ping()
        jobs = await rt.db.maintenance_jobs()
        metrics.report_jobs(jobs)
        failing = any(j.status == "failed" for j in jobs)
        return {
            "status": "ready",
            **rt.db.info.model_dump(),
            "jobs": "failing" if failing else "ok",
            "db_jobs": [j.model_dump() for j in jobs],
        }

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus(request: Request) -> Response:
        """Prometheus metrics of this replica (the database's jobs read afresh)."""
        try:
            metrics.report_jobs(await runtime(request).db.maintenance_jobs())
        except StorageError as exc:  # the request metrics still matter when the database fails
            log.warning("metrics: cannot read the database's jobs: %s", exc.message)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _follow_retention(db: Database, keep_days: int) -> None:
    """Make the database's own retention (TimescaleDB's policies) keep `retention_days`."""
    try:
        before = await db.set_retention_policy(keep_days=keep_days)
    except StorageError as exc:  # the hourly pass still drops by the configured days
        log.warning("retention policy not updated to %s days: %s", keep_days, exc.message)
        return
    if before is not None:
        log.info("retention policy: now %s days (was %s)", keep_days, before)


def app_from_env() -> FastAPI:
    """An app from ``TAGWAY_CLOUD_SETTINGS`` (JSON); for ``uvicorn --factory``."""
    raw = os.environ.get("TAGWAY_CLOUD_SETTINGS", "{}")
    return create_app(CloudSettings.model_validate_json(raw))
