"""Prometheus metrics of one app instance (a registry per app, so tests can run several)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.storage.records import MaintenanceJob

# Label values come only from these sets: a label made of request input (a random method, a
# random path) would grow the registry by one series per request.
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
JOB_STATUSES: Final = ("ok", "failed_work_done", "failed")  # of MaintenanceJob.status


class CloudMetrics:
    """The service's counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tagway_cloud_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tagway_cloud_http_request_seconds",
            "HTTP request latency by route template.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.batches = Counter(
            "tagway_cloud_ingest_batches",
            "Ingested batches by result (stored, duplicate).",
            ["result"],
            registry=self.registry,
        )
        self.readings = Counter(
            "tagway_cloud_ingest_readings",
            "Readings written to telemetry (duplicates excluded).",
            registry=self.registry,
        )
        self.channels = Gauge(
            "tagway_cloud_gateway_channels",
            "Gateway command channels this replica holds open.",
            registry=self.registry,
        )
        self.commands = Counter(
            "tagway_cloud_commands_created",
            "Commands queued for gateways, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.stream_clients = Gauge(
            "tagway_cloud_stream_clients",
            "/v1/stream clients this replica serves.",
            registry=self.registry,
        )
        self.stream_dropped = Counter(
            "tagway_cloud_stream_messages_dropped",
            "Live messages the hub could not take (its queue was full); each client of the"
            " tenant was told it missed them.",
            registry=self.registry,
        )
        self.retention_runs = Counter(
            "tagway_cloud_retention_runs",
            "Telemetry retention passes of this replica by result (ok, error).",
            ["result"],
            registry=self.registry,
        )
        self.retention_last_run = Gauge(
            "tagway_cloud_retention_last_run_timestamp_seconds",
            "When this replica's last successful retention pass finished (Unix time).",
            registry=self.registry,
        )
        self.retention_cutoff = Gauge(
            "tagway_cloud_retention_cutoff_timestamp_seconds",
            "The cutoff of the last successful retention pass (Unix time).",
            registry=self.registry,
        )
        self.retention_partitions = Counter(
            "tagway_cloud_retention_partitions_dropped",
            "Daily telemetry partitions this replica dropped (native PostgreSQL).",
            registry=self.registry,
        )
        self.fleet_gateways = Gauge(
            "tagway_cloud_fleet_gateways",
            "Gateways per tenant and health, refreshed by the fleet sweep. The tenant label is"
            " the tenant id for the tenants with the most gateways (metrics_max_tenants), and"
            " 'other' for the sum of the rest, so the label set stays bounded.",
            ["tenant", "health"],
            registry=self.registry,
        )
        self.rollout_failures = Counter(
            "tagway_cloud_rollout_gateway_timeouts",
            "Gateways of a rollout wave that reported nothing before their deadline.",
            registry=self.registry,
        )
        self.retention_rows = Counter(
            "tagway_cloud_retention_rows_deleted",
            "Old readings this replica deleted (SQLite).",
            registry=self.registry,
        )
        self.db_job_status = Gauge(
            "tagway_cloud_db_job_status",
            "The database's background jobs (TimescaleDB policies): 1 for the job's current"
            " status (ok, failed_work_done: recorded as failed but its work is done, failed).",
            ["job", "status"],
            registry=self.registry,
        )
        self.db_job_failures = Gauge(
            "tagway_cloud_db_job_failures",
            "Failed runs the database has recorded for each background job.",
            ["job"],
            registry=self.registry,
        )

    def report_jobs(self, jobs: Sequence[MaintenanceJob]) -> None:
        """Set the job gauges from a fresh reading of the database's jobs."""
        for job in jobs:
            for status in JOB_STATUSES:
                self.db_job_status.labels(job.job, status).set(int(job.status == status))
            self.db_job_failures.labels(job.job).set(job.failures)


class MetricsMiddleware:
    """Counts and times every request under its route template (not its raw path)."""

    def __init__(self, app: ASGIApp, metrics: CloudMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through, recording the status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - started)
