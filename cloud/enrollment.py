"""Enrollment and rotation: the cloud's certificate authority work over `ProvisioningStore`.

`Enrollment.provision` turns a claim token and a CSR into a registered gateway with a
certificate from its tenant's CA (created, with its key sealed under the master key, on the
tenant's first enrollment), all in one transaction with the counted use of the token.
`Enrollment.rotate` issues a new certificate to a gateway that proves it holds its current
certificate's key: a token from that certificate, bound to the new CSR (``csr`` claim), used once.
The old certificate becomes ``rotated`` in the same transaction, and its tokens are refused.

A rotation whose answer was lost can be retried: a request signed with the just-rotated
certificate for the key of the current one gets the current certificate again, so a gateway never
locks itself out between the cloud's commit and its own.

The master key (`provisioning.sealing`) is needed only here; a replica without one still
authenticates gateways and answers `/v1/provision` with 503 ``provisioning_unavailable``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cloud.auth import Authenticator
from cloud.errors import CloudError, Forbidden
from cloud.gateway_auth import (
    GatewayTokenAuthenticator,
    GatewayTokenVerifier,
    VerifiedToken,
    WithoutStaticGatewayTokens,
)
from cloud.provisioning_errors import (
    ClaimTokenInvalid,
    CsrInvalid,
    GatewayTokenRefused,
    ProvisioningUnavailable,
)
from cloud.settings import CloudSettings
from cloud.storage.base import Database, Tx
from cloud.storage.provisioning import (
    CertificateEntry,
    NewCertificate,
    ProvisioningStore,
    Redeemed,
)
from provisioning.ca import TenantCA, create_tenant_ca, issue_gateway_certificate
from provisioning.certificates import certificates_to_pem, load_certificates_pem, thumbprint
from provisioning.claim import check_claim_token, hash_claim_token
from provisioning.csr import CSR_CLAIM, VerifiedCsr, csr_thumbprint, load_csr_pem, verify_csr
from provisioning.errors import ProvisioningError, SealedKeyError
from provisioning.files import InsecureFileMode, read_private
from provisioning.keys import PublicKey
from provisioning.sealing import MasterKey, load_or_create_master_key

log = logging.getLogger("tagway.cloud.enrollment")


def now_us() -> int:
    """The current time in int microseconds since the epoch, UTC."""
    return time.time_ns() // 1_000


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate issued to a gateway, with what the gateway needs to use it."""

    tenant_id: int
    gateway_id: int
    name: str
    chain_pem: str
    not_after: int
    redeemed: Redeemed | None = None
    redelivered: bool = False


def master_key_path(settings: CloudSettings) -> Path | None:
    """The master key file: the setting, else ``<sqlite file>.master-key``, else none."""
    if settings.master_key_file is not None:
        return settings.master_key_file
    if settings.backend == "sqlite":
        db = settings.database_url.removeprefix("sqlite:///").removeprefix("sqlite://")
        return Path(db + ".master-key")
    return None


def load_master_key(settings: CloudSettings) -> MasterKey | None:
    """The master key per the settings (created when allowed), or None if none is configured.

    Raises:
        CloudError: the file is missing (and may not be created), insecure or malformed.
    """
    path = master_key_path(settings)
    if path is None:
        log.warning("no master_key_file configured: /v1/provision and rotation are unavailable")
        return None
    create = settings.create_master_key
    if create if create is not None else settings.backend == "sqlite":
        try:
            return load_or_create_master_key(path)
        except ProvisioningError as exc:
            raise CloudError(f"master key: {exc}") from exc
    try:
        text = read_private(path).decode("ascii")
    except FileNotFoundError as exc:
        raise CloudError(
            f"master key file {path} does not exist; create it once and give every replica the "
            "same file (or, on a single host, set create_master_key: tagway cloud serve "
            "--create-master-key)"
        ) from exc
    except (InsecureFileMode, OSError, UnicodeDecodeError) as exc:
        raise CloudError(f"master key file {path}: {exc}") from exc
    try:
        return MasterKey.from_text(text, source=str(path))
    except ProvisioningError as exc:
        raise CloudError(str(exc)) from exc


def key_id(key: PublicKey) -> str:
    """SHA-256 hex of the key's SubjectPublicKeyInfo: which key a certificate certifies."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _checked_csr(csr_pem: str) -> tuple[x509.CertificateSigningRequest, VerifiedCsr]:
    try:
        csr = load_csr_pem(csr_pem.encode())
        return csr, verify_csr(csr)
    except ProvisioningError as exc:
        raise CsrInvalid(str(exc)) from exc


def _record(certificate: x509.Certificate) -> NewCertificate:
    return NewCertificate(
        serial=format(certificate.serial_number, "x"),
        thumbprint=thumbprint(certificate),
        key_id=key_id(certificate.public_key()),  # type: ignore[arg-type] # always P-256 here
        certificate_pem=certificates_to_pem([certificate]).decode(),
        not_after=int(certificate.not_valid_after_utc.timestamp() * 1_000_000),
    )


class Enrollment:
    """The cloud's side of provisioning.

    Args:
        settings: the service settings.
        db: the database.
        master_key: seals and opens tenant CA keys; None disables enrollment and rotation.
    """

    def __init__(
        self, *, settings: CloudSettings, db: Database, master_key: MasterKey | None
    ) -> None:
        self.settings = settings
        self.store = ProvisioningStore(db)
        self._db = db
        self._master_key = master_key
        self.verifier = GatewayTokenVerifier(
            self.store,
            audience=settings.public_url,
            max_lifetime=settings.token_max_lifetime_s,
            leeway=settings.token_leeway_s,
        )

    @property
    def validity(self) -> timedelta:
        """How long issued gateway certificates are valid."""
        return timedelta(days=self.settings.certificate_validity_days)

    def cloud_settings(self) -> dict[str, Any]:
        """What a gateway learns at enrollment: URLs, token rules and the batch limits."""
        url = self.settings.public_url.rstrip("/")
        return {
            "url": url,
            "ingest_url": f"{url}/v1/ingest",
            "token_audience": url,
            "token_max_lifetime_s": self.settings.token_max_lifetime_s,
            "limits": self.settings.limits.model_dump(),
        }

    async def provision(self, *, claim_token: str, csr_pem: str, name: str | None) -> Issued:
        """Enroll a gateway: count a use of the token, register, sign the CSR.

        Raises:
            CsrInvalid, ClaimTokenInvalid, ClaimTokenExpired, ClaimTokenExhausted,
            GatewayNameTaken, ProvisioningUnavailable.
        """
        csr, verified = _checked_csr(csr_pem)
        try:
            token = check_claim_token(claim_token)
        except ProvisioningError as exc:
            raise ClaimTokenInvalid(str(exc)) from exc
        master_key = self._require_master_key()
        gateway_name = name or verified.requested_name
        now = now_us()
        async with self.store.redeem(hash_claim_token(token), now_us=now) as (tx, redeemed):
            tenant_id = redeemed.tenant_id
            ca = await self._tenant_ca(tx, tenant_id, master_key, now)
            gateway_id = await self.store.add_gateway(
                tx, redeemed, name=gateway_name, requested_name=verified.requested_name, now_us=now
            )
            certificate = issue_gateway_certificate(
                ca, csr, gateway_id=str(gateway_id), validity=self.validity
            )
            record = _record(certificate)
            await self.store.add_certificate(tx, tenant_id, gateway_id, record, now_us=now)
        log.info(
            "enrolled gateway %s (%r) in tenant %s with claim token %s",
            gateway_id, gateway_name, tenant_id, redeemed.claim_id,
        )  # fmt: skip
        return Issued(
            tenant_id=tenant_id,
            gateway_id=gateway_id,
            name=gateway_name,
            chain_pem=certificates_to_pem([certificate, ca.certificate]).decode(),
            not_after=record.not_after,
            redeemed=redeemed,
        )

    async def rotate(self, *, token: str, gateway_id: int, csr_pem: str) -> Issued:
        """Issue a new certificate for a new key; the current one becomes rotated.

        Raises:
            GatewayTokenRefused: the token does not verify, is not bound to this CSR, was used
                before, or its certificate is rotated/revoked.
            Forbidden: the token belongs to another gateway.
            CsrInvalid, ProvisioningUnavailable.
        """
        verified = await self.verifier.verify(token, allow_rotated=True)
        entry = verified.entry
        if entry.gateway_id != gateway_id:
            raise Forbidden(f"the token is gateway {entry.gateway_id}'s, not {gateway_id}'s")
        csr, checked = _checked_csr(csr_pem)
        if verified.content.extra.get(CSR_CLAIM) != csr_thumbprint(csr):
            raise GatewayTokenRefused(
                f"a rotation token must carry the {CSR_CLAIM!r} claim of this CSR",
                reason="csr_binding",
            )
        master_key = self._require_master_key()
        async with self._db.transaction(entry.tenant_id) as tx:
            issued = await self._rotate_in(
                tx, verified, csr, key_id(checked.public_key), master_key
            )
        log.info("certificate of gateway %s in tenant %s: %s", gateway_id, entry.tenant_id,
                 "issued again (retry)" if issued.redelivered else "rotated")  # fmt: skip
        return issued

    async def _rotate_in(
        self,
        tx: Tx,
        verified: VerifiedToken,
        csr: x509.CertificateSigningRequest,
        new_key: str,
        master_key: MasterKey,
    ) -> Issued:
        entry, content = verified.entry, verified.content
        now = now_us()
        state = await self._lock_for_rotation(tx, entry, content.thumbprint)
        if not await self.store.use_rotation_token(
            tx, entry.tenant_id, entry.gateway_id, jti=content.token_id,
            expires_at=content.expires_at * 1_000_000, now_us=now,
        ):  # fmt: skip
            raise GatewayTokenRefused("this rotation token was used before", reason="replayed")
        current = await self.store.current_certificate(tx, entry.tenant_id, entry.gateway_id)
        ca = await self._tenant_ca(tx, entry.tenant_id, master_key, now)
        if state == "rotated":
            return self._redelivered(current, new_key, entry, ca)
        if current is not None and current[0] == new_key:
            raise CsrInvalid("a rotation needs a new key; this CSR is for the current one")
        certificate = issue_gateway_certificate(
            ca, csr, gateway_id=str(entry.gateway_id), validity=self.validity
        )
        record = _record(certificate)
        await self.store.add_certificate(tx, entry.tenant_id, entry.gateway_id, record, now_us=now)
        return Issued(
            tenant_id=entry.tenant_id,
            gateway_id=entry.gateway_id,
            name=str(entry.gateway_id),
            chain_pem=certificates_to_pem([certificate, ca.certificate]).decode(),
            not_after=record.not_after,
        )

    async def revoke(self, tenant_id: int, gateway_id: int) -> int:
        """Mark the gateway's certificates revoked (the gateway row is revoked by the caller)."""
        return await self.store.revoke_certificates(tenant_id, gateway_id, now_us=now_us())

    async def _lock_for_rotation(self, tx: Tx, entry: CertificateEntry, thumb: str) -> str:
        if not await self.store.lock_gateway(tx, entry.tenant_id, entry.gateway_id):
            raise GatewayTokenRefused("the gateway has been revoked", reason="revoked")
        state = await self.store.certificate_state(tx, entry.tenant_id, thumb)
        if state not in {"current", "rotated"}:
            raise GatewayTokenRefused("the gateway's certificate is revoked", reason="revoked")
        return str(state)

    def _redelivered(
        self, current: tuple[str, str] | None, new_key: str, entry: CertificateEntry, ca: TenantCA
    ) -> Issued:
        # The previous rotation committed here but its answer never reached the gateway: the
        # same CSR key comes back signed by the old certificate. Answer the same certificate.
        if current is None or current[0] != new_key:
            raise GatewayTokenRefused(
                "the token's certificate has been replaced by a newer one",
                reason="certificate_rotated",
            )
        certificate = load_certificates_pem(current[1].encode())[0]
        return Issued(
            tenant_id=entry.tenant_id,
            gateway_id=entry.gateway_id,
            name=str(entry.gateway_id),
            chain_pem=certificates_to_pem([certificate, ca.certificate]).decode(),
            not_after=int(certificate.not_valid_after_utc.timestamp() * 1_000_000),
            redelivered=True,
        )

    def _require_master_key(self) -> MasterKey:
        if self._master_key is None:
            raise ProvisioningUnavailable(
                "this replica has no master key (master_key_file), so it cannot sign certificates"
            )
        return self._master_key

    async def _tenant_ca(self, tx: Tx, tenant_id: int, master_key: MasterKey, now: int) -> TenantCA:
        stored = await self.store.tenant_ca(tx, tenant_id)
        if stored is None:
            created = create_tenant_ca(str(tenant_id))
            stored = await self.store.add_tenant_ca(
                tx,
                tenant_id,
                certificate_pem=certificates_to_pem([created.certificate]).decode(),
                sealed_key=created.seal(master_key),
                now_us=now,
            )
            log.info("created the certificate authority of tenant %s", tenant_id)
        try:
            return TenantCA.open(
                load_certificates_pem(stored[0].encode())[0], stored[1], master_key
            )
        except SealedKeyError as exc:
            raise ProvisioningUnavailable(
                f"the tenant CA's key does not open with this master key: {exc}"
            ) from exc


def authenticators(enrollment: Enrollment, stored: Authenticator) -> tuple[Authenticator, ...]:
    """The gateway-token authenticator, then `stored` (without its interim gateway tokens when
    `allow_static_gateway_tokens` is off)."""
    keep = (
        stored
        if enrollment.settings.allow_static_gateway_tokens
        else WithoutStaticGatewayTokens(stored)
    )
    return (GatewayTokenAuthenticator(enrollment.verifier), keep)
