"""Migration 4 (both backends): commands, the shadow, write records, alarm state, the stream log.

- ``commands``: one row per command to a gateway, with its arguments, who created it, the
  client's idempotency key (unique per gateway), its TTL as ``expires_at``, its state
  (``queued → delivered → succeeded | failed | expired | unknown``, or ``cancelled``), the
  times of each step and the gateway's result. The row is the audit record.
- ``shadows``: per gateway, the desired document (setpoints, each with its own version and
  optional expiry) with its version, and the reported document the gateway last sent with the
  gateway's own version counter.
- ``write_records``: every setpoint write a gateway reports (cloud, shadow or local), keyed by
  the gateway's audit id, so a replayed batch stores each once.
- ``alarms`` becomes the alarms' *current* state (one row per gateway, device, name and kind);
  the rows it held until now, one per transition, move to ``alarm_events``. Severity becomes
  the gateway's word (``low | medium | high | critical``), and ``acknowledged_by`` text (who,
  from where) as the gateway reports it.
- PostgreSQL only: ``stream_log``, an UNLOGGED table (no WAL: it is a relay, not a record) that
  carries a live-stream event too large for a ``NOTIFY`` payload to the other replicas for a
  minute, and two SECURITY DEFINER functions that work across tenants:
  ``tagway_expire_commands(now_us)`` (queued commands past their TTL become ``expired``) and
  ``tagway_prune_stream_log(before_us)``.

Every new table has FORCE ROW LEVEL SECURITY on ``app.tenant_id`` like the other metadata
tables; ``alarm_events`` keeps the policies it had as ``alarms``.
"""

from __future__ import annotations

from typing import Any, Final

from cloud.storage.rls import tenant_policies

TABLES: Final = ("alarms", "commands", "shadows", "write_records", "stream_log")
"""The tables migration 4 creates (PostgreSQL; SQLite has no ``stream_log``)."""

_SEVERITY: Final = (
    "CASE severity WHEN 4 THEN 'critical' WHEN 3 THEN 'high' WHEN 2 THEN 'medium' ELSE 'low' END"
)

# Both backends: fill the current-state table from the transitions, newest per alarm.
_CURRENT_FROM_EVENTS: Final = """
INSERT INTO alarms (tenant_id, gateway_id, device, tag, name, kind, state, severity, message,
  value, ts, received_at, raised_at, cleared_at, acknowledged_at, acknowledged_by)
SELECT e.tenant_id, e.gateway_id, e.device, e.tag, e.name, e.kind, e.state, e.severity,
  e.message, e.value, e.ts, e.received_at,
  (SELECT max(x.ts) FROM alarm_events x WHERE x.gateway_id = e.gateway_id
     AND x.device = e.device AND x.name = e.name AND x.kind = e.kind AND x.state = 'active'),
  CASE WHEN e.state IN ('cleared', 'normal') THEN e.ts END,
  CASE WHEN e.state = 'acknowledged' THEN e.ts END, NULL
FROM alarm_events e WHERE e.id = (SELECT y.id FROM alarm_events y
  WHERE y.gateway_id = e.gateway_id AND y.device = e.device AND y.name = e.name
    AND y.kind = e.kind ORDER BY y.ts DESC, y.id DESC LIMIT 1);
UPDATE alarm_events SET alarm_id = (SELECT a.id FROM alarms a WHERE a.gateway_id =
  alarm_events.gateway_id AND a.device = alarm_events.device AND a.name = alarm_events.name
  AND a.kind = alarm_events.kind);
"""

SQLITE_MIGRATION: Final = f"""
ALTER TABLE alarms RENAME TO alarms_v3;
CREATE TABLE alarm_events (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id INTEGER NOT NULL,
  gateway_id INTEGER NOT NULL, alarm_id INTEGER, device TEXT NOT NULL, tag TEXT,
  name TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL, transition TEXT,
  ts INTEGER NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL, value REAL,
  received_at INTEGER NOT NULL, acknowledged_by TEXT, comment TEXT,
  UNIQUE (gateway_id, device, name, kind, state, ts));
INSERT INTO alarm_events (id, tenant_id, gateway_id, device, tag, name, kind, state, ts,
  severity, message, value, received_at)
  SELECT id, tenant_id, gateway_id, device, tag, name, kind, state, ts, {_SEVERITY}, message,
  value, received_at FROM alarms_v3;
DROP TABLE alarms_v3;
CREATE INDEX alarm_events_tenant_ts ON alarm_events (tenant_id, ts);
CREATE INDEX alarm_events_alarm ON alarm_events (alarm_id, ts);
CREATE TABLE alarms (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id INTEGER NOT NULL,
  gateway_id INTEGER NOT NULL, device TEXT NOT NULL, tag TEXT, name TEXT NOT NULL,
  kind TEXT NOT NULL, state TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL,
  value REAL, ts INTEGER NOT NULL, received_at INTEGER NOT NULL, raised_at INTEGER,
  cleared_at INTEGER, acknowledged_at INTEGER, acknowledged_by TEXT, comment TEXT,
  UNIQUE (gateway_id, device, name, kind));
CREATE INDEX alarms_tenant_state ON alarms (tenant_id, state, ts);
{_CURRENT_FROM_EVENTS}
CREATE TABLE commands (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id INTEGER NOT NULL,
  gateway_id INTEGER NOT NULL REFERENCES gateways(id), kind TEXT NOT NULL, args TEXT NOT NULL,
  idempotency_key TEXT, created_by TEXT NOT NULL, created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL, state TEXT NOT NULL, delivered_at INTEGER,
  deliveries INTEGER NOT NULL DEFAULT 0, finished_at INTEGER, result TEXT, error TEXT,
  cancelled_by TEXT, UNIQUE (gateway_id, idempotency_key));
CREATE INDEX commands_gateway_state ON commands (gateway_id, state);
CREATE INDEX commands_tenant ON commands (tenant_id, id);
CREATE INDEX commands_queued ON commands (state, expires_at);
CREATE TABLE shadows (gateway_id INTEGER PRIMARY KEY REFERENCES gateways(id),
  tenant_id INTEGER NOT NULL, desired TEXT NOT NULL DEFAULT '{{}}',
  desired_version INTEGER NOT NULL DEFAULT 0, desired_at INTEGER, desired_by TEXT,
  reported TEXT NOT NULL DEFAULT '{{}}', reported_version INTEGER NOT NULL DEFAULT 0,
  reported_at INTEGER);
CREATE TABLE write_records (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id INTEGER NOT NULL,
  gateway_id INTEGER NOT NULL, audit_id INTEGER NOT NULL, ts INTEGER NOT NULL,
  device TEXT NOT NULL, tag TEXT NOT NULL, value TEXT NOT NULL, old TEXT, read_back TEXT,
  outcome TEXT NOT NULL, reason TEXT, who TEXT NOT NULL, source TEXT NOT NULL,
  command_id INTEGER, received_at INTEGER NOT NULL, UNIQUE (gateway_id, audit_id, ts));
CREATE INDEX write_records_tenant ON write_records (tenant_id, gateway_id, ts)
"""

_PG_TABLES: Final = f"""
ALTER TABLE alarms RENAME TO alarm_events;
ALTER INDEX alarms_tenant_ts RENAME TO alarm_events_tenant_ts;
ALTER INDEX alarms_pkey RENAME TO alarm_events_pkey;
ALTER TABLE alarm_events RENAME CONSTRAINT alarms_gateway_id_device_name_kind_state_ts_key
  TO alarm_events_transition_key;
ALTER SEQUENCE alarms_id_seq RENAME TO alarm_events_id_seq;
ALTER TABLE alarm_events ALTER COLUMN severity TYPE text USING ({_SEVERITY});
ALTER TABLE alarm_events ALTER COLUMN acknowledged_by TYPE text USING (NULL);
ALTER TABLE alarm_events DROP COLUMN acknowledged_at;
ALTER TABLE alarm_events ADD COLUMN alarm_id bigint, ADD COLUMN transition text,
  ADD COLUMN comment text;
CREATE INDEX alarm_events_alarm ON alarm_events (alarm_id, ts);
CREATE TABLE alarms (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL REFERENCES tenants(id), gateway_id bigint NOT NULL,
  device text NOT NULL, tag text, name text NOT NULL, kind text NOT NULL, state text NOT NULL,
  severity text NOT NULL, message text NOT NULL, value double precision, ts bigint NOT NULL,
  received_at bigint NOT NULL, raised_at bigint, cleared_at bigint, acknowledged_at bigint,
  acknowledged_by text, comment text, UNIQUE (gateway_id, device, name, kind));
CREATE INDEX alarms_tenant_state ON alarms (tenant_id, state, ts);
{_CURRENT_FROM_EVENTS}
CREATE TABLE commands (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL REFERENCES tenants(id),
  gateway_id bigint NOT NULL REFERENCES gateways(id), kind text NOT NULL, args text NOT NULL,
  idempotency_key text, created_by text NOT NULL, created_at bigint NOT NULL,
  expires_at bigint NOT NULL, state text NOT NULL, delivered_at bigint,
  deliveries integer NOT NULL DEFAULT 0, finished_at bigint, result text, error text,
  cancelled_by text, UNIQUE (gateway_id, idempotency_key));
CREATE INDEX commands_gateway_state ON commands (gateway_id, state);
CREATE INDEX commands_tenant ON commands (tenant_id, id);
CREATE INDEX commands_queued ON commands (expires_at) WHERE state = 'queued';
CREATE TABLE shadows (gateway_id bigint PRIMARY KEY REFERENCES gateways(id),
  tenant_id bigint NOT NULL REFERENCES tenants(id), desired text NOT NULL DEFAULT '{{}}',
  desired_version bigint NOT NULL DEFAULT 0, desired_at bigint, desired_by text,
  reported text NOT NULL DEFAULT '{{}}', reported_version bigint NOT NULL DEFAULT 0,
  reported_at bigint);
CREATE TABLE write_records (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL REFERENCES tenants(id), gateway_id bigint NOT NULL,
  audit_id bigint NOT NULL, ts bigint NOT NULL, device text NOT NULL, tag text NOT NULL,
  value text NOT NULL, old text, read_back text, outcome text NOT NULL, reason text,
  who text NOT NULL, source text NOT NULL, command_id bigint, received_at bigint NOT NULL,
  UNIQUE (gateway_id, audit_id, ts));
CREATE INDEX write_records_tenant ON write_records (tenant_id, gateway_id, ts);
CREATE UNLOGGED TABLE stream_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL, created_at bigint NOT NULL, payload bytea NOT NULL);
CREATE INDEX stream_log_created ON stream_log (created_at);
"""

_PG_FUNCTIONS: Final = """
CREATE FUNCTION tagway_expire_commands(now_us bigint)
RETURNS TABLE (tenant_id bigint, id bigint, gateway_id bigint, kind text)
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
  UPDATE commands AS c SET state = 'expired', finished_at = now_us,
    error = 'not delivered before its TTL ran out'
  WHERE c.state = 'queued' AND c.expires_at <= now_us
  RETURNING c.tenant_id, c.id, c.gateway_id, c.kind
$fn$;
CREATE FUNCTION tagway_prune_stream_log(before_us bigint) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
  WITH gone AS (DELETE FROM stream_log WHERE created_at < before_us RETURNING 1)
  SELECT count(*) FROM gone
$fn$;
REVOKE ALL ON FUNCTION tagway_expire_commands(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION tagway_prune_stream_log(bigint) FROM PUBLIC;
"""


def pg_migration(*, role: str, **_: Any) -> str:
    """PostgreSQL migration 4: the tables, RLS like the other metadata tables, the functions."""
    policies = tenant_policies(TABLES, role=role)
    return f"""{_PG_TABLES}
{policies}
{_PG_FUNCTIONS}
DO $do$ BEGIN
  EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO {role}', current_schema());
END $do$;
GRANT EXECUTE ON FUNCTION tagway_expire_commands(bigint) TO {role};
GRANT EXECUTE ON FUNCTION tagway_prune_stream_log(bigint) TO {role};
"""
