"""The whole crypto flow, gateway side and cloud side, with only bytes passing between them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioning.ca import TenantCA, create_tenant_ca, issue_gateway_certificate, verify_chain
from provisioning.certificates import certificates_to_pem, load_certificates_pem, thumbprint
from provisioning.claim import check_claim_token, claim_token_matches, new_claim_token
from provisioning.csr import create_csr, csr_to_pem, load_csr_pem, verify_csr
from provisioning.errors import TokenCertificateMismatch
from provisioning.keys import generate_private_key, read_private_key, write_private_key
from provisioning.sealing import load_or_create_master_key
from provisioning.tokens import mint_token, read_unverified, verify_gateway_token
from tests.provisioning.support import CLOUD_URL


def test_claim_provision_mint_and_verify(tmp_path: Path) -> None:
    cloud_dir, gateway_dir = tmp_path / "cloud", tmp_path / "gateway"
    cloud_dir.mkdir()
    gateway_dir.mkdir()

    # Cloud, first use of the tenant: a CA, stored with its key sealed; a claim token for the admin.
    master = load_or_create_master_key(cloud_dir / "master.key")
    ca = create_tenant_ca("acme")
    stored_ca = (certificates_to_pem([ca.certificate]), ca.seal(master))
    claim = new_claim_token()
    stored_claim_digest = claim.digest

    # Gateway: a key that never leaves it, and a CSR sent with the typed claim token.
    key = generate_private_key()
    write_private_key(gateway_dir / "gateway.key", key)
    body = json.dumps(
        {
            "claim_token": check_claim_token(claim.token),
            "csr": csr_to_pem(create_csr(key, "press 3")).decode(),
        }
    ).encode()
    key_pem = (gateway_dir / "gateway.key").read_bytes()
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    assert scalar not in body
    assert key_pem.splitlines()[1] not in body

    # Cloud: check the claim, reopen the CA (as a fresh replica would), sign.
    request = json.loads(body)
    assert claim_token_matches(request["claim_token"], stored_claim_digest)
    csr = load_csr_pem(request["csr"].encode())
    assert verify_csr(csr).requested_name == "press 3"
    ca_cert = load_certificates_pem(stored_ca[0])[0]
    tenant_ca = TenantCA.open(ca_cert, stored_ca[1], master)
    issued = issue_gateway_certificate(tenant_ca, csr, gateway_id="gw-42")
    response = certificates_to_pem([issued, ca_cert])
    registry = {thumbprint(issued): issued}

    # Gateway: check what it got, then mint a token from its key file.
    chain = load_certificates_pem(response)
    assert verify_chain(chain, chain[-1]) == "gw-42"
    token = mint_token(
        read_private_key(gateway_dir / "gateway.key"),
        gateway_id="gw-42",
        audience=CLOUD_URL,
        thumbprint=thumbprint(chain[0]),
    )

    # Cloud: find the certificate by the token's thumbprint, verify both.
    certificate = registry[read_unverified(token).thumbprint]
    assert verify_chain([certificate], ca_cert) == "gw-42"
    assert verify_gateway_token(token, certificate, audience=CLOUD_URL).gateway_id == "gw-42"

    # Rotation: the registry now holds a new certificate; the old token is refused.
    new_key = generate_private_key()
    rotated = issue_gateway_certificate(
        tenant_ca, create_csr(new_key, "press 3"), gateway_id="gw-42"
    )
    with pytest.raises(TokenCertificateMismatch):
        verify_gateway_token(token, rotated, audience=CLOUD_URL)
