"""The fleet migration (both backends): labels, config versions, rollouts, gateway status.

- ``gateway_labels``: a gateway's labels (``site=plant-a``), one row per key; filled from the
  labels each gateway was enrolled with, and set with ``PUT /v1/gateways/{id}/labels``.
- ``config_versions``: every config document pushed (or adopted from a gateway), immutable,
  with its SHA-256, who made it, when and why. The id is the version.
- ``gateway_configs``: per gateway, what the cloud wants it to run (``desired_version``, who
  assigned it and through which rollout), whether it has its own assignment (``pinned``: label
  rollouts pass it by), what it reported running and how the last version went (outcome,
  reason, validator problems), and the local document when the file on the gateway drifted.
- ``config_events``: who changed what and when, per gateway: assignments, each outcome the
  gateway reported, drift.
- ``rollouts`` and ``rollout_gateways``: a version assigned to one gateway or to every gateway
  carrying a label, sent in waves; each gateway's state in its wave.
- ``gateway_status``: the newest status document of each gateway, with the health the cloud
  derived from it; ``gateway_health_events`` keeps each change of that health.

PostgreSQL: FORCE ROW LEVEL SECURITY on every table like the other metadata tables, and two
SECURITY DEFINER functions for the work that spans tenants: ``tagway_due_rollouts(now_us)``
(running rollouts with a gateway past its deadline) and ``tagway_fleet_health(now_us,
offline_after_us)`` (gateways per tenant and health, for the metrics).
"""

from __future__ import annotations

from typing import Any, Final

from cloud.storage.rls import tenant_policies

VERSION: Final = 7
NAME: Final = "fleet: labels, config versions, rollouts, gateway status"

TABLES: Final = (
    "gateway_labels",
    "config_versions",
    "gateway_configs",
    "config_events",
    "rollouts",
    "rollout_gateways",
    "gateway_status",
    "gateway_health_events",
)

# One definition for both backends: ``{id}`` is the identity column, ``{big}`` the integer type.
_TABLES: Final = """
CREATE TABLE gateway_labels (tenant_id {big} NOT NULL, gateway_id {big} NOT NULL
  REFERENCES gateways(id) ON DELETE CASCADE, key text NOT NULL, value text NOT NULL,
  PRIMARY KEY (gateway_id, key));
CREATE INDEX gateway_labels_select ON gateway_labels (tenant_id, key, value);
CREATE TABLE config_versions (id {id}, tenant_id {big} NOT NULL, document text NOT NULL,
  digest text NOT NULL, size {big} NOT NULL, created_at {big} NOT NULL, created_by text NOT NULL,
  comment text, source text NOT NULL, gateway_id {big});
CREATE INDEX config_versions_tenant ON config_versions (tenant_id, id);
CREATE TABLE gateway_configs (gateway_id {big} PRIMARY KEY REFERENCES gateways(id)
  ON DELETE CASCADE, tenant_id {big} NOT NULL, pinned integer NOT NULL DEFAULT 0,
  desired_version {big}, desired_at {big}, desired_by text, desired_via text, rollout_id {big},
  managed text, running_version {big}, running_digest text, outcome text, outcome_version {big},
  outcome_digest text, reason text, problems text, outcome_at {big},
  report_seq {big} NOT NULL DEFAULT 0, last_good_version {big}, local_digest text,
  local_document text, local_at {big});
CREATE TABLE config_events (id {id}, tenant_id {big} NOT NULL, gateway_id {big} NOT NULL,
  at {big} NOT NULL, kind text NOT NULL, version {big}, by_whom text NOT NULL, detail text);
CREATE INDEX config_events_gateway ON config_events (tenant_id, gateway_id, id);
CREATE TABLE rollouts (id {id}, tenant_id {big} NOT NULL, version_id {big} NOT NULL,
  target text NOT NULL, label_key text, label_value text, gateway_id {big},
  wave_size integer, wave_percent integer, wave_timeout_s integer NOT NULL,
  state text NOT NULL, reason text, created_at {big} NOT NULL, created_by text NOT NULL,
  finished_at {big});
CREATE INDEX rollouts_tenant ON rollouts (tenant_id, id);
CREATE INDEX rollouts_running ON rollouts (state, tenant_id);
CREATE TABLE rollout_gateways (rollout_id {big} NOT NULL, gateway_id {big} NOT NULL,
  tenant_id {big} NOT NULL, wave integer NOT NULL, state text NOT NULL,
  previous_version {big}, started_at {big}, deadline {big}, finished_at {big}, reason text,
  PRIMARY KEY (rollout_id, gateway_id));
CREATE INDEX rollout_gateways_gateway ON rollout_gateways (tenant_id, gateway_id, state);
CREATE INDEX rollout_gateways_deadline ON rollout_gateways (state, deadline);
CREATE TABLE gateway_status (gateway_id {big} PRIMARY KEY REFERENCES gateways(id)
  ON DELETE CASCADE, tenant_id {big} NOT NULL, seq {big} NOT NULL, ts {big} NOT NULL,
  received_at {big} NOT NULL, document text NOT NULL, health text NOT NULL,
  reasons text NOT NULL, health_since {big} NOT NULL);
CREATE TABLE gateway_health_events (id {id}, tenant_id {big} NOT NULL,
  gateway_id {big} NOT NULL, at {big} NOT NULL, health text NOT NULL, reasons text NOT NULL);
CREATE INDEX gateway_health_events_gateway ON gateway_health_events (tenant_id, gateway_id, id)
"""

SQLITE_MIGRATION: Final = (
    _TABLES.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", big="INTEGER")
    + """;
INSERT INTO gateway_labels (tenant_id, gateway_id, key, value)
  SELECT e.tenant_id, e.gateway_id, j.key, CAST(j.value AS TEXT)
  FROM gateway_enrollments e, json_each(e.labels) j
"""
)

_PG_FUNCTIONS: Final = """
CREATE FUNCTION tagway_due_rollouts(now_us bigint)
RETURNS TABLE (tenant_id bigint, rollout_id bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
  SELECT DISTINCT g.tenant_id, g.rollout_id FROM rollout_gateways g
  WHERE g.state = 'sent' AND g.deadline <= now_us
$fn$;
CREATE FUNCTION tagway_fleet_health(now_us bigint, offline_after_us bigint)
RETURNS TABLE (tenant_id bigint, health text, gateways bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
  SELECT g.tenant_id,
    CASE WHEN g.last_seen_at IS NULL OR g.last_seen_at < now_us - offline_after_us
         THEN 'offline' ELSE COALESCE(s.health, 'unknown') END AS h, count(*)
  FROM gateways g LEFT JOIN gateway_status s ON s.gateway_id = g.id
  WHERE g.revoked_at IS NULL GROUP BY 1, 2
$fn$;
REVOKE ALL ON FUNCTION tagway_due_rollouts(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION tagway_fleet_health(bigint, bigint) FROM PUBLIC;
"""


def pg_migration(*, role: str, **_: Any) -> str:
    """PostgreSQL: the tables, RLS like the other metadata tables, the two functions."""
    tables = _TABLES.format(id="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", big="bigint")
    policies = tenant_policies(TABLES, role=role)
    return f"""{tables};
INSERT INTO gateway_labels (tenant_id, gateway_id, key, value)
  SELECT e.tenant_id, e.gateway_id, j.key, j.value
  FROM gateway_enrollments e, jsonb_each_text(e.labels::jsonb) j;
{policies}
{_PG_FUNCTIONS}
DO $do$ BEGIN
  EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO {role}', current_schema());
END $do$;
GRANT EXECUTE ON FUNCTION tagway_due_rollouts(bigint) TO {role};
GRANT EXECUTE ON FUNCTION tagway_fleet_health(bigint, bigint) TO {role};
"""
