"""Helpers for the provisioning tests against the real cloud app (both backends).

The fixtures of `tests.cloud.conftest` are imported by the test modules (pytest only shares
conftest fixtures downwards); these helpers act as a tenant admin and as an enrolled gateway.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from cloud.contract import encode_batch
from provisioning.certificates import load_certificates_pem, thumbprint
from provisioning.csr import create_csr, csr_to_pem
from provisioning.keys import PrivateKey, generate_private_key
from provisioning.tokens import mint_token
from tests.cloud.conftest import Cloud, Tenant, make_batch

CLOUD_URL = "http://cloud.test"


def provisioning_settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Settings overrides that enable provisioning with a master key in `tmp_path`."""
    return {
        "public_url": CLOUD_URL,
        "master_key_file": tmp_path / "master.key",
        "create_master_key": True,
        **overrides,
    }


async def claim_token(cloud: Cloud, tenant: Tenant, **body: Any) -> str:
    """A new claim token of the tenant (as its admin)."""
    r = await cloud.client.post("/v1/claim-tokens", json=body, headers=cloud.auth(tenant.admin))
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@dataclass
class Enrolled:
    """A gateway the cloud enrolled: its key, certificate and id."""

    gateway_id: int
    key: PrivateKey
    chain_pem: str
    answer: dict[str, Any]

    @property
    def thumbprint(self) -> str:
        """``x5t#S256`` of its certificate."""
        return thumbprint(load_certificates_pem(self.chain_pem.encode())[0])

    def token(self, **overrides: Any) -> str:
        """A fresh ES256 token of this gateway (arguments of `mint_token` override)."""
        args: dict[str, Any] = {
            "gateway_id": str(self.gateway_id),
            "audience": CLOUD_URL,
            "thumbprint": self.thumbprint,
        }
        return mint_token(self.key, **(args | overrides))


async def provision(
    cloud: Cloud, token: str, *, name: str = "press-3", key: PrivateKey | None = None
) -> httpx.Response:
    """POST /v1/provision with a CSR for `key` (a new one by default)."""
    csr = create_csr(key or generate_private_key(), name)
    body = {"claim_token": token, "csr": csr_to_pem(csr).decode(), "name": name}
    return await cloud.client.post("/v1/provision", json=body)


async def enroll(cloud: Cloud, token: str, *, name: str = "press-3") -> Enrolled:
    """Provision a gateway and return it (the answer must be 201)."""
    key = generate_private_key()
    r = await provision(cloud, token, name=name, key=key)
    assert r.status_code == 201, r.text
    answer = r.json()
    return Enrolled(int(answer["gateway_id"]), key, answer["certificate_chain"], answer)


async def ingest(cloud: Cloud, token: str, gateway_id: int, seq: int = 1) -> httpx.Response:
    """Post one small batch naming `gateway_id` with `token`."""
    return await cloud.post(token, encode_batch(make_batch(gateway_id, seq, n=5)))


def error(response: httpx.Response) -> tuple[int, str, Any]:
    """(status, code, details) of an error answer."""
    body = response.json()["error"]
    return response.status_code, body["code"], body["details"]


def run_sql(backend: str, tmp_path: Path, owner_dsn: str | None, sql: str) -> None:
    """Run one statement as the database owner (to age a claim token, for example)."""
    if backend != "sqlite":
        assert owner_dsn is not None
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute(sql.encode())
        return
    with sqlite3.connect(tmp_path / "cloud.db") as conn:
        conn.execute(sql)
