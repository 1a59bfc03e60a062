"""The asset-model migration (both backends): the ISA-95 asset tree and devices placed in it.

- ``assets``: a tenant's tree of sites, areas, lines and equipment. `parent_id` is null at the
  root; `level` is one of `LEVELS`, always below the parent's; `name` is unique among siblings
  (the unique index on ``COALESCE(parent_id, 0)`` covers the roots too). Each row keeps its
  whole `path` of names (``plant-a/packaging/line2``) and of ids (`id_path`, ``/1/5/9/``), so a
  subtree is one ``id_path LIKE '/1/5/%'`` (digits and slashes only: nothing to escape) and a
  rename or a move rewrites the descendants' paths in one statement each.
- ``devices.asset_id``: where a device sits (null: unassigned); ``devices.asset_source`` says
  who put it there: ``api`` (pinned by a user, which the gateway's path never overrides) or
  ``gateway`` (from the path its gateway reports), null when neither did.
- ``device_paths``: the ISA-95 path each gateway last reported for each of its devices (event
  ``asset_paths``), kept so a device the gateway names before its first reading is placed when
  it appears; ``gateways.paths_seq`` orders those reports.

PostgreSQL: FORCE ROW LEVEL SECURITY on both tables like the other metadata tables; on Citus
they stay local tables on the coordinator.
"""

from __future__ import annotations

from typing import Any, Final

from cloud.storage.rls import tenant_policies

VERSION: Final = 12
NAME: Final = "asset model: assets, device placement, reported paths"

LEVELS: Final = ("site", "area", "line", "equipment")
"""The levels of the tree, top first; a child's level comes after its parent's."""

TABLES: Final = ("assets", "device_paths")

_TABLES: Final = """
CREATE TABLE assets (id {id}, tenant_id {big} NOT NULL, parent_id {big} REFERENCES assets(id),
  level text NOT NULL CHECK (level IN ('site', 'area', 'line', 'equipment')),
  name text NOT NULL, path text NOT NULL, id_path text NOT NULL, created_at {big} NOT NULL);
CREATE UNIQUE INDEX assets_sibling_name ON assets (tenant_id, (COALESCE(parent_id, 0)), name);
CREATE INDEX assets_tree ON assets (tenant_id, id_path);
CREATE TABLE device_paths (tenant_id {big} NOT NULL, gateway_id {big} NOT NULL,
  device text NOT NULL, path text NOT NULL, PRIMARY KEY (gateway_id, device));
CREATE INDEX device_paths_tenant ON device_paths (tenant_id);
ALTER TABLE devices ADD COLUMN asset_id {big} REFERENCES assets(id);
ALTER TABLE devices ADD COLUMN asset_source text;
CREATE INDEX devices_asset ON devices (tenant_id, asset_id);
ALTER TABLE gateways ADD COLUMN paths_seq {big}
"""

SQLITE_MIGRATION: Final = _TABLES.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", big="INTEGER")


def pg_migration(*, role: str, **_: Any) -> str:
    """PostgreSQL: the tables with RLS, the new columns, and the sequence for the app role."""
    tables = _TABLES.format(id="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", big="bigint")
    return f"""{tables};
{tenant_policies(TABLES, role=role)}
DO $do$ BEGIN
  EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO {role}', current_schema());
END $do$;
"""


LIMIT_VERSION: Final = 14
LIMIT_NAME: Final = "tenant asset limits"
SQLITE_LIMIT_MIGRATION: Final = "ALTER TABLE tenants ADD COLUMN max_assets INTEGER;"


def pg_migration_limit(**_: Any) -> str:
    """Migration 14: ``tenants.max_assets``, the most assets the tenant's gateways' paths fill
    its tree to (null: the service's default, `cloud.storage.asset_tree.MAX_ASSETS`)."""
    return "ALTER TABLE tenants ADD COLUMN max_assets integer;"
