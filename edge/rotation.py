"""Certificate rotation from the gateway: when `rotation_due`, get a certificate for a new key.

`prepare_rotation` writes the next generation's key (or reuses it after a crash, so a retry asks
for the same key); the request carries a token from the current certificate, minted for this one
request and bound to the CSR (claim `provisioning.csr.CSR_CLAIM`), which the cloud accepts once;
`complete_rotation` checks the answer and switches generations atomically. If the answer is lost
after the cloud committed, the retry (signed with the now-rotated certificate, same new key) gets
the same certificate again, so the gateway cannot lock itself out.

Errors::

    IdentityError (edge.identity)
    └── RotationFailed       the cloud refused or could not be reached (`status`, `code` say why)
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

import httpx

from edge.gateway_token import TokenMinter
from edge.identity import ROTATE_WITHIN, GatewayIdentity, IdentityError, IdentityStore, rotation_due
from provisioning.csr import CSR_CLAIM, csr_thumbprint, csr_to_pem
from provisioning.tokens import mint_token

ROTATION_TOKEN_LIFETIME = 120

log = logging.getLogger(__name__)


class RotationFailed(IdentityError):
    """The cloud did not issue the new certificate; the current identity stays in force.

    Args:
        message: what happened.
        status: the HTTP status (None if the cloud was not reached).
        code: the cloud's error code, if it answered one.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


async def rotate_if_due(
    store: IdentityStore,
    client: httpx.AsyncClient,
    *,
    cloud_url: str,
    within: timedelta = ROTATE_WITHIN,
    now: datetime | None = None,
) -> GatewayIdentity | None:
    """Rotate when the certificate expires within `within`; the new identity, or None if not due.

    Raises:
        RotationFailed, IdentityError: see `rotate`.
    """
    if not rotation_due(store.load(), within=within, now=now):
        return None
    return await rotate(store, client, cloud_url=cloud_url)


async def rotate(
    store: IdentityStore, client: httpx.AsyncClient, *, cloud_url: str
) -> GatewayIdentity:
    """Get a certificate for a new key from the cloud at `cloud_url` and switch to it.

    Raises:
        RotationFailed: the cloud refused (its code in `code`) or was unreachable.
        IdentityError: the identity files are unusable, or the answer does not fit.
    """
    identity = store.load()
    csr = store.prepare_rotation()
    token = mint_token(
        identity.private_key,
        gateway_id=identity.gateway_id,
        audience=identity.cloud_url,
        thumbprint=identity.thumbprint,
        lifetime=ROTATION_TOKEN_LIFETIME,
        extra={CSR_CLAIM: csr_thumbprint(csr)},
    )
    url = f"{cloud_url.rstrip('/')}/v1/gateways/{identity.gateway_id}/certificate"
    try:
        response = await client.post(
            url,
            json={"csr": csr_to_pem(csr).decode("ascii")},
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        raise RotationFailed(f"cannot reach {url}: {exc}") from exc
    if response.status_code != 200:
        code, message = _error(response)
        raise RotationFailed(
            f"the cloud refused the rotation: HTTP {response.status_code} {code}: {message}",
            status=response.status_code,
            code=code,
        )
    try:
        chain = str(response.json()["certificate_chain"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RotationFailed(f"the cloud's answer has no certificate_chain: {exc}") from exc
    return store.complete_rotation(chain.encode("ascii"))


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "http_error", response.text[:200]


async def keep_certificate_fresh(
    store: IdentityStore, minter: TokenMinter, *, cloud_url: str, every_s: float = 3600.0
) -> None:
    """Every `every_s` seconds, rotate the certificate if `rotation_due`; sign the uplink's
    tokens with the new one at once. A failed rotation is logged and tried again next time
    (the current certificate still works). Runs until cancelled."""
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            try:
                rotated = await rotate_if_due(store, client, cloud_url=cloud_url)
            except IdentityError as exc:
                log.error("certificate rotation failed, will retry in an hour: %s", exc)  # noqa: TRY400
            else:
                if rotated is not None:
                    minter.use(rotated)
                    log.info("certificate rotated; it now expires %s", rotated.expires_at)
            await asyncio.sleep(every_s)
