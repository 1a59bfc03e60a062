"""Migration 2 (both backends): tenant CAs, claim tokens, gateway certificates, enrollments.

- ``tenant_cas``: one self-signed root per tenant, created on the tenant's first enrollment; the
  private key is stored only sealed with the service's master key (`provisioning.sealing`).
- ``claim_tokens``: SHA-256 of the token (never the token), its visible prefix, expiry, max and
  used count, the site/labels and default device settings given to the gateways it enrolls.
- ``gateway_certificates``: every certificate issued to a gateway, found by its ``x5t#S256``
  thumbprint; ``state`` is current, rotated or revoked. Only a current certificate of an
  unrevoked gateway authenticates, and the state lives here, so every replica agrees at once.
- ``gateway_enrollments``: what a gateway was enrolled with (claim token, site, labels, settings).
- ``rotation_tokens``: the ``jti`` of every token used to rotate a certificate (until it expires),
  so a rotation request cannot be replayed.

PostgreSQL: all five tables have FORCE ROW LEVEL SECURITY on ``app.tenant_id`` like the other
metadata tables. Two questions are asked before any tenant is known, and each is one narrow
SECURITY DEFINER function the app role may only execute (RLS stays on for the app role):
``tagway_redeem_claim_token(digest, now_us)`` (find a claim token by digest, check and count one
use, answer its tenant) and ``tagway_gateway_certificate(thumbprint)`` (the certificate a gateway
token names, with its tenant, state and whether the gateway is revoked).
"""

from __future__ import annotations

from typing import Any, Final

from cloud.storage.rls import tenant_policies

TABLES: Final = (
    "tenant_cas",
    "claim_tokens",
    "gateway_certificates",
    "gateway_enrollments",
    "rotation_tokens",
)

SQLITE_MIGRATION: Final = """
CREATE TABLE tenant_cas (tenant_id INTEGER PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
  certificate_pem TEXT NOT NULL, sealed_key BLOB NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE claim_tokens (id INTEGER PRIMARY KEY AUTOINCREMENT,
  tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
  token_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, expires_at INTEGER NOT NULL,
  max_uses INTEGER NOT NULL CHECK (max_uses >= 1), uses INTEGER NOT NULL DEFAULT 0,
  site TEXT, labels TEXT NOT NULL DEFAULT '{}', device_settings TEXT NOT NULL DEFAULT '{}',
  created_by INTEGER, created_at INTEGER NOT NULL, revoked_at INTEGER);
CREATE INDEX claim_tokens_tenant ON claim_tokens (tenant_id);
CREATE TABLE gateway_certificates (id INTEGER PRIMARY KEY AUTOINCREMENT,
  tenant_id INTEGER NOT NULL, gateway_id INTEGER NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
  serial TEXT NOT NULL, thumbprint TEXT NOT NULL UNIQUE, key_id TEXT NOT NULL,
  certificate_pem TEXT NOT NULL, not_after INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('current', 'rotated', 'revoked')),
  issued_at INTEGER NOT NULL, retired_at INTEGER);
CREATE INDEX gateway_certificates_gateway ON gateway_certificates (gateway_id);
CREATE TABLE gateway_enrollments (
  gateway_id INTEGER PRIMARY KEY REFERENCES gateways(id) ON DELETE CASCADE,
  tenant_id INTEGER NOT NULL,
  claim_token_id INTEGER REFERENCES claim_tokens(id) ON DELETE SET NULL,
  requested_name TEXT NOT NULL, site TEXT, labels TEXT NOT NULL,
  device_settings TEXT NOT NULL, enrolled_at INTEGER NOT NULL);
CREATE TABLE rotation_tokens (jti TEXT PRIMARY KEY, tenant_id INTEGER NOT NULL,
  gateway_id INTEGER NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
  expires_at INTEGER NOT NULL);
"""

_PG_TABLES: Final = """
CREATE TABLE tenant_cas (tenant_id bigint PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
  certificate_pem text NOT NULL, sealed_key bytea NOT NULL, created_at bigint NOT NULL);
CREATE TABLE claim_tokens (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
  token_hash text NOT NULL UNIQUE, prefix text NOT NULL, expires_at bigint NOT NULL,
  max_uses integer NOT NULL CHECK (max_uses >= 1), uses integer NOT NULL DEFAULT 0,
  site text, labels text NOT NULL DEFAULT '{}', device_settings text NOT NULL DEFAULT '{}',
  created_by bigint, created_at bigint NOT NULL, revoked_at bigint);
CREATE INDEX claim_tokens_tenant ON claim_tokens (tenant_id);
CREATE TABLE gateway_certificates (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id bigint NOT NULL, gateway_id bigint NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
  serial text NOT NULL, thumbprint text NOT NULL UNIQUE, key_id text NOT NULL,
  certificate_pem text NOT NULL, not_after bigint NOT NULL,
  state text NOT NULL CHECK (state IN ('current', 'rotated', 'revoked')),
  issued_at bigint NOT NULL, retired_at bigint);
CREATE INDEX gateway_certificates_gateway ON gateway_certificates (gateway_id);
CREATE TABLE gateway_enrollments (
  gateway_id bigint PRIMARY KEY REFERENCES gateways(id) ON DELETE CASCADE,
  tenant_id bigint NOT NULL,
  claim_token_id bigint REFERENCES claim_tokens(id) ON DELETE SET NULL,
  requested_name text NOT NULL, site text, labels text NOT NULL,
  device_settings text NOT NULL, enrolled_at bigint NOT NULL);
CREATE TABLE rotation_tokens (jti text PRIMARY KEY, tenant_id bigint NOT NULL,
  gateway_id bigint NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
  expires_at bigint NOT NULL);
"""

_PG_FUNCTIONS: Final = """
CREATE FUNCTION tagway_redeem_claim_token(digest text, now_us bigint)
RETURNS TABLE (status text, claim_id bigint, tenant_id bigint, site text, labels text,
               device_settings text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
#variable_conflict use_column
DECLARE
  c claim_tokens%ROWTYPE;
BEGIN
  -- FOR UPDATE: two replicas redeeming the last use of one token at once count it once.
  SELECT * INTO c FROM claim_tokens t WHERE t.token_hash = digest FOR UPDATE;
  IF NOT FOUND OR c.revoked_at IS NOT NULL THEN
    RETURN QUERY SELECT 'invalid'::text, NULL::bigint, NULL::bigint, NULL::text, NULL::text,
      NULL::text;
  ELSIF c.expires_at <= now_us THEN
    RETURN QUERY SELECT 'expired'::text, c.id, NULL::bigint, NULL::text, NULL::text, NULL::text;
  ELSIF c.uses >= c.max_uses THEN
    RETURN QUERY SELECT 'exhausted'::text, c.id, NULL::bigint, NULL::text, NULL::text,
      NULL::text;
  ELSE
    UPDATE claim_tokens t SET uses = t.uses + 1 WHERE t.id = c.id;
    RETURN QUERY SELECT 'ok'::text, c.id, c.tenant_id, c.site, c.labels, c.device_settings;
  END IF;
END
$fn$;
CREATE FUNCTION tagway_gateway_certificate(p_thumbprint text)
RETURNS TABLE (tenant_id bigint, gateway_id bigint, certificate_pem text, state text,
               gateway_revoked boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
  SELECT c.tenant_id, c.gateway_id, c.certificate_pem, c.state, g.revoked_at IS NOT NULL
  FROM gateway_certificates c JOIN gateways g ON g.id = c.gateway_id
  WHERE c.thumbprint = p_thumbprint
$fn$;
REVOKE ALL ON FUNCTION tagway_redeem_claim_token(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION tagway_gateway_certificate(text) FROM PUBLIC;
"""


def pg_migration(*, role: str, **_: Any) -> str:
    """PostgreSQL migration 2: the tables, RLS like the other metadata tables, the functions."""
    policies = tenant_policies(TABLES, role=role)
    return f"""{_PG_TABLES}
{policies}
{_PG_FUNCTIONS}
DO $do$ BEGIN
  EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO {role}', current_schema());
END $do$;
GRANT EXECUTE ON FUNCTION tagway_redeem_claim_token(text, bigint) TO {role};
GRANT EXECUTE ON FUNCTION tagway_gateway_certificate(text) TO {role};
"""
