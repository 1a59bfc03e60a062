"""Rotation through the cloud API with the gateway's own identity files and rotation client, and
the promise that the private key never leaves the gateway (request bodies and logs checked)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from edge.gateway_token import TokenMinter
from edge.identity import GatewayIdentity, IdentityStore
from edge.rotation import RotationFailed, rotate, rotate_if_due
from provisioning.csr import CSR_CLAIM, csr_thumbprint, csr_to_pem
from provisioning.keys import private_key_to_pem
from provisioning.tokens import mint_token
from tests.cloud.conftest import Cloud, Tenant
from tests.provisioning.cloud_support import (
    CLOUD_URL,
    claim_token,
    error,
    ingest,
    provisioning_settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def cloud(make_cloud: Any, tmp_path: Path) -> Cloud:
    started: Cloud = await make_cloud(**provisioning_settings(tmp_path))
    return started


@pytest.fixture
def bodies(cloud: Cloud) -> list[bytes]:
    """Every request body the client sends from now on."""
    sent: list[bytes] = []

    async def capture(request: httpx.Request) -> None:
        sent.append(request.content)

    cloud.client.event_hooks["request"].append(capture)
    return sent


async def _enrolled(
    cloud: Cloud, store: IdentityStore, name: str = "press-3"
) -> tuple[Tenant, GatewayIdentity]:
    tenant = await cloud.tenant("acme")
    csr = store.prepare_csr(name)
    body = {"claim_token": await claim_token(cloud, tenant), "csr": csr_to_pem(csr).decode()}
    r = await cloud.client.post("/v1/provision", json=body | {"name": name})
    assert r.status_code == 201, r.text
    answer = r.json()
    return tenant, store.commit(
        answer["certificate_chain"].encode(),
        gateway_id=answer["gateway_id"],
        cloud_url=answer["cloud"]["token_audience"],
    )


def _secrets(store: IdentityStore) -> list[bytes]:
    """Byte strings that would betray a private key: PEM lines and the raw scalar."""
    found: list[bytes] = []
    for path in store.directory.glob("key-*.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        found += [line for line in path.read_bytes().splitlines() if b"-----" not in line]
    return found


async def test_rotation_new_certificate_works_old_one_is_refused(
    cloud: Cloud, tmp_path: Path, bodies: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = IdentityStore(tmp_path / "state")
    tenant, old = await _enrolled(cloud, store)
    gateway_id = int(old.gateway_id)
    old_token = TokenMinter(old).token()
    assert (await ingest(cloud, old_token, gateway_id, seq=1)).status_code == 200
    secrets_before = _secrets(store)
    scalar_before = old.private_key.private_numbers().private_value.to_bytes(32, "big")

    assert await rotate_if_due(store, cloud.client, cloud_url=CLOUD_URL) is None  # a year left
    new = await rotate(store, cloud.client, cloud_url=CLOUD_URL)
    assert new.generation == old.generation + 1
    assert new.thumbprint != old.thumbprint
    assert new.gateway_id == old.gateway_id
    assert (await ingest(cloud, TokenMinter(new).token(), gateway_id, seq=2)).status_code == 200
    status, _, details = error(await ingest(cloud, old_token, gateway_id, seq=3))
    assert (status, details["reason"]) == (401, "certificate_rotated")
    listed = await cloud.get(tenant.admin, f"/v1/gateways/{gateway_id}/certificates")
    assert [(c["thumbprint"], c["state"]) for c in listed.json()] == [
        (new.thumbprint, "current"),
        (old.thumbprint, "rotated"),
    ]

    secrets_after = _secrets(store)
    scalar_after = new.private_key.private_numbers().private_value.to_bytes(32, "big")
    sent = b"".join(bodies)
    assert sent  # the capture works
    logs = caplog.text.encode()
    for secret in [*secrets_before, *secrets_after, scalar_before, scalar_after]:
        assert secret not in sent
        assert secret not in logs
    for key in (old.private_key, new.private_key):
        assert b"PRIVATE KEY" not in sent
        assert private_key_to_pem(key).splitlines()[1] not in sent + logs


async def test_a_rotation_token_is_bound_to_its_csr_and_used_once(
    cloud: Cloud, tmp_path: Path
) -> None:
    store = IdentityStore(tmp_path / "state")
    _tenant, identity = await _enrolled(cloud, store)
    url = f"/v1/gateways/{identity.gateway_id}/certificate"
    csr = store.prepare_rotation()
    body = {"csr": csr_to_pem(csr).decode()}

    # an ingest token (no csr claim) cannot rotate
    r = await cloud.client.post(url, json=body, headers=cloud.auth(TokenMinter(identity).token()))
    assert error(r)[2]["reason"] == "csr_binding"
    bound = mint_token(
        identity.private_key, gateway_id=identity.gateway_id, audience=CLOUD_URL,
        thumbprint=identity.thumbprint, extra={CSR_CLAIM: csr_thumbprint(csr)},
    )  # fmt: skip
    # nor another gateway's path
    r = await cloud.client.post(
        f"/v1/gateways/{int(identity.gateway_id) + 1}/certificate",
        json=body,
        headers=cloud.auth(bound),
    )
    assert r.status_code == 403
    r = await cloud.client.post(url, json=body, headers=cloud.auth(bound))
    assert r.status_code == 200, r.text
    replay = await cloud.client.post(url, json=body, headers=cloud.auth(bound))
    assert error(replay)[:2] == (401, "gateway_token_refused")
    assert error(replay)[2]["reason"] in {"replayed", "certificate_rotated"}


async def test_a_rotation_whose_answer_was_lost_can_be_retried(
    cloud: Cloud, tmp_path: Path
) -> None:
    store = IdentityStore(tmp_path / "state")
    _tenant, identity = await _enrolled(cloud, store)
    csr = store.prepare_rotation()
    token = mint_token(
        identity.private_key, gateway_id=identity.gateway_id, audience=CLOUD_URL,
        thumbprint=identity.thumbprint, extra={CSR_CLAIM: csr_thumbprint(csr)},
    )  # fmt: skip
    r = await cloud.client.post(
        f"/v1/gateways/{identity.gateway_id}/certificate",
        json={"csr": csr_to_pem(csr).decode()},
        headers=cloud.auth(token),
    )
    assert r.status_code == 200  # ... and the gateway never saw this answer
    issued = r.json()["certificate_chain"]
    assert store.load().thumbprint == identity.thumbprint  # still the old generation
    new = await rotate(store, cloud.client, cloud_url=CLOUD_URL)  # same pending key again
    assert new.chain[0].public_bytes(serialization.Encoding.PEM).decode() in issued
    assert (await ingest(cloud, TokenMinter(new).token(), int(new.gateway_id))).status_code == 200


async def test_a_revoked_gateway_cannot_rotate(cloud: Cloud, tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "state")
    tenant, identity = await _enrolled(cloud, store)
    r = await cloud.client.post(
        f"/v1/gateways/{identity.gateway_id}/revoke", headers=cloud.auth(tenant.admin)
    )
    assert r.status_code == 200
    with pytest.raises(RotationFailed) as refused:
        await rotate(store, cloud.client, cloud_url=CLOUD_URL)
    assert (refused.value.status, refused.value.code) == (401, "gateway_token_refused")
    assert store.load().generation == identity.generation
