"""Row-level security for PostgreSQL metadata tables, as every migration sets it up."""

from __future__ import annotations

from collections.abc import Iterable


def tenant_policies(tables: Iterable[str], *, role: str) -> str:
    """FORCE ROW LEVEL SECURITY on each table: the app role sees and writes only the rows of the
    transaction's tenant (`tagway_current_tenant()`), the owner everything; the app role gets
    SELECT, INSERT, UPDATE and DELETE. `tables` are our constant names, never user input."""
    return "\n".join(
        f"""ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {t} FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON {t} TO {role}
  USING (tenant_id = tagway_current_tenant()) WITH CHECK (tenant_id = tagway_current_tenant());
CREATE POLICY owner_all ON {t} TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {role};"""
        for t in tables
    )
