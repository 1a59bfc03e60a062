"""Compression without TimescaleDB: on a Citus cluster, whole days of telemetry older than
`compress_after_days` are rewritten into Citus columnar storage, partition by partition.

Found on Citus 13.2 (PostgreSQL 15), and why it is done this way:

- A columnar table takes no BRIN index (``alter_table_set_access_method`` stops at it), and
  ``ON CONFLICT`` on it fails (``columnar_tuple_insert_speculative not implemented``).
- A btree on (series_id, ts) costs about 31 bytes a reading, ten times what the columnar data
  itself takes; and a unique key on the parent forces that index onto every partition. So on a
  distributed schema the parent has neither (`prepare_distributed`): each row-stored partition
  has its own primary key (series_id, ts), which `tagway_ensure_partitions` gives every new
  one, and a columnar partition has no index at all (the chunk groups' min/max, per column,
  answer the queries: each chunk group spans an hour at most, and a narrow range of series
  where a shard holds many).
- ``alter_table_set_access_method`` copies rows in the order they were ingested (every series
  of a batch interleaved). So `tagway_compress_day` makes the columnar table itself,
  colocated with telemetry, fills it in an order of its own and swaps it for the day's
  partition in one transaction.
- That order: each hour of the day, and within it each series' readings in time order
  (`HOUR_BLOCKS_ORDER`, migration 13). Citus compresses each column of a chunk group with
  zstd alone (no delta encoding), and keeps every column's null bitmap uncompressed (1 bit a
  row a column: 0.875 bytes a reading for telemetry's 7 columns). Timestamps are the costly
  column: a whole day of the simulated plant at 1 s ordered by series then time (migration 9)
  took 4.49 bytes a reading, 2.4 of them timestamps, since a chunk group then holds about one
  series' day and no timestamp repeats. By hour, then series, the same hour of timestamps
  repeats for every series of a shard within a chunk group, and zstd stores it about once:
  2.74 bytes a reading on the same day (hour blocks; 10-minute blocks 2.78, 4-hour blocks
  2.99), each series' values still in runs of an hour. (The 3.03 measured before was 6 hours
  of the plant: series short enough for several to share a chunk group; by hour, 2.98.)

The exactly-once guarantee on a columnar day, which has no unique index, is the write path's
(`PostgresDatabase.write_telemetry`): readings of days before yesterday ("late" readings; a
day is converted at the earliest when it ended two days ago, by the database's clock) are
written under a per-day advisory lock that conversion takes too, after looking up which of
their (series, ts) are stored already. Readings of yesterday and today take the COPY path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import psycopg

from cloud.storage.base import TelemetryRows

DAY_US: Final = 86_400_000_000
VERSION: Final = 9
NAME: Final = "citus: columnar days for telemetry"
LATE_LOCK: Final = 7363
"""Advisory lock class of a day's late writes and its conversion (with the day as the key)."""
MIN_AFTER_DAYS: Final = 2
"""Days that must have passed since a day ended before it may be converted."""

CONVERSION_SETTINGS: Final = (
    "SELECT set_config('columnar.chunk_group_row_limit', '100000', true),"
    " set_config('columnar.stripe_row_limit', '1000000', true),"
    " set_config('columnar.compression_level', '19', true)"
)
"""For the columnar table `tagway_compress_day` makes in the same transaction: chunk groups of
100,000 rows (not 10,000; the most Citus allows) and zstd level 19 (not 3; the most too) took
6 hours of the simulated plant from 5.1 to about 3.0 bytes a reading on Citus 13.2. The bigger
groups do most of it (against 3.16 in one run: half as big, 3.63; zstd 12, 3.24; lz4, 9.47; a
stripe of 10,000,000 rows, no change). A stripe is buffered in memory while it is written:
1,000,000 rows (not 150,000) is about 40 MB."""
MIN_TS: Final = -(2**63 - 1)  # a literal PostgreSQL reads as a bigint
ROW_STORED_FROM: Final = (
    "SELECT max(substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO [(]''(-?[0-9]+)''[)]')"
    "::bigint) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " JOIN pg_am a ON a.oid = c.relam"
    " WHERE i.inhparent = 'telemetry'::regclass AND a.amname = 'columnar'"
)
"""The upper bound of the newest columnar day: readings from there on are row-stored."""
LATE_EXISTING: Final = (
    "SELECT series_id, ts FROM telemetry WHERE tenant_id = %s AND series_id = ANY(%s::bigint[])"
    " AND ts >= %s AND ts < %s"
)
LATE_EXACT: Final = (
    "INSERT INTO telemetry (tenant_id, series_id, ts, value_num, quality, value_int)"
    " SELECT %s, u.s, u.t, u.v, u.q, u.i::numeric"
    " FROM unnest(%s::bigint[], %s::bigint[], %s::float8[], %s::int2[], %s::text[])"
    " AS u(s, t, v, q, i)"
)
LATE_TEXT: Final = (
    "INSERT INTO telemetry (tenant_id, series_id, ts, value_num, value_text, quality)"
    " SELECT %s, u.s, u.t, NULL, u.x, u.q"
    " FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::int2[]) AS u(s, t, x, q)"
)

SERIES_ORDER: Final = "series_id, ts"
"""The order migration 9 wrote a columnar day's rows in."""
HOUR_BLOCKS_ORDER: Final = f"ts / {DAY_US // 24}, series_id, ts"
"""The order migration 13 writes them in: each hour of the day, its series one after the other,
each in time order (see the module docstring)."""
HOUR_BLOCKS_VERSION: Final = 13
HOUR_BLOCKS_NAME: Final = "citus: columnar days written hour by hour, series by series"
CACHED_CONNECTIONS: Final = 16
"""``citus.max_cached_conns_per_worker`` a migration gives a distributed database: with Citus's
default of 1, the nodes spent 27 µs (coordinator) and 41 µs (each worker) of CPU per reading
ingested instead of 3.6 and 3.4 (`bench_citus.py`), opening connections."""
PREPARE_DISTRIBUTED: Final = (
    "CREATE EXTENSION IF NOT EXISTS citus_columnar",
    "DROP INDEX IF EXISTS telemetry_ts_brin",
    """DO $do$
DECLARE
  p record;
BEGIN
  IF EXISTS (SELECT 1 FROM pg_constraint
             WHERE conrelid = 'telemetry'::regclass AND contype = 'p') THEN
    ALTER TABLE telemetry DROP CONSTRAINT telemetry_pkey;
    FOR p IN SELECT c.relname::text AS name FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_am a ON a.oid = c.relam
             WHERE i.inhparent = 'telemetry'::regclass AND a.amname = 'heap' LOOP
      EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (series_id, ts)', p.name);
    END LOOP;
  END IF;
END
$do$""",
    f"""DO $do$
BEGIN
  -- the coordinator keeps connections to its workers between transactions (Citus's default is
  -- one per worker; each COPY then opens a TLS connection per shard), unless the operator has
  -- chosen a value for this database, or may not
  IF NOT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                 WHERE d.datname = current_database() AND s.setrole = 0
                   AND array_to_string(s.setconfig, ',')
                       LIKE '%citus.max_cached_conns_per_worker=%')
     AND EXISTS (SELECT 1 FROM pg_database d JOIN pg_roles r ON r.rolname = current_user
                 WHERE d.datname = current_database() AND (d.datdba = r.oid OR r.rolsuper)) THEN
    EXECUTE format('ALTER DATABASE %I SET citus.max_cached_conns_per_worker = {CACHED_CONNECTIONS}',
                   current_database());
  END IF;
END
$do$""",
)
"""Run by the migration on a distributed schema, idempotent, one statement at a time (Citus
passes a DDL statement's whole query string on to the workers): columnar available, the
unique key moved from the parent to each row-stored partition (see the module docstring), and
connections to the workers kept (`CACHED_CONNECTIONS`)."""


def pg_migration(*, role: str, timescaledb: bool, **_: object) -> str:
    """Migration 8: partitions get their own primary key where the parent has none, and the
    owner-rights functions that list and convert old days (the app role may only execute
    them). Nothing for a TimescaleDB hypertable, which compresses its own chunks."""
    if timescaledb:
        return "SELECT 1"
    return f"""
CREATE OR REPLACE FUNCTION tagway_ensure_partitions(days bigint[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
  d bigint;
  part text;
  keyed boolean := EXISTS (SELECT 1 FROM pg_constraint
                           WHERE conrelid = 'telemetry'::regclass AND contype = 'p');
BEGIN
  FOREACH d IN ARRAY days LOOP
    part := 'telemetry_p' || to_char(to_timestamp(d * 86400) AT TIME ZONE 'UTC', 'YYYYMMDD');
    -- two replicas may ask for the same day at once; the lock makes the check-then-create safe
    PERFORM pg_advisory_xact_lock(7361, d::integer);
    IF to_regclass(part) IS NULL THEN
      EXECUTE format('CREATE TABLE %I PARTITION OF telemetry FOR VALUES FROM (%s) TO (%s)',
                     part, d * {DAY_US}, (d + 1) * {DAY_US});
      IF NOT keyed THEN  -- distributed: the unique key is each row-stored partition's own
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (series_id, ts)', part);
      END IF;
      EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', part);
    END IF;
  END LOOP;
END
$fn$;

CREATE FUNCTION tagway_columnar_candidates(after_days integer) RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
  SELECT b.upper / {DAY_US} - 1
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_am a ON a.oid = c.relam
  CROSS JOIN LATERAL (SELECT substring(pg_get_expr(c.relpartbound, c.oid)
                        FROM 'TO [(]''(-?[0-9]+)''[)]')::bigint AS upper) b
  WHERE i.inhparent = 'telemetry'::regclass AND c.relname ~ '^telemetry_p[0-9]{{8}}$'
    AND a.amname = 'heap'
    AND b.upper <= (extract(epoch FROM now()) * 1000000)::bigint
                   - greatest(after_days, {MIN_AFTER_DAYS})::bigint * {DAY_US}
  ORDER BY 1
$fn$;

{_compress_day(SERIES_ORDER)}

REVOKE ALL ON FUNCTION tagway_columnar_candidates(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION tagway_compress_day(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tagway_columnar_candidates(integer) TO {role};
GRANT EXECUTE ON FUNCTION tagway_compress_day(bigint) TO {role};
"""


def _compress_day(order: str) -> str:
    """``tagway_compress_day``, writing the columnar day's rows in `order`."""
    return f"""
CREATE OR REPLACE FUNCTION tagway_compress_day(day bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
  part text := 'telemetry_p' || to_char(to_timestamp(day * 86400) AT TIME ZONE 'UTC', 'YYYYMMDD');
  fresh text := part || '_columnar';
  now_us bigint := (extract(epoch FROM now()) * 1000000)::bigint;
BEGIN
  IF (day + 1) * {DAY_US} > now_us - {MIN_AFTER_DAYS}::bigint * {DAY_US} THEN
    RAISE EXCEPTION 'day % ended less than % days ago', day, {MIN_AFTER_DAYS};
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'telemetry'::regclass) THEN
    RAISE EXCEPTION 'telemetry is not distributed over Citus';
  END IF;
  PERFORM pg_advisory_xact_lock(7361, day::integer);  -- partition creation and retention
  PERFORM pg_advisory_xact_lock({LATE_LOCK}, day::integer);  -- late writes into this day
  IF NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_am a ON a.oid = c.relam
                 WHERE i.inhparent = 'telemetry'::regclass AND c.relname = part
                   AND a.amname = 'heap') THEN
    RETURN NULL;  -- gone (retention) or converted already (another replica)
  END IF;
  EXECUTE format('CREATE TABLE %I (LIKE telemetry) USING columnar', fresh);
  PERFORM create_distributed_table(fresh, 'series_id', colocate_with => 'telemetry');
  EXECUTE format('INSERT INTO %I SELECT * FROM %I ORDER BY {order}', fresh, part);
  EXECUTE format('ALTER TABLE telemetry DETACH PARTITION %I', part);
  EXECUTE format('DROP TABLE %I', part);
  EXECUTE format('ALTER TABLE %I RENAME TO %I', fresh, part);
  EXECUTE format('ALTER TABLE telemetry ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                 part, day * {DAY_US}, (day + 1) * {DAY_US});
  EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', part);
  RETURN part;
END
$fn$;
"""


def pg_migration_hour_blocks(*, timescaledb: bool, **_: object) -> str:
    """Migration 13: `tagway_compress_day` writes the rows by hour, then series, then time
    (`HOUR_BLOCKS_ORDER`); its privileges stay (``CREATE OR REPLACE``)."""
    return "SELECT 1" if timescaledb else _compress_day(HOUR_BLOCKS_ORDER)


@dataclass(slots=True)
class Selection:
    """Some of a batch's rows (the `TelemetryRows` shape)."""

    series_id: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.int8]
    text_rows: list[tuple[int, int, str, int]]
    exact_rows: list[tuple[int, int, float, int, int]] = field(default_factory=list)

    @classmethod
    def of(
        cls, rows: TelemetryRows, mask: npt.NDArray[np.bool_], texts: list[Any], exact: list[Any]
    ) -> Selection:
        """The numeric rows `mask` selects, `texts` and `exact`."""
        return cls(
            rows.series_id[mask], rows.ts[mask], rows.value[mask], rows.quality[mask], texts, exact
        )


def split_late(rows: TelemetryRows, now_us: int) -> tuple[Selection, Selection] | None:
    """(late, recent) when some readings are of a day before yesterday, else None."""
    floor = (now_us // DAY_US - 1) * DAY_US
    late = rows.ts < floor
    late_texts = [r for r in rows.text_rows if r[1] < floor]
    late_exact = [r for r in rows.exact_rows if r[1] < floor]
    if not late.any() and not late_texts and not late_exact:
        return None
    recent_texts = [r for r in rows.text_rows if r[1] >= floor]
    recent_exact = [r for r in rows.exact_rows if r[1] >= floor]
    return (
        Selection.of(rows, late, late_texts, late_exact),
        Selection.of(rows, ~late, recent_texts, recent_exact),
    )


async def write_late(
    conn: psycopg.AsyncConnection[Any],
    tenant_id: int,
    rows: Selection,
    copy: Callable[[TelemetryRows], Awaitable[None]],
) -> int:
    """Write late readings once each, whether their day is row-stored or columnar (no unique
    index there): under each day's lock, skip the (series, ts) already stored and the repeats
    inside the batch, then COPY the rest. The number written."""
    texts, exact = rows.text_rows, rows.exact_rows
    others = [(s, t) for s, t, *_ in texts] + [(s, t) for s, t, *_ in exact]
    days = sorted({int(d) for d in np.unique(rows.ts // DAY_US)} | {t // DAY_US for _, t in others})
    for day in days:  # in order: two batches with the same late days never wait on each other
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s::integer, %s::integer)", [LATE_LOCK, day]
        )
    stamps = rows.ts.tolist() + [t for _, t in others]
    series = sorted(set(rows.series_id.tolist()) | {s for s, _ in others})
    cur = await conn.execute(LATE_EXISTING, [tenant_id, series, min(stamps), max(stamps) + 1])
    seen: set[tuple[int, int]] = {(int(s), int(t)) for s, t in await cur.fetchall()}
    keep = np.zeros(len(rows.ts), dtype=np.bool_)
    for i, key in enumerate(zip(rows.series_id.tolist(), rows.ts.tolist(), strict=True)):
        if key not in seen:
            seen.add(key)
            keep[i] = True
    new_texts = [r for r in texts if _first(seen, r[0], r[1])]
    new_exact = [r for r in exact if _first(seen, r[0], r[1])]
    numeric = Selection.of(rows, keep, [], [])
    if len(numeric.ts):
        await copy(numeric)
    if new_texts:
        s, t, x, q = (list(c) for c in zip(*new_texts, strict=True))
        await conn.execute(LATE_TEXT, [tenant_id, s, t, x, q])
    if new_exact:
        es, et, ev, ei, eq = (list(c) for c in zip(*new_exact, strict=True))
        await conn.execute(LATE_EXACT, [tenant_id, es, et, ev, eq, [str(n) for n in ei]])
    return len(numeric.ts) + len(new_texts) + len(new_exact)


def _first(seen: set[tuple[int, int]], series: int, ts: int) -> bool:
    """True the first time (series, ts) is seen (and remember it)."""
    if (series, ts) in seen:
        return False
    seen.add((series, ts))
    return True
