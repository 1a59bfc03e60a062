"""Provisioning endpoints: claim tokens (tenant admins), enrollment, rotation, certificates.

``POST /v1/provision`` takes no Authorization header: the claim token in the body is the
credential. ``POST /v1/gateways/{id}/certificate`` takes the gateway's token from its current
certificate, minted for this request (``csr`` claim = `provisioning.csr.csr_thumbprint` of the
new CSR) and used once.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field, field_validator

from cloud.api.deps import AdminCaller, AdminTenant, Id, ViewerTenant, bearer_required
from cloud.api.schemas import Body, JsonInt, Name
from cloud.enrollment import Enrollment, Issued, now_us
from cloud.storage.provisioning import ClaimToken, GatewayCertificate
from provisioning.claim import new_claim_token

router = APIRouter(tags=["provisioning"])

MAX_SETTINGS_BYTES = 16_384
CSR_FORMAT = "pkcs10-pem"
"""The OpenAPI format of a CSR: a PEM PKCS#10 request for a P-256 key, signed by that key with
ECDSA-SHA256, subject CN a gateway name (`provisioning.csr.verify_csr`)."""
CLAIM_TOKEN_FORMAT = "claim-token"  # noqa: S105 - a format name, not a secret
"""The OpenAPI format of a claim token: ``twc_`` and 43 base64url characters, as
`POST /v1/claim-tokens` issued it (`provisioning.claim`)."""
Csr = Annotated[
    str, Field(min_length=1, max_length=16_384, json_schema_extra={"format": CSR_FORMAT})
]


def enrollment(request: Request) -> Enrollment:
    """The app's enrollment service."""
    found: Enrollment = request.app.state.enrollment
    return found


Enroll = Annotated[Enrollment, Depends(enrollment)]
BearerToken = Annotated[str, Depends(bearer_required)]


class ClaimTokenCreate(Body):
    """A new claim token: how long and how often it may enroll, and what it gives gateways."""

    expires_in_s: Annotated[int, Field(ge=60, le=365 * 86_400), JsonInt] = 86_400
    max_uses: Annotated[int, Field(ge=1, le=100_000), JsonInt] = 1
    site: Name | None = None
    labels: dict[Annotated[str, Field(min_length=1, max_length=100)], Name] = Field(
        default_factory=dict, max_length=50
    )
    device_settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("device_settings")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > MAX_SETTINGS_BYTES:
            raise ValueError(f"device_settings may hold at most {MAX_SETTINGS_BYTES} bytes of JSON")
        return value


class ClaimTokenCreated(Body):
    """The claim token and its secret: the only time the secret is shown."""

    claim_token: ClaimToken
    token: str


class ProvisionRequest(Body):
    """A gateway asking to be enrolled: the claim token, its CSR, and the name it wants."""

    claim_token: Annotated[
        str, Field(min_length=1, max_length=200, json_schema_extra={"format": CLAIM_TOKEN_FORMAT})
    ]
    csr: Csr
    name: Name | None = None


class CertificateRequest(Body):
    """A gateway asking for a certificate for a new key."""

    csr: Csr


class Provisioned(Body):
    """What an enrolled gateway needs: its id, certificate chain and the cloud's settings."""

    gateway_id: str
    tenant_id: int
    name: str
    certificate_chain: str
    certificate_expires_at: int
    cloud: dict[str, Any]
    site: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    device_settings: dict[str, Any] = Field(default_factory=dict)


class CertificateIssued(Body):
    """A rotated certificate chain."""

    gateway_id: str
    certificate_chain: str
    certificate_expires_at: int


def _provisioned(issued: Issued, cloud: dict[str, Any]) -> Provisioned:
    redeemed = issued.redeemed
    return Provisioned(
        gateway_id=str(issued.gateway_id),
        tenant_id=issued.tenant_id,
        name=issued.name,
        certificate_chain=issued.chain_pem,
        certificate_expires_at=issued.not_after,
        cloud=cloud,
        site=redeemed.site if redeemed else None,
        labels=redeemed.labels if redeemed else {},
        device_settings=redeemed.device_settings if redeemed else {},
    )


@router.post("/v1/claim-tokens", status_code=201)
async def create_claim_token(
    body: ClaimTokenCreate, caller: AdminCaller, enroll: Enroll
) -> ClaimTokenCreated:
    """Create a claim token (tenant admin); the secret is in this answer and nowhere else."""
    tenant_id = caller.tenant_id
    assert tenant_id is not None  # noqa: S101 - an admin is a tenant user
    issued = new_claim_token()
    now = now_us()
    record = await enroll.store.create_claim_token(
        tenant_id,
        digest=issued.digest,
        prefix=issued.display_prefix,
        expires_at=now + body.expires_in_s * 1_000_000,
        max_uses=body.max_uses,
        site=body.site,
        labels=dict(body.labels),
        device_settings=dict(body.device_settings),
        created_by=caller.subject_id,
        now_us=now,
    )
    return ClaimTokenCreated(claim_token=record, token=issued.token)


@router.get("/v1/claim-tokens")
async def list_claim_tokens(tenant_id: AdminTenant, enroll: Enroll) -> list[ClaimToken]:
    """The tenant's claim tokens: prefix, uses, expiry; never the token."""
    return await enroll.store.list_claim_tokens(tenant_id)


@router.delete("/v1/claim-tokens/{claim_id}")
async def revoke_claim_token(claim_id: Id, tenant_id: AdminTenant, enroll: Enroll) -> ClaimToken:
    """Revoke a claim token; it enrolls nothing from now on (gateways it enrolled stay)."""
    return await enroll.store.revoke_claim_token(tenant_id, claim_id, now_us=now_us())


@router.post(
    "/v1/provision",
    status_code=201,
    responses={
        401: {"description": "claim_token_invalid"},
        409: {"description": "gateway_name_taken"},
        410: {"description": "claim_token_expired, claim_token_exhausted"},
        503: {"description": "provisioning_unavailable, storage_unavailable"},
    },
)
async def provision(body: ProvisionRequest, enroll: Enroll) -> Provisioned:
    """Enroll a gateway with a claim token and a CSR (no Authorization header)."""
    issued = await enroll.provision(claim_token=body.claim_token, csr_pem=body.csr, name=body.name)
    return _provisioned(issued, enroll.cloud_settings())


@router.post(
    "/v1/gateways/{gateway_id}/certificate",
    responses={403: {"description": "the token is another gateway's"}},
)
async def rotate_certificate(
    gateway_id: Id, body: CertificateRequest, enroll: Enroll, token: BearerToken
) -> CertificateIssued:
    """Issue a certificate for the gateway's new key; tokens of the old one are refused after."""
    issued = await enroll.rotate(token=token, gateway_id=gateway_id, csr_pem=body.csr)
    return CertificateIssued(
        gateway_id=str(issued.gateway_id),
        certificate_chain=issued.chain_pem,
        certificate_expires_at=issued.not_after,
    )


@router.get("/v1/gateways/{gateway_id}/certificates", tags=["gateways"])
async def list_certificates(
    gateway_id: Id, tenant_id: ViewerTenant, enroll: Enroll
) -> list[GatewayCertificate]:
    """The certificates issued to a gateway (thumbprint, expiry, state), newest first."""
    return await enroll.store.list_certificates(tenant_id, gateway_id)
