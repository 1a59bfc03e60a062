"""What the PostgreSQL backend does differently when telemetry is a TimescaleDB hypertable.

- Migration 6 (`migration`): chunks only through the hypertable, retention by `drop_chunks`, a
  `telemetry_1m` continuous aggregate whose minutes combine exactly into any larger bucket.
- `AGGREGATE`: bucketed aggregates of one series from `telemetry_1m` where it is fresh, raw rows
  elsewhere, so the answer equals the raw path's.
- `job_health`: TimescaleDB's background jobs as the service reports them.

Privileges. TimescaleDB copies a hypertable's grants onto every chunk it creates, so the app role
could read or delete ``_timescaledb_internal._hyper_*`` directly, across tenants. A statement
trigger on telemetry revokes that from every new chunk in the statement that made it (TimescaleDB
creates chunks without firing event triggers), and the compressed and materialized hypertables,
whose chunks copy their own grants, are sealed once. Reads, writes and deletes through
`telemetry` still work: PostgreSQL checks privileges on the table a query names, not on the
chunks it expands to. The app role reads `telemetry_1m`; the view's owner reads what is behind it.

The aggregate's minutes keep sums and counts, not means: a bucket of an hour is then the exact
min, max, count and last of its minutes, and its average the sum over the count (the same
floating-point operations as the raw path, up to the order of the additions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from cloud.storage.base import Row
from cloud.storage.records import MaintenanceJob

DAY_US: Final = 86_400_000_000
MINUTE_US: Final = 60_000_000
REFRESH_WINDOW_DAYS: Final = 7  # the refresh policy's start_offset; older changes read raw rows
COMPRESS_AFTER_DAYS: Final = 7


def migration(*, role: str, retention_days: int) -> str:
    """Migration 6 on a TimescaleDB schema (see the module docstring)."""
    days = f"{retention_days}::bigint * {DAY_US}"
    return f"""
CREATE FUNCTION tagway_seal_telemetry() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
  t regclass;
  sealed integer := 0;
BEGIN
  FOR t IN SELECT c.oid::regclass FROM pg_class c
           WHERE c.relnamespace = '_timescaledb_internal'::regnamespace
             AND EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = '{role}'::regrole)
  LOOP
    EXECUTE format('REVOKE ALL ON %s FROM {role}', t);
    sealed := sealed + 1;
  END LOOP;
  RETURN sealed;
END
$fn$;
CREATE FUNCTION tagway_seal_new_chunks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
  t regclass;
BEGIN
  FOR t IN SELECT i.inhrelid::regclass FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'telemetry'::regclass
             AND EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = '{role}'::regrole)
  LOOP
    EXECUTE format('REVOKE ALL ON %s FROM {role}', t);
  END LOOP;
  RETURN NULL;
END
$fn$;
CREATE TRIGGER tagway_seal_new_chunks AFTER INSERT ON telemetry
  FOR EACH STATEMENT EXECUTE FUNCTION tagway_seal_new_chunks();

DROP MATERIALIZED VIEW telemetry_1m;
CREATE MATERIALIZED VIEW telemetry_1m WITH (timescaledb.continuous,
  timescaledb.materialized_only = false) AS
  SELECT tenant_id, series_id, time_bucket({MINUTE_US}::bigint, ts) AS bucket,
         min(value_num) AS lo, max(value_num) AS hi, sum(value_num) AS total,
         count(value_num) AS n_num, count(*) AS n, max(ts) AS last_ts,
         last(value_num, ts) AS last_num, last(value_text, ts) AS last_text
  FROM telemetry GROUP BY tenant_id, series_id, time_bucket({MINUTE_US}::bigint, ts)
  WITH NO DATA;
-- daily chunks, as the hypertable's: retention then drops the same days from both; and the
-- hypertable's clock, without which its compression policy cannot run
SELECT set_chunk_time_interval('telemetry_1m', {DAY_US}::bigint);
SELECT set_integer_now_func(format('%I.%I', materialization_hypertable_schema,
                                   materialization_hypertable_name)::regclass, 'tagway_now_us')
FROM timescaledb_information.continuous_aggregates WHERE view_name = 'telemetry_1m'
  AND view_schema = current_schema();
SELECT add_continuous_aggregate_policy('telemetry_1m',
  start_offset => {REFRESH_WINDOW_DAYS * DAY_US}::bigint, end_offset => {MINUTE_US}::bigint,
  schedule_interval => INTERVAL '1 minute');
ALTER MATERIALIZED VIEW telemetry_1m SET (timescaledb.compress = true,
  timescaledb.compress_segmentby = 'series_id', timescaledb.compress_orderby = 'bucket');
SELECT add_compression_policy('telemetry_1m',
  compress_after => {(REFRESH_WINDOW_DAYS + 1) * DAY_US}::bigint);
SELECT add_retention_policy('telemetry_1m', drop_after => {days});

CREATE OR REPLACE FUNCTION tagway_drop_partitions(keep_days integer, dry_run boolean)
RETURNS TABLE (partition text, day bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
#variable_conflict use_column
DECLARE
  now_us bigint := (extract(epoch FROM now()) * 1000000)::bigint;
  -- whole days only, and never the day holding now (nor any later one), whatever keep_days says
  horizon bigint := least(now_us - greatest(keep_days, 1)::bigint * {DAY_US},
                          now_us - now_us % {DAY_US});
BEGIN
  PERFORM pg_advisory_xact_lock(7362);
  RETURN QUERY SELECT c.chunk_name::text, c.range_start_integer / {DAY_US}
    FROM timescaledb_information.chunks c
    WHERE format('%I.%I', c.hypertable_schema, c.hypertable_name)::regclass
          = 'telemetry'::regclass AND c.range_end_integer <= horizon
    ORDER BY c.range_start_integer;
  IF NOT dry_run THEN
    PERFORM drop_chunks('telemetry', older_than => horizon);
    PERFORM drop_chunks('telemetry_1m', older_than => horizon);
  END IF;
END
$fn$;
CREATE FUNCTION tagway_set_retention(keep_days integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
  j record;
  previous integer;
BEGIN
  FOR j IN SELECT job_id, config FROM timescaledb_information.jobs
           WHERE proc_name = 'policy_retention' AND hypertable_schema = current_schema()
             AND hypertable_name IN ('telemetry', 'telemetry_1m')
  LOOP
    IF (j.config ->> 'drop_after')::bigint IS DISTINCT FROM keep_days::bigint * {DAY_US} THEN
      previous := (j.config ->> 'drop_after')::bigint / {DAY_US};
      PERFORM alter_job(j.job_id, config => jsonb_set(j.config, '{{drop_after}}',
                                                      to_jsonb(keep_days::bigint * {DAY_US})));
    END IF;
  END LOOP;
  RETURN previous;
END
$fn$;
CREATE FUNCTION tagway_db_jobs() RETURNS TABLE (job_id integer, proc text, relation text,
  last_run text, failures bigint, work_done boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $fn$ {_JOBS_BODY} $fn$;
REVOKE ALL ON FUNCTION tagway_db_jobs() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tagway_db_jobs() TO {role};
REVOKE ALL ON FUNCTION tagway_seal_telemetry() FROM PUBLIC;
REVOKE ALL ON FUNCTION tagway_set_retention(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tagway_set_retention(integer) TO {role};
GRANT EXECUTE ON FUNCTION tagway_seal_telemetry() TO {role};
GRANT SELECT ON telemetry_1m TO {role};
SELECT tagway_seal_telemetry();
"""


# ------------------------------------------------------------------------------ aggregates

# Minutes of the aggregate that may be stale: changes it has not materialized yet (the
# hypertable's invalidation log, the aggregate's own log, ranges a refresh is working on), below
# its watermark (above it the view aggregates raw rows itself). Those minutes, and the partial
# minutes at both ends of the range, are read from raw rows; the rest from the aggregate.
_AGGREGATE: Final = f"""
WITH agg AS (
  SELECT c.mat_hypertable_id AS mat, c.raw_hypertable_id AS raw,
         coalesce(w.watermark, -9223372036854775808) AS watermark
  FROM _timescaledb_catalog.continuous_agg c
  LEFT JOIN _timescaledb_catalog.continuous_aggs_watermark w
    ON w.mat_hypertable_id = c.mat_hypertable_id
  WHERE c.user_view_schema = current_schema() AND c.user_view_name = 'telemetry_1m'
), changed AS (
  SELECT l.lowest_modified_value AS lo, l.greatest_modified_value AS hi
  FROM _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log l, agg
  WHERE l.hypertable_id = agg.raw
  UNION ALL
  SELECT l.lowest_modified_value, l.greatest_modified_value
  FROM _timescaledb_catalog.continuous_aggs_materialization_invalidation_log l, agg
  WHERE l.materialization_id = agg.mat
  {{ranges}}
), stale AS (
  SELECT coalesce(range_agg(int8range(s.lo - s.lo %% {MINUTE_US},
                                      s.hi - s.hi %% {MINUTE_US} + {MINUTE_US})),
                  '{{}}'::int8multirange) AS minutes
  FROM (SELECT greatest(c.lo, %(a)s) AS lo, least(c.hi, %(b)s - 1, agg.watermark) AS hi
        FROM changed c, agg) s
  WHERE s.lo <= s.hi
), raw_ranges AS (
  SELECT lower(r) AS lo, upper(r) AS hi
  FROM stale, unnest(int8multirange(int8range(%(start)s, %(end)s))
                     - (int8multirange(int8range(%(a)s, %(b)s)) - stale.minutes)) AS r
), parts AS (
  SELECT m.bucket AS t, m.lo, m.hi, m.total, m.n_num, m.n, m.last_ts, m.last_num, m.last_text
  FROM telemetry_1m m, stale
  WHERE m.tenant_id = %(tenant)s AND m.series_id = %(series)s
    AND m.bucket >= %(a)s AND m.bucket < %(b)s AND NOT stale.minutes @> m.bucket
  UNION ALL
  SELECT t.ts, t.value_num, t.value_num, t.value_num, (t.value_num IS NOT NULL)::int, 1, t.ts,
         t.value_num, t.value_text
  FROM raw_ranges rr CROSS JOIN LATERAL (
    SELECT x.ts, x.value_num, x.value_text FROM telemetry x
    WHERE x.tenant_id = %(tenant)s AND x.series_id = %(series)s
      AND x.ts >= rr.lo AND x.ts < rr.hi
    OFFSET 0) t  -- not flattened: one scan per range, chunks excluded at run time
)
SELECT (t / %(bucket)s) * %(bucket)s AS bucket, min(lo), max(hi),
       sum(total) / nullif(sum(n_num), 0),
       last(last_num, last_ts), last(last_text, last_ts), sum(n)
FROM parts GROUP BY 1 ORDER BY 1
"""


# Ranges a batched refresh is working on; TimescaleDB 2.2x keeps them in their own table.
_RANGES: Final = """UNION ALL
  SELECT l.lowest_modified_value, l.greatest_modified_value
  FROM _timescaledb_catalog.continuous_aggs_materialization_ranges l, agg
  WHERE l.materialization_id = agg.mat"""
RANGES_TABLE: Final = "_timescaledb_catalog.continuous_aggs_materialization_ranges"
AGGREGATE: Final = _AGGREGATE.replace("{ranges}", _RANGES)
AGGREGATE_WITHOUT_RANGES: Final = _AGGREGATE.replace("{ranges}", "")


def minute_window(start: int, end: int, bucket_us: int) -> tuple[int, int] | None:
    """The whole minutes of [start, end) the aggregate can serve, or None (raw rows only)."""
    if bucket_us < MINUTE_US or bucket_us % MINUTE_US:
        return None
    first = -(-start // MINUTE_US) * MINUTE_US
    last = end // MINUTE_US * MINUTE_US
    return (first, last) if first < last else None


def aggregate_params(
    tenant_id: int, series_id: int, *, start: int, end: int, bucket_us: int
) -> dict[str, int] | None:
    """The parameters of `AGGREGATE`, or None when the bucket or range is too fine for it."""
    window = minute_window(start, end, bucket_us)
    if window is None:
        return None
    return {"tenant": tenant_id, "series": series_id, "start": start, "end": end,
            "a": window[0], "b": window[1], "bucket": bucket_us}  # fmt: skip


# ------------------------------------------------------------------------------ job health

# Whether a job's work is done, as of its last run: no chunk left that it was to compress or to
# drop, the aggregate's invalidation threshold moved up to where that run was to refresh, no job
# history older (or longer) than TimescaleDB's own history retention keeps.
# Run as the owner (`tagway_db_jobs`), who sees every chunk; the app role sees fewer.
_JOBS_BODY: Final = f"""
WITH j AS (
  SELECT j.job_id, j.proc_name, j.hypertable_schema, j.hypertable_name, j.config,
         s.last_run_status, s.total_failures, s.last_run_started_at AS started_at,
         (extract(epoch FROM s.last_run_started_at) * 1000000)::bigint AS started,
         coalesce(ca.materialization_hypertable_name, j.hypertable_name) AS storage,
         coalesce(ca.materialization_hypertable_schema, j.hypertable_schema) AS storage_schema
  FROM timescaledb_information.jobs j
  LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
  LEFT JOIN timescaledb_information.continuous_aggregates ca
    ON ca.view_schema = j.hypertable_schema AND ca.view_name = j.hypertable_name
)
SELECT j.job_id, j.proc_name::text, j.hypertable_name::text, j.last_run_status::text,
       j.total_failures::bigint,
       CASE j.proc_name
       WHEN 'policy_compression' THEN NOT EXISTS (
         SELECT 1 FROM timescaledb_information.chunks c
         WHERE c.hypertable_schema = j.storage_schema AND c.hypertable_name = j.storage
           AND NOT c.is_compressed
           AND c.range_end_integer <= j.started - (j.config ->> 'compress_after')::bigint)
       WHEN 'policy_retention' THEN NOT EXISTS (
         SELECT 1 FROM timescaledb_information.chunks c
         WHERE c.hypertable_schema = j.storage_schema AND c.hypertable_name = j.storage
           AND c.range_end_integer <= j.started - (j.config ->> 'drop_after')::bigint)
       WHEN 'policy_refresh_continuous_aggregate' THEN (
         SELECT t.watermark >= j.started - (j.config ->> 'end_offset')::bigint - {MINUTE_US}
         FROM _timescaledb_catalog.continuous_agg a
         JOIN _timescaledb_catalog.continuous_aggs_invalidation_threshold t
           ON t.hypertable_id = a.raw_hypertable_id
         WHERE a.user_view_schema = j.hypertable_schema AND a.user_view_name = j.hypertable_name)
       WHEN 'policy_job_stat_history_retention' THEN NOT EXISTS (
         SELECT 1 FROM timescaledb_information.job_history h
         WHERE h.start_time < j.started_at - (j.config ->> 'drop_after')::interval)
         AND NOT EXISTS (
           SELECT 1 FROM timescaledb_information.job_history h
           WHERE h.start_time < j.started_at GROUP BY h.job_id, h.succeeded
           HAVING count(*) > (j.config ->> CASE WHEN h.succeeded THEN 'max_successes_per_job'
                                               ELSE 'max_failures_per_job' END)::bigint)
       END
FROM j ORDER BY j.job_id
"""
JOBS: Final = "SELECT * FROM tagway_db_jobs()"

_KINDS: Final = {
    "policy_compression": "compression",
    "policy_retention": "retention",
    "policy_refresh_continuous_aggregate": "refresh",
    "policy_job_stat_history_retention": "job_history_retention",
    "policy_telemetry": "telemetry_report",
}


def job_health(rows: Sequence[Row]) -> list[MaintenanceJob]:
    """Classify the rows of `JOBS`."""
    jobs = []
    for job_id, proc, relation, last, failures, done in rows:
        kind = _KINDS.get(str(proc), f"job_{job_id}")
        name = f"{kind}:{relation}" if relation else kind
        work_done: Any = None if done is None else bool(done)
        if last is None or last == "Success":
            status = "ok"
        elif last == "Failed" and work_done:
            status = "failed_work_done"
        else:
            status = "failed"
        jobs.append(
            MaintenanceJob(
                id=int(job_id),
                job=name,
                last_run=last,
                failures=int(failures or 0),
                work_done=work_done,
                status=status,
            )
        )
    return jobs
