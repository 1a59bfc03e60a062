"""Claim tokens and enrollment through the cloud API, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from provisioning.ca import verify_chain
from provisioning.certificates import load_certificates_pem
from provisioning.csr import create_csr
from provisioning.keys import generate_private_key
from tests.cloud.conftest import Cloud
from tests.provisioning.cloud_support import (
    CLOUD_URL,
    claim_token,
    enroll,
    error,
    ingest,
    provision,
    provisioning_settings,
    run_sql,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def cloud(make_cloud: Any, tmp_path: Path) -> Cloud:
    started: Cloud = await make_cloud(**provisioning_settings(tmp_path))
    return started


async def test_claim_token_is_shown_once_listed_by_prefix_and_revocable(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    admin = cloud.auth(tenant.admin)
    r = await cloud.client.post(
        "/v1/claim-tokens",
        json={"expires_in_s": 3600, "max_uses": 10, "site": "plant-a", "labels": {"line": "3"}},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    token, record = r.json()["token"], r.json()["claim_token"]
    assert token.startswith("twc_")
    assert record["prefix"] == token[:12]
    assert (record["max_uses"], record["uses"], record["site"]) == (10, 0, "plant-a")
    listed = await cloud.client.get("/v1/claim-tokens", headers=admin)
    assert token not in listed.text
    assert [t["prefix"] for t in listed.json()] == [token[:12]]

    operator = await cloud.key(tenant, "operator")
    r = await cloud.client.post("/v1/claim-tokens", json={}, headers=cloud.auth(operator))
    assert r.status_code == 403
    other = await cloud.tenant("other")
    r = await cloud.client.delete(
        f"/v1/claim-tokens/{record['id']}", headers=cloud.auth(other.admin)
    )
    assert r.status_code == 404  # another tenant's token does not exist for them

    r = await cloud.client.delete(f"/v1/claim-tokens/{record['id']}", headers=admin)
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    assert error(await provision(cloud, token))[:2] == (401, "claim_token_invalid")


async def test_enrollment_then_ingest_is_visible_to_the_tenant(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    token = await claim_token(
        cloud, tenant, site="plant-a", labels={"line": "3"},
        device_settings={"poll_interval": 2.0},
    )  # fmt: skip
    gw = await enroll(cloud, token, name="press-3")
    answer = gw.answer
    assert answer["tenant_id"] == tenant.id
    assert (answer["site"], answer["labels"]) == ("plant-a", {"line": "3"})
    assert answer["device_settings"] == {"poll_interval": 2.0}
    assert answer["cloud"]["url"] == CLOUD_URL
    assert answer["cloud"]["ingest_url"] == f"{CLOUD_URL}/v1/ingest"
    assert answer["cloud"]["limits"]["max_body_bytes"] > 0
    chain = load_certificates_pem(answer["certificate_chain"].encode())
    assert verify_chain(chain, chain[-1]) == str(gw.gateway_id)

    r = await ingest(cloud, gw.token(), gw.gateway_id)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 10
    admin = tenant.admin
    gateways = (await cloud.get(admin, "/v1/gateways")).json()
    assert [(g["id"], g["name"]) for g in gateways] == [(gw.gateway_id, "press-3")]
    series = (await cloud.get(admin, "/v1/series")).json()
    assert sorted(s["tag"] for s in series) == ["flow", "pressure"]
    page = await cloud.get(admin, f"/v1/series/{series[0]['id']}/raw", start=0, limit=100)
    assert len(page.json()["points"]) == 5
    certificates = (await cloud.get(admin, f"/v1/gateways/{gw.gateway_id}/certificates")).json()
    assert [(c["thumbprint"], c["state"]) for c in certificates] == [(gw.thumbprint, "current")]
    # the other tenant sees none of it
    other = await cloud.tenant("other")
    assert (await cloud.get(other.admin, "/v1/gateways")).json() == []
    r = await cloud.get(other.admin, f"/v1/gateways/{gw.gateway_id}/certificates")
    assert r.status_code == 404


async def test_unknown_malformed_expired_and_used_up_claim_tokens_are_refused(
    cloud: Cloud, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tenant = await cloud.tenant("acme")
    unknown = "twc_" + secrets.token_urlsafe(32)
    assert error(await provision(cloud, unknown))[:2] == (401, "claim_token_invalid")
    assert error(await provision(cloud, "hello"))[:2] == (401, "claim_token_invalid")

    single = await claim_token(cloud, tenant, max_uses=1)
    key = generate_private_key()
    assert (await provision(cloud, single, key=key)).status_code == 201
    # the same request again (a replay), and a new gateway with the used-up token
    assert error(await provision(cloud, single, key=key))[:2] == (410, "claim_token_exhausted")
    r = await provision(cloud, single, name="another")
    assert error(r)[:2] == (410, "claim_token_exhausted")

    expiring = await claim_token(cloud, tenant, expires_in_s=60)
    owner = request.getfixturevalue("owner_dsn") if backend != "sqlite" else None
    run_sql(backend, tmp_path, owner, "UPDATE claim_tokens SET expires_at = 1")
    assert error(await provision(cloud, expiring))[:2] == (410, "claim_token_expired")
    listed = (await cloud.get(tenant.admin, "/v1/claim-tokens")).json()
    assert [t["uses"] for t in listed] == [1, 0]
    assert len((await cloud.get(tenant.admin, "/v1/gateways")).json()) == 1


def _der_length(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _spliced_csr(info_from: Any, signature_from: Any) -> bytes:
    """A CSR with one key's request info and another key's signature."""
    algorithm = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    bits = b"\x00" + signature_from.signature
    body = info_from.tbs_certrequest_bytes + algorithm + b"\x03" + _der_length(len(bits)) + bits
    der = b"\x30" + _der_length(len(body)) + body
    import base64  # noqa: PLC0415 - only this helper

    lines = base64.encodebytes(der).decode().replace("\n", "")
    wrapped = "\n".join(lines[i : i + 64] for i in range(0, len(lines), 64))
    pem = f"-----BEGIN CERTIFICATE REQUEST-----\n{wrapped}\n-----END CERTIFICATE REQUEST-----\n"
    return pem.encode()


async def test_csr_whose_key_did_not_sign_it_is_422_and_costs_no_use(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    token = await claim_token(cloud, tenant, max_uses=1)
    mine, theirs = generate_private_key(), generate_private_key()
    forged = _spliced_csr(create_csr(theirs, "press-3"), create_csr(mine, "press-3"))
    r = await cloud.client.post(
        "/v1/provision", json={"claim_token": token, "csr": forged.decode(), "name": "press-3"}
    )
    status, code, details = error(r)
    assert (status, code, details["path"]) == (422, "csr_invalid", ["body", "csr"])
    assert "signature" in r.json()["error"]["message"]
    r = await cloud.client.post(
        "/v1/provision", json={"claim_token": token, "csr": "not a csr", "name": "x"}
    )
    assert error(r)[:2] == (422, "csr_invalid")
    # nothing was counted: the single-use token still enrolls
    assert (await provision(cloud, token)).status_code == 201


async def test_a_taken_name_is_409_and_costs_no_use(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    token = await claim_token(cloud, tenant, max_uses=2)
    await enroll(cloud, token, name="press-3")
    assert error(await provision(cloud, token, name="press-3"))[:2] == (409, "gateway_name_taken")
    await enroll(cloud, token, name="press-4")


async def test_the_tenant_ca_key_is_stored_sealed(
    cloud: Cloud, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tenant = await cloud.tenant("acme")
    await enroll(cloud, await claim_token(cloud, tenant))
    if backend != "sqlite":
        import psycopg  # noqa: PLC0415

        with psycopg.connect(request.getfixturevalue("owner_dsn")) as conn:
            row = conn.execute("SELECT sealed_key, certificate_pem FROM tenant_cas").fetchone()
    else:
        import sqlite3  # noqa: PLC0415

        with sqlite3.connect(tmp_path / "cloud.db") as conn:
            row = conn.execute("SELECT sealed_key, certificate_pem FROM tenant_cas").fetchone()
    assert row is not None
    sealed = bytes(row[0])
    assert sealed.startswith(b"TWS1")
    with pytest.raises(ValueError, match="Could not deserialize"):  # useless without the master key
        serialization.load_der_private_key(sealed, password=None)
    assert "PRIVATE" not in row[1]
    assert oct((tmp_path / "master.key").stat().st_mode & 0o777) == "0o600"
