"""What the PostgreSQL backend does differently when telemetry is distributed over Citus.

Found by running today's SQL on a coordinator with two workers:

- A unique violation inside a COPY into the shards reaches the coordinator as SQLSTATE XX000
  ("duplicate key value violates unique constraint telemetry_p..._pkey_102100"), not 23505, so
  `is_duplicate` recognises it by its message and the skipping INSERT runs as on one node; a
  row for a day without a partition likewise (`is_missing_partition`).
- `INSERT ... SELECT ... ON CONFLICT DO NOTHING` is pulled to the coordinator, whose rowcount
  can claim rows that were never added; the backend counts the rows `RETURNING` gives back
  instead, on every layout.
- The latest reading per series joined a local table (series) with the distributed one in a
  correlated subquery, which Citus refuses. `LATEST` asks telemetry alone with ``DISTINCT ON
  (series_id)``, which each worker answers for its own shards, within a window of recent time
  first (on each partition a scan of that window only), widening it for the series not found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import psycopg

from cloud.storage.base import Row, Tx

_DUPLICATE: Final = "duplicate key value violates unique constraint"

LATEST_WINDOWS_S: Final = (3_600, 86_400, None)
"""How far back `LATEST` looks, in turn, for series still without an answer (None: all time)."""

LATEST: Final = (
    "SELECT DISTINCT ON (series_id) series_id, ts, value_num, value_text, quality, value_int"
    " FROM telemetry WHERE tenant_id = %s AND series_id = ANY(%s::bigint[])"
    " AND ts >= (extract(epoch FROM now()) * 1000000)::bigint - %s"
    " ORDER BY series_id, ts DESC"
)
LATEST_EVER: Final = (
    "SELECT DISTINCT ON (series_id) series_id, ts, value_num, value_text, quality, value_int"
    " FROM telemetry WHERE tenant_id = %s AND series_id = ANY(%s::bigint[])"
    " ORDER BY series_id, ts DESC"
)


VERSION: Final = 11
NAME: Final = "citus: ingest_claim, for readings written through a worker"


def pg_migration(*, role: str, **_: object) -> str:
    """Migration 11 (every layout; used on Citus only): a batch's claim, written with its
    readings. Distributed by gateway (`PREPARE_DISTRIBUTED`), so a worker writes both in one
    distributed transaction; its tenant is filtered in every statement, as telemetry's."""
    return f"""
CREATE TABLE ingest_claim (tenant_id bigint NOT NULL, gateway_id bigint NOT NULL,
  seq bigint NOT NULL, stored integer, PRIMARY KEY (gateway_id, seq));
REVOKE ALL ON ingest_claim FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON ingest_claim TO {role};
"""


PREPARE_DISTRIBUTED: Final = (
    """DO $do$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_dist_partition
                 WHERE logicalrelid = 'ingest_claim'::regclass) THEN
    PERFORM create_distributed_table('ingest_claim', 'gateway_id');
  END IF;
END
$do$""",
)
"""Run by every migration of a distributed schema, idempotent: ``ingest_claim`` distributed."""

CLAIM: Final = (
    "INSERT INTO ingest_claim (tenant_id, gateway_id, seq) VALUES (%s, %s, %s)"
    " ON CONFLICT (gateway_id, seq) DO NOTHING RETURNING seq"
)
"""The first of a batch's attempts to write its readings through a worker claims it; another
waits on the key until that one ends, then finds it claimed (`CLAIMED`)."""
CLAIMED: Final = (
    "SELECT stored FROM ingest_claim WHERE tenant_id = %s AND gateway_id = %s AND seq = %s"
)
CLAIM_STORED: Final = (
    "UPDATE ingest_claim SET stored = %s WHERE tenant_id = %s AND gateway_id = %s AND seq = %s"
)
SEES_DISTRIBUTED: Final = (
    "SELECT count(*) = 2 FROM pg_dist_partition WHERE logicalrelid::oid IN"
    " (to_regclass('telemetry')::oid, to_regclass('ingest_claim')::oid)"
)
"""True on a node where both tables a batch's readings are written with are distributed."""


async def latest_by_series(tx: Tx, tenant_id: int, series_ids: Sequence[int]) -> dict[int, Row]:
    """The newest reading (ts, number, text, quality, exact integer) of each of these series
    that has one, by series id: telemetry alone, never joined with a metadata table (the ids
    come from the metadata first), in the widening windows of `LATEST_WINDOWS_S`."""
    newest: dict[int, Row] = {}
    for window in LATEST_WINDOWS_S:
        missing = [int(s) for s in series_ids if int(s) not in newest]
        if not missing:
            break
        if window is None:
            found = await tx.fetch(LATEST_EVER, [tenant_id, missing])
        else:
            found = await tx.fetch(LATEST, [tenant_id, missing, window * 1_000_000])
        newest.update({int(r[0]): r[1:] for r in found})
    return newest


def is_missing_partition(exc: psycopg.Error) -> bool:
    """True for a row no daily partition takes (23514 on one node; XX000 from a Citus worker)."""
    if isinstance(exc, psycopg.errors.CheckViolation):
        return True
    message = exc.diag.message_primary or ""
    return exc.sqlstate == "XX000" and message.startswith("no partition of relation")


def is_duplicate(exc: psycopg.Error) -> bool:
    """True for the (series, ts) unique violation, as one node or a Citus worker reports it."""
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return True
    message = exc.diag.message_primary or ""
    return exc.sqlstate == "XX000" and message.startswith(_DUPLICATE)
