"""cloud: the thin, stateless, multi-tenant FastAPI service.

Ingestion of gateway batches with idempotency on (gateway_id, seq), tenancy and API keys, the
device registry, telemetry queries and the provisioning CA, over two storage backends (SQLite and
PostgreSQL/TimescaleDB). `cloud.contract` holds the uplink wire models both sides use, so this
`__init__` stays free of imports: the edge imports `cloud.contract` without pulling in the service.
It may import `provisioning`, nothing else of tagway.
"""
