"""/v1/ingest authenticated by ES256 gateway tokens: what is accepted and what is refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from provisioning.keys import generate_private_key
from provisioning.tokens import mint_token
from tests.cloud.conftest import Cloud
from tests.provisioning.cloud_support import (
    claim_token,
    enroll,
    error,
    ingest,
    provisioning_settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def cloud(make_cloud: Any, tmp_path: Path) -> Cloud:
    started: Cloud = await make_cloud(**provisioning_settings(tmp_path))
    return started


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    # another gateway id in the claims, same signature
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415

    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["iss"] = "999"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_refused_tokens_say_why(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await enroll(cloud, await claim_token(cloud, tenant))
    assert (await ingest(cloud, gw.token(), gw.gateway_id)).status_code == 200
    stranger = generate_private_key()
    cases = {
        "signature": mint_token(
            stranger, gateway_id=str(gw.gateway_id), audience="http://cloud.test",
            thumbprint=gw.thumbprint,
        ),
        "expired": gw.token(now=time.time() - 3600),
        "audience": gw.token(audience="https://another-cloud.example"),
        "lifetime": gw.token(lifetime=7200),
        "unknown_certificate": gw.token(thumbprint="A" * 43),
        "malformed": "eyJhbGciOiJub25lIn0.e30.",
    }  # fmt: skip
    tampered = _tampered(gw.token())
    for reason, token in cases.items():
        status, code, details = error(await ingest(cloud, token, gw.gateway_id, seq=2))
        assert (status, code, details["reason"]) == (401, "gateway_token_refused", reason), reason
    status, code, details = error(await ingest(cloud, tampered, gw.gateway_id, seq=2))
    assert (status, code) == (401, "gateway_token_refused")
    assert details["reason"] in {"signature", "issuer"}
    r = await cloud.get(tenant.admin, "/v1/usage")
    assert sum(u["batches"] for u in r.json()["days"]) == 1  # nothing refused was stored


async def test_a_revoked_gateway_is_refused_at_once(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await enroll(cloud, await claim_token(cloud, tenant))
    token = gw.token()
    assert (await ingest(cloud, token, gw.gateway_id, seq=1)).status_code == 200
    r = await cloud.client.post(
        f"/v1/gateways/{gw.gateway_id}/revoke", headers=cloud.auth(tenant.admin)
    )
    assert r.status_code == 200
    status, _, details = error(await ingest(cloud, token, gw.gateway_id, seq=2))
    assert (status, details["reason"]) == (401, "revoked")
    certificates = await cloud.get(tenant.admin, f"/v1/gateways/{gw.gateway_id}/certificates")
    assert [c["state"] for c in certificates.json()] == ["revoked"]
    # revocation is final: no interim token either (the device enrolls again, as a new gateway)
    r = await cloud.client.post(
        f"/v1/gateways/{gw.gateway_id}/token", headers=cloud.auth(tenant.admin)
    )
    assert (r.status_code, r.json()["error"]["code"]) == (409, "gateway_revoked")
    status, _, details = error(await ingest(cloud, gw.token(), gw.gateway_id, seq=3))
    assert (status, details["reason"]) == (401, "revoked")


async def test_a_gateway_of_tenant_a_cannot_write_into_tenant_b(cloud: Cloud) -> None:
    a, b = await cloud.tenant("a"), await cloud.tenant("b")
    gw_a = await enroll(cloud, await claim_token(cloud, a), name="gw")
    gw_b = await enroll(cloud, await claim_token(cloud, b), name="gw")
    r = await ingest(cloud, gw_a.token(), gw_b.gateway_id)  # A's token, B's gateway id
    assert r.status_code == 403
    # A's token with B's gateway as issuer does not verify either
    r = await ingest(cloud, gw_a.token(gateway_id=str(gw_b.gateway_id)), gw_b.gateway_id)
    assert error(r)[2]["reason"] == "issuer"
    assert (await cloud.get(b.admin, "/v1/series")).json() == []
    assert (await ingest(cloud, gw_b.token(), gw_b.gateway_id)).status_code == 200
    assert (await cloud.get(a.admin, "/v1/series")).json() == []


async def test_interim_gateway_tokens_are_an_explicit_option(
    make_cloud: Any, tmp_path: Path
) -> None:
    strict = await make_cloud(**provisioning_settings(tmp_path, allow_static_gateway_tokens=False))
    tenant = await strict.tenant("acme")  # API keys still work
    gateway_id, interim = await strict.gateway(tenant)
    assert (await ingest(strict, interim, gateway_id)).status_code == 401
    gw = await enroll(strict, await claim_token(strict, tenant), name="enrolled")
    assert (await ingest(strict, gw.token(), gw.gateway_id)).status_code == 200


async def test_a_deleted_gateway_takes_its_certificates_along(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await enroll(cloud, await claim_token(cloud, tenant))
    assert (await ingest(cloud, gw.token(), gw.gateway_id)).status_code == 200
    r = await cloud.client.delete(f"/v1/gateways/{gw.gateway_id}", headers=cloud.auth(tenant.admin))
    assert r.status_code == 204
    status, _, details = error(await ingest(cloud, gw.token(), gw.gateway_id, seq=2))
    assert (status, details["reason"]) == (401, "unknown_certificate")
