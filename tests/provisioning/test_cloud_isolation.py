"""Row-level security on the provisioning tables (PostgreSQL, as the production app role)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from cloud.storage.provisioning_schema import TABLES
from tests.cloud.conftest import ENGINE_PARAMS, app_dsn
from tests.provisioning.cloud_support import claim_token, enroll, provisioning_settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.mark.parametrize("backend", ENGINE_PARAMS, indirect=True)
async def test_provisioning_rows_are_visible_only_in_their_tenant(
    make_cloud: Any, tmp_path: Path, owner_dsn: str
) -> None:
    cloud = await make_cloud(**provisioning_settings(tmp_path))
    a, b = await cloud.tenant("a"), await cloud.tenant("b")
    gw_a = await enroll(cloud, await claim_token(cloud, a), name="gw")
    await enroll(cloud, await claim_token(cloud, b), name="gw")
    with psycopg.connect(app_dsn(owner_dsn)) as conn:
        forced = conn.execute(
            "SELECT relname FROM pg_class WHERE relname = ANY(%s)"
            " AND relrowsecurity AND relforcerowsecurity",
            [list(TABLES)],
        ).fetchall()
        assert {r[0] for r in forced} == set(TABLES)
        for table in TABLES:  # no tenant context: nothing
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - constants
            assert count == (0,), table
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(a.id)])
        assert conn.execute("SELECT tenant_id FROM tenant_cas").fetchall() == [(a.id,)]
        assert conn.execute("SELECT tenant_id FROM claim_tokens").fetchall() == [(a.id,)]
        rows = conn.execute("SELECT gateway_id FROM gateway_certificates").fetchall()
        assert rows == [(gw_a.gateway_id,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO claim_tokens (tenant_id, token_hash, prefix, expires_at, max_uses,"
                " created_at) VALUES (%s, 'x', 'twc_x', 0, 1, 0)",
                [b.id],
            )
        conn.rollback()
        # the narrow lookups answer only what they are asked, and nothing without a match
        row = conn.execute(
            "SELECT * FROM tagway_gateway_certificate(%s)", [gw_a.thumbprint]
        ).fetchone()
        assert row is not None
        assert (row[0], row[1], row[3], row[4]) == (a.id, gw_a.gateway_id, "current", False)
        assert conn.execute("SELECT * FROM tagway_gateway_certificate('x')").fetchall() == []
        answer = conn.execute("SELECT * FROM tagway_redeem_claim_token('nope', 0)").fetchone()
        assert answer == ("invalid", None, None, None, None, None)
