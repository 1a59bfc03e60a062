"""PostgreSQL migrations: versioned scripts, applied by the schema owner under an advisory lock.

What migration 1 sets up, and why:

- The app role (`CloudSettings.app_role`, default ``tagway_app``): LOGIN, NOSUPERUSER,
  NOBYPASSRLS, not the owner of anything. The service's pool connects as this role; the
  migrations run as the owner (`migrate_database_url`), which needs CREATEROLE the first time.
  Set its password yourself (``ALTER ROLE tagway_app PASSWORD ...``) unless the server trusts
  local connections.
- Metadata tables have FORCE ROW LEVEL SECURITY. The app role's policy admits only rows whose
  ``tenant_id`` equals the transaction-local ``app.tenant_id`` (``set_config(..., true)``), so a
  query that forgot its tenant filter, or ran with no tenant set, sees nothing. ``tenants`` also
  admits all rows when the platform admin's transaction sets ``app.platform = 'on'``.
- Authentication and partition creation need more than a tenant's rights, so they are
  SECURITY DEFINER functions owned by the owner (`tagway_authenticate`,
  `tagway_ensure_partitions`); the app role may only execute them.
- Telemetry has no RLS (TimescaleDB compression does not support it); every query filters on
  ``tenant_id``. With TimescaleDB it is a hypertable (1-day chunks, compression segmented by
  series and ordered by time, retention, a real-time 1-minute continuous aggregate); without it,
  native range partitions per UTC day, created ahead of time and on demand, a BRIN index on time
  and the B-tree primary key on (series_id, ts). The app role is granted the parent table only,
  never a partition.

Migration 3 adds `tagway_drop_partitions(keep_days, dry_run)` (see `retention_function`): the
native path's retention, since only the owner may drop a partition. Migration 5
(`counts_and_limits`) adds batch digests, drop totals and per-tenant series limits. Migration 6
gives TimescaleDB what migration 3 gave native partitions: `drop_chunks` behind that function,
the policies following `retention_days` (`tagway_set_retention`), chunks sealed from the app role
and a `telemetry_1m` whose minutes combine into any larger bucket (`cloud.storage.timescale`).

Whether telemetry is a hypertable is decided once, by migration 1, from what the server offers
(`cloud.storage.pg_layout`); later migrations follow the schema, never the server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from cloud.storage import (
    asset_schema,
    citus,
    columnar,
    exact_schema,
    fleet_schema,
    simulated_schema,
    timescale,
    twoway_schema,
)
from cloud.storage.provisioning_schema import pg_migration

DAY_US: Final = 86_400_000_000

METADATA_TABLES: Final = (
    "api_keys",
    "gateways",
    "devices",
    "series",
    "ingest_batch",
    "alarms",
    "usage_daily",
    "rate_window",
    "gateway_drops",
)

_TABLES: Final = """
CREATE TABLE tenants (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL UNIQUE,
  created_at bigint NOT NULL, ingest_quota_per_day bigint, rate_limit integer);
CREATE TABLE api_keys (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL REFERENCES tenants(id), name text NOT NULL,
  role text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')), prefix text NOT NULL,
  key_hash text NOT NULL UNIQUE, created_at bigint NOT NULL, last_used_at bigint,
  revoked_at bigint);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
CREATE TABLE gateways (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL REFERENCES tenants(id), name text NOT NULL, token_prefix text,
  token_hash text UNIQUE, created_at bigint NOT NULL, last_seen_at bigint, last_seq bigint,
  revoked_at bigint, UNIQUE (tenant_id, name));
CREATE TABLE devices (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL REFERENCES tenants(id),
  gateway_id bigint NOT NULL REFERENCES gateways(id),
  name text NOT NULL, display_name text, metadata text NOT NULL DEFAULT '{}',
  created_at bigint NOT NULL, UNIQUE (gateway_id, name));
CREATE INDEX devices_tenant ON devices (tenant_id);
CREATE TABLE series (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL REFERENCES tenants(id), gateway_id bigint NOT NULL,
  device_id bigint NOT NULL REFERENCES devices(id), tag text NOT NULL, unit text,
  created_at bigint NOT NULL, UNIQUE (device_id, tag));
CREATE INDEX series_tenant ON series (tenant_id);
CREATE TABLE ingest_batch (tenant_id bigint NOT NULL, gateway_id bigint NOT NULL,
  seq bigint NOT NULL, created_at bigint NOT NULL, received_at bigint NOT NULL,
  readings integer NOT NULL, stored integer, bytes integer NOT NULL,
  PRIMARY KEY (gateway_id, seq));
CREATE TABLE alarms (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant_id bigint NOT NULL,
  gateway_id bigint NOT NULL, device text NOT NULL, tag text, name text NOT NULL,
  kind text NOT NULL, state text NOT NULL, ts bigint NOT NULL, severity integer NOT NULL,
  message text NOT NULL, value double precision, received_at bigint NOT NULL,
  acknowledged_at bigint, acknowledged_by bigint,
  UNIQUE (gateway_id, device, name, kind, state, ts));
CREATE INDEX alarms_tenant_ts ON alarms (tenant_id, ts);
CREATE TABLE gateway_drops (tenant_id bigint NOT NULL, gateway_id bigint NOT NULL,
  lane text NOT NULL, dropped bigint NOT NULL, PRIMARY KEY (gateway_id, lane));
CREATE TABLE usage_daily (tenant_id bigint NOT NULL, day bigint NOT NULL,
  readings bigint NOT NULL DEFAULT 0, bytes bigint NOT NULL DEFAULT 0,
  batches bigint NOT NULL DEFAULT 0, api_calls bigint NOT NULL DEFAULT 0,
  dropped bigint NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, day));
CREATE TABLE rate_window (tenant_id bigint NOT NULL, window_start bigint NOT NULL,
  hits integer NOT NULL, PRIMARY KEY (tenant_id, window_start));
"""

_TELEMETRY_COLUMNS: Final = """(tenant_id bigint NOT NULL, series_id bigint NOT NULL,
  ts bigint NOT NULL, value_num double precision, value_text text, quality smallint NOT NULL"""

_NATIVE_TELEMETRY: Final = f"""
CREATE TABLE telemetry {_TELEMETRY_COLUMNS},
  PRIMARY KEY (series_id, ts)) PARTITION BY RANGE (ts);
CREATE INDEX telemetry_ts_brin ON telemetry USING brin (ts);
CREATE FUNCTION tagway_ensure_partitions(days bigint[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
  d bigint;
  part text;
BEGIN
  FOREACH d IN ARRAY days LOOP
    part := 'telemetry_p' || to_char(to_timestamp(d * 86400) AT TIME ZONE 'UTC', 'YYYYMMDD');
    -- two replicas may ask for the same day at once; the lock makes the check-then-create safe
    PERFORM pg_advisory_xact_lock(7361, d::integer);
    IF to_regclass(part) IS NULL THEN
      EXECUTE format('CREATE TABLE %I PARTITION OF telemetry FOR VALUES FROM (%s) TO (%s)',
                     part, d * {DAY_US}, (d + 1) * {DAY_US});
      EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', part);
    END IF;
  END LOOP;
END
$fn$;
"""


def _timescale_telemetry(retention_days: int) -> str:
    return f"""
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE telemetry {_TELEMETRY_COLUMNS});
SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => {DAY_US}::bigint);
CREATE UNIQUE INDEX telemetry_series_ts ON telemetry (series_id, ts);
CREATE FUNCTION tagway_now_us() RETURNS bigint LANGUAGE sql STABLE AS
  $fn$ SELECT (extract(epoch FROM now()) * 1000000)::bigint $fn$;
SELECT set_integer_now_func('telemetry', 'tagway_now_us');
ALTER TABLE telemetry SET (timescaledb.compress, timescaledb.compress_segmentby = 'series_id',
  timescaledb.compress_orderby = 'ts');
SELECT add_compression_policy('telemetry', compress_after => {7 * DAY_US}::bigint);
SELECT add_retention_policy('telemetry', drop_after => {retention_days * DAY_US}::bigint);
CREATE MATERIALIZED VIEW telemetry_1m WITH (timescaledb.continuous,
  timescaledb.materialized_only = false) AS
  SELECT tenant_id, series_id, time_bucket(60000000::bigint, ts) AS bucket,
         min(value_num) AS lo, max(value_num) AS hi, avg(value_num) AS mean, count(*) AS n,
         last(value_num, ts) AS last_value
  FROM telemetry GROUP BY tenant_id, series_id, time_bucket(60000000::bigint, ts) WITH NO DATA;
SELECT add_continuous_aggregate_policy('telemetry_1m', start_offset => {DAY_US}::bigint,
  end_offset => 60000000::bigint, schedule_interval => INTERVAL '1 minute');
CREATE FUNCTION tagway_ensure_partitions(days bigint[]) RETURNS void
LANGUAGE sql SECURITY DEFINER AS $fn$ SELECT NULL::void $fn$;
"""


def _security(role: str) -> str:
    grants = ", ".join(("tenants", *METADATA_TABLES))
    policies = "\n".join(
        f"""ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {t} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON {t} TO {role}
  USING (tenant_id = tagway_current_tenant()) WITH CHECK (tenant_id = tagway_current_tenant());
CREATE POLICY owner_all ON {t} TO CURRENT_USER USING (true) WITH CHECK (true);"""
        for t in METADATA_TABLES
    )
    return f"""
DO $do$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
    CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently
END $do$;
CREATE FUNCTION tagway_current_tenant() RETURNS bigint LANGUAGE sql STABLE AS
  $fn$ SELECT nullif(current_setting('app.tenant_id', true), '')::bigint $fn$;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants TO {role}
  USING (id = tagway_current_tenant() OR current_setting('app.platform', true) = 'on')
  WITH CHECK (id = tagway_current_tenant() OR current_setting('app.platform', true) = 'on');
CREATE POLICY owner_all ON tenants TO CURRENT_USER USING (true) WITH CHECK (true);
{policies}
CREATE FUNCTION tagway_authenticate(digest text, now_us bigint)
RETURNS TABLE (kind text, tenant_id bigint, subject_id bigint, role text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
#variable_conflict use_column
BEGIN
  RETURN QUERY SELECT 'user'::text, k.tenant_id, k.id, k.role FROM api_keys k
    WHERE k.key_hash = digest AND k.revoked_at IS NULL;
  IF FOUND THEN
    UPDATE api_keys AS k SET last_used_at = now_us WHERE k.key_hash = digest
      AND (k.last_used_at IS NULL OR k.last_used_at < now_us - 60000000);
    RETURN;
  END IF;
  RETURN QUERY SELECT 'gateway'::text, g.tenant_id, g.id, NULL::text FROM gateways g
    WHERE g.token_hash = digest AND g.revoked_at IS NULL;
END
$fn$;
REVOKE ALL ON FUNCTION tagway_authenticate(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION tagway_ensure_partitions(bigint[]) FROM PUBLIC;
DO $do$ BEGIN
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role}', current_schema());
  EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO {role}', current_schema());
END $do$;
GRANT SELECT, INSERT, UPDATE, DELETE ON {grants} TO {role};
GRANT SELECT, INSERT, DELETE ON telemetry TO {role};
GRANT SELECT ON schema_migrations TO {role};
GRANT EXECUTE ON FUNCTION tagway_authenticate(text, bigint) TO {role};
GRANT EXECUTE ON FUNCTION tagway_ensure_partitions(bigint[]) TO {role};
"""


def initial_schema(*, role: str, timescaledb: bool, retention_days: int) -> str:
    """Migration 1: tables, telemetry storage, the app role, RLS and grants."""
    telemetry = _timescale_telemetry(retention_days) if timescaledb else _NATIVE_TELEMETRY
    return _TABLES + telemetry + _security(role)


_NATIVE_RETENTION: Final = f"""
CREATE FUNCTION tagway_drop_partitions(keep_days integer, dry_run boolean)
RETURNS TABLE (partition text, day bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
#variable_conflict use_column
DECLARE
  now_us bigint := (extract(epoch FROM now()) * 1000000)::bigint;
  -- whole days only, and never the day holding now (nor any later one), whatever keep_days says
  horizon bigint := least(now_us - greatest(keep_days, 1)::bigint * {DAY_US},
                          now_us - now_us % {DAY_US});
  p record;
BEGIN
  -- two replicas may run this at once: the second waits, then finds the partitions gone
  PERFORM pg_advisory_xact_lock(7362);
  FOR p IN
    SELECT c.relname::text AS name, b.upper / {DAY_US} - 1 AS d
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT substring(pg_get_expr(c.relpartbound, c.oid)
                          FROM 'TO [(]''(-?[0-9]+)''[)]')::bigint AS upper) b
    WHERE i.inhparent = 'telemetry'::regclass AND c.relname ~ '^telemetry_p[0-9]{{8}}$'
      AND b.upper <= horizon
    ORDER BY b.upper
  LOOP
    IF NOT dry_run THEN
      -- the same lock as tagway_ensure_partitions: a replica creating this day waits for us
      PERFORM pg_advisory_xact_lock(7361, p.d::integer);
      EXECUTE format('ALTER TABLE telemetry DETACH PARTITION %I', p.name);
      EXECUTE format('DROP TABLE %I', p.name);
    END IF;
    partition := p.name;
    day := p.d;
    RETURN NEXT;
  END LOOP;
END
$fn$;
"""

_TIMESCALE_RETENTION: Final = """
CREATE FUNCTION tagway_drop_partitions(keep_days integer, dry_run boolean)
RETURNS TABLE (partition text, day bigint)
LANGUAGE sql SECURITY DEFINER AS $fn$ SELECT NULL::text, NULL::bigint WHERE false $fn$;
"""


def retention_function(*, role: str, timescaledb: bool, **_: Any) -> str:
    """Migration 3: `tagway_drop_partitions`, which the app role may only execute.

    Native partitioning: detaches and drops the daily partitions whose whole range lies before
    ``now() - keep_days`` (by the database's clock) and answers (partition, day) for each; with
    `dry_run` it only answers. The partition holding today is never dropped. With TimescaleDB
    it answers nothing; migration 6 replaces it with one that drops chunks.
    """
    body = _TIMESCALE_RETENTION if timescaledb else _NATIVE_RETENTION
    return f"""{body}
REVOKE ALL ON FUNCTION tagway_drop_partitions(integer, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tagway_drop_partitions(integer, boolean) TO {role};
"""


def counts_and_limits(*, role: str, **_: Any) -> str:
    """Migration 5: batch digests (`seq_conflict`), drop totals kept as maxima, and per-tenant
    limits on devices and series (null: the service default)."""
    return f"""
ALTER TABLE ingest_batch ADD COLUMN digest bytea;
CREATE TABLE gateway_drop_totals (tenant_id bigint NOT NULL, gateway_id bigint NOT NULL,
  life text NOT NULL, lane text NOT NULL, total bigint NOT NULL,
  PRIMARY KEY (gateway_id, life, lane));
ALTER TABLE gateway_drop_totals ENABLE ROW LEVEL SECURITY;
ALTER TABLE gateway_drop_totals FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON gateway_drop_totals TO {role}
  USING (tenant_id = tagway_current_tenant()) WITH CHECK (tenant_id = tagway_current_tenant());
CREATE POLICY owner_all ON gateway_drop_totals TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON gateway_drop_totals TO {role};
ALTER TABLE tenants ADD COLUMN max_devices integer, ADD COLUMN max_series integer;
"""


def timescale_storage(*, role: str, timescaledb: bool, retention_days: int, **_: Any) -> str:
    """Migration 6: on TimescaleDB, chunks reached only through the hypertable, retention by
    `drop_chunks`, and `telemetry_1m` made for queries (see `cloud.storage.timescale`). Native
    partitions need nothing."""
    if not timescaledb:
        return "SELECT 1"
    return timescale.migration(role=role, retention_days=retention_days)


Migration = tuple[int, str, Callable[..., str]]

MIGRATIONS: Final[list[Migration]] = [
    (1, "initial schema", initial_schema),
    (2, "provisioning", pg_migration),
    (3, "telemetry retention", retention_function),
    (4, "two-way: commands, shadow, write records, alarm state", twoway_schema.pg_migration),
    (5, "batch digests, drop totals, tenant series limits", counts_and_limits),
    (6, "timescaledb: sealed chunks, chunk retention, telemetry_1m for queries", timescale_storage),
    (fleet_schema.VERSION, fleet_schema.NAME, fleet_schema.pg_migration),
    (simulated_schema.VERSION, simulated_schema.NAME, simulated_schema.pg_migration),
    (columnar.VERSION, columnar.NAME, columnar.pg_migration),
    (exact_schema.VERSION, exact_schema.NAME, exact_schema.pg_migration),
    (citus.VERSION, citus.NAME, citus.pg_migration),
    (asset_schema.VERSION, asset_schema.NAME, asset_schema.pg_migration),
    (columnar.HOUR_BLOCKS_VERSION, columnar.HOUR_BLOCKS_NAME, columnar.pg_migration_hour_blocks),
    (asset_schema.LIMIT_VERSION, asset_schema.LIMIT_NAME, asset_schema.pg_migration_limit),
]
