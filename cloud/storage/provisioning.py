"""Storage of provisioning: claim tokens, tenant CAs, gateway certificates and enrollments.

Tenant-scoped calls run in the tenant's transaction (RLS on PostgreSQL, the explicit
``tenant_id`` filter everywhere). Two lookups happen before the tenant is known: redeeming a claim
token (`redeem`) and finding the certificate a gateway token names (`certificate_by_thumbprint`).
On PostgreSQL each is a narrow SECURITY DEFINER function (see `provisioning_schema`); `redeem`
then sets ``app.tenant_id`` inside the same transaction, so the rest of the enrollment runs under
the tenant's row-level security and commits or rolls back together with the counted use.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

from cloud.errors import NotFound
from cloud.provisioning_errors import (
    ClaimTokenExhausted,
    ClaimTokenExpired,
    ClaimTokenInvalid,
    GatewayNameTaken,
)
from cloud.storage.base import Database, Row, Tx
from cloud.storage.records import Record

CertificateState = Literal["current", "rotated", "revoked"]

_CLAIM: Final = (
    "id, prefix, expires_at, max_uses, uses, site, labels, device_settings, created_by,"
    " created_at, revoked_at"
)
_CERT: Final = "id, gateway_id, serial, thumbprint, not_after, state, issued_at, retired_at"


class ClaimToken(Record):
    """A claim token as listed: its prefix and counters, never the token."""

    id: int
    prefix: str
    expires_at: int
    max_uses: int
    uses: int
    site: str | None
    labels: dict[str, str]
    device_settings: dict[str, Any]
    created_by: int | None
    created_at: int
    revoked_at: int | None = None


class GatewayCertificate(Record):
    """A certificate issued to a gateway, as listed."""

    id: int
    gateway_id: int
    serial: str
    thumbprint: str
    not_after: int
    state: CertificateState
    issued_at: int
    retired_at: int | None = None


@dataclass(frozen=True, slots=True)
class Redeemed:
    """One counted use of a claim token: the tenant it enrolls into and what it gives."""

    claim_id: int
    tenant_id: int
    site: str | None
    labels: dict[str, str]
    device_settings: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CertificateEntry:
    """What a gateway token's thumbprint finds: the certificate and the state that decides."""

    tenant_id: int
    gateway_id: int
    certificate_pem: str
    state: CertificateState
    gateway_revoked: bool


@dataclass(frozen=True, slots=True)
class NewCertificate:
    """A certificate to record: the columns of ``gateway_certificates``."""

    serial: str
    thumbprint: str
    key_id: str
    certificate_pem: str
    not_after: int


def _claim(row: Row) -> ClaimToken:
    return ClaimToken(
        id=row[0],
        prefix=row[1],
        expires_at=row[2],
        max_uses=row[3],
        uses=row[4],
        site=row[5],
        labels=json.loads(row[6]),
        device_settings=json.loads(row[7]),
        created_by=row[8],
        created_at=row[9],
        revoked_at=row[10],
    )


def _certificate(row: Row) -> GatewayCertificate:
    names = _CERT.replace(" ", "").split(",")
    return GatewayCertificate(**dict(zip(names, row, strict=True)))


class ProvisioningStore:
    """Provisioning rows over one `Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._postgres = db.info.backend == "postgresql"

    # --------------------------------------------------------------------------- claim tokens

    async def create_claim_token(
        self,
        tenant_id: int,
        *,
        digest: str,
        prefix: str,
        expires_at: int,
        max_uses: int,
        site: str | None,
        labels: dict[str, str],
        device_settings: dict[str, Any],
        created_by: int | None,
        now_us: int,
    ) -> ClaimToken:
        """Store a new claim token's digest and visible prefix."""
        async with self.db.transaction(tenant_id) as tx:
            row = await tx.fetchone(
                "INSERT INTO claim_tokens (tenant_id, token_hash, prefix, expires_at, max_uses,"
                " site, labels, device_settings, created_by, created_at)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_CLAIM}",
                [tenant_id, digest, prefix, expires_at, max_uses, site, json.dumps(labels),
                 json.dumps(device_settings), created_by, now_us],
            )  # fmt: skip
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
        return _claim(row)

    async def list_claim_tokens(self, tenant_id: int) -> list[ClaimToken]:
        """The tenant's claim tokens, revoked and used-up ones included."""
        async with self.db.transaction(tenant_id) as tx:
            rows = await tx.fetch(
                f"SELECT {_CLAIM} FROM claim_tokens WHERE tenant_id = %s ORDER BY id", [tenant_id]
            )
        return [_claim(r) for r in rows]

    async def revoke_claim_token(self, tenant_id: int, claim_id: int, *, now_us: int) -> ClaimToken:
        """Revoke a claim token; it enrolls nothing afterwards."""
        async with self.db.transaction(tenant_id) as tx:
            row = await tx.fetchone(
                "UPDATE claim_tokens SET revoked_at = COALESCE(revoked_at, %s)"
                f" WHERE tenant_id = %s AND id = %s RETURNING {_CLAIM}",
                [now_us, tenant_id, claim_id],
            )
        if row is None:
            raise NotFound("claim token not found")
        return _claim(row)

    @asynccontextmanager
    async def redeem(self, digest: str, *, now_us: int) -> AsyncIterator[tuple[Tx, Redeemed]]:
        """Count one use of the claim token and open its tenant's transaction.

        The use counts only if the block completes: an enrollment that fails later (a taken
        name, a bad CSR) leaves the token as it was.

        Raises:
            ClaimTokenInvalid, ClaimTokenExpired, ClaimTokenExhausted: the token cannot be used.
        """
        async with self.db.transaction(None) as tx:
            redeemed = await self._redeem(tx, digest, now_us)
            if self._postgres:
                await tx.execute(
                    "SELECT set_config('app.tenant_id', %s, true)", [str(redeemed.tenant_id)]
                )
            yield tx, redeemed

    async def _redeem(self, tx: Tx, digest: str, now_us: int) -> Redeemed:
        if self._postgres:
            row = await tx.fetchone(
                "SELECT * FROM tagway_redeem_claim_token(%s, %s)", [digest, now_us]
            )
            assert row is not None  # noqa: S101 - the function always answers one row
            status = row[0]
        else:
            row = await tx.fetchone(
                "SELECT id, tenant_id, site, labels, device_settings, revoked_at, expires_at,"
                " uses, max_uses FROM claim_tokens WHERE token_hash = %s",
                [digest],
            )
            status = _status(row, now_us)
            if status == "ok":
                assert row is not None  # noqa: S101 - "ok" only for a found row
                await tx.execute("UPDATE claim_tokens SET uses = uses + 1 WHERE id = %s", [row[0]])
                row = ("ok", *row[:5])
        if status == "invalid":
            raise ClaimTokenInvalid("unknown or revoked claim token")
        if status == "expired":
            raise ClaimTokenExpired("the claim token has expired; ask for a new one")
        if status == "exhausted":
            raise ClaimTokenExhausted("the claim token has been used up; ask for a new one")
        assert row is not None  # noqa: S101 - status "ok"
        return Redeemed(
            claim_id=row[1],
            tenant_id=row[2],
            site=row[3],
            labels=json.loads(row[4]),
            device_settings=json.loads(row[5]),
        )

    # ---------------------------------------------------------------------------- tenant CAs

    async def tenant_ca(self, tx: Tx, tenant_id: int) -> tuple[str, bytes] | None:
        """The tenant CA's certificate PEM and sealed key, if it has one."""
        row = await tx.fetchone(
            "SELECT certificate_pem, sealed_key FROM tenant_cas WHERE tenant_id = %s", [tenant_id]
        )
        return None if row is None else (str(row[0]), bytes(row[1]))

    async def add_tenant_ca(
        self, tx: Tx, tenant_id: int, *, certificate_pem: str, sealed_key: bytes, now_us: int
    ) -> tuple[str, bytes]:
        """Store a new CA unless another replica stored one first; the one stored wins."""
        await tx.execute(
            "INSERT INTO tenant_cas (tenant_id, certificate_pem, sealed_key, created_at)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id) DO NOTHING",
            [tenant_id, certificate_pem, sealed_key, now_us],
        )
        stored = await self.tenant_ca(tx, tenant_id)
        assert stored is not None  # noqa: S101 - inserted or found just above
        return stored

    # ------------------------------------------------------------------- gateways, certificates

    async def add_gateway(
        self, tx: Tx, redeemed: Redeemed, *, name: str, requested_name: str, now_us: int
    ) -> int:
        """Register an enrolled gateway (no interim token) with its enrollment; its id."""
        tenant_id = redeemed.tenant_id
        if await tx.fetchone(
            "SELECT 1 FROM gateways WHERE tenant_id = %s AND name = %s", [tenant_id, name]
        ):
            raise GatewayNameTaken(
                f"a gateway named {name!r} exists in this tenant; choose another name"
            )
        row = await tx.fetchone(
            "INSERT INTO gateways (tenant_id, name, created_at) VALUES (%s, %s, %s) RETURNING id",
            [tenant_id, name, now_us],
        )
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
        await tx.execute(
            "INSERT INTO gateway_enrollments (gateway_id, tenant_id, claim_token_id,"
            " requested_name, site, labels, device_settings, enrolled_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [row[0], tenant_id, redeemed.claim_id, requested_name, redeemed.site,
             json.dumps(redeemed.labels), json.dumps(redeemed.device_settings), now_us],
        )  # fmt: skip
        for key, value in sorted(redeemed.labels.items()):  # what label rollouts select by
            await tx.execute(
                "INSERT INTO gateway_labels (tenant_id, gateway_id, key, value)"
                " VALUES (%s, %s, %s, %s)",
                [tenant_id, row[0], key, value],
            )
        return int(row[0])

    async def add_certificate(
        self, tx: Tx, tenant_id: int, gateway_id: int, cert: NewCertificate, *, now_us: int
    ) -> None:
        """Record `cert` as the gateway's current certificate; earlier ones become rotated."""
        await tx.execute(
            "UPDATE gateway_certificates SET state = 'rotated', retired_at = %s"
            " WHERE tenant_id = %s AND gateway_id = %s AND state = 'current'",
            [now_us, tenant_id, gateway_id],
        )
        await tx.execute(
            "INSERT INTO gateway_certificates (tenant_id, gateway_id, serial, thumbprint, key_id,"
            " certificate_pem, not_after, state, issued_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, 'current', %s)",
            [tenant_id, gateway_id, cert.serial, cert.thumbprint, cert.key_id,
             cert.certificate_pem, cert.not_after, now_us],
        )  # fmt: skip

    async def certificate_by_thumbprint(self, thumbprint: str) -> CertificateEntry | None:
        """The certificate a token names, with its tenant and state (no tenant context yet)."""
        async with self.db.transaction(None) as tx:
            if self._postgres:
                row = await tx.fetchone(
                    "SELECT * FROM tagway_gateway_certificate(%s)", [thumbprint]
                )
            else:
                row = await tx.fetchone(
                    "SELECT c.tenant_id, c.gateway_id, c.certificate_pem, c.state,"
                    " g.revoked_at IS NOT NULL FROM gateway_certificates c"
                    " JOIN gateways g ON g.id = c.gateway_id WHERE c.thumbprint = %s",
                    [thumbprint],
                )
        if row is None:
            return None
        return CertificateEntry(
            tenant_id=int(row[0]),
            gateway_id=int(row[1]),
            certificate_pem=str(row[2]),
            state=row[3],
            gateway_revoked=bool(row[4]),
        )

    async def lock_gateway(self, tx: Tx, tenant_id: int, gateway_id: int) -> bool:
        """Lock the gateway row for a rotation; True if it exists and is not revoked."""
        lock = " FOR UPDATE" if self._postgres else ""
        row = await tx.fetchone(
            f"SELECT revoked_at FROM gateways WHERE tenant_id = %s AND id = %s{lock}",
            [tenant_id, gateway_id],
        )
        return row is not None and row[0] is None

    async def certificate_state(self, tx: Tx, tenant_id: int, thumbprint: str) -> str | None:
        """The state of one certificate of the tenant (read again under the gateway's lock)."""
        row = await tx.fetchone(
            "SELECT state FROM gateway_certificates WHERE tenant_id = %s AND thumbprint = %s",
            [tenant_id, thumbprint],
        )
        return None if row is None else str(row[0])

    async def current_certificate(
        self, tx: Tx, tenant_id: int, gateway_id: int
    ) -> tuple[str, str] | None:
        """(key id, certificate PEM) of the gateway's current certificate."""
        row = await tx.fetchone(
            "SELECT key_id, certificate_pem FROM gateway_certificates"
            " WHERE tenant_id = %s AND gateway_id = %s AND state = 'current'",
            [tenant_id, gateway_id],
        )
        return None if row is None else (str(row[0]), str(row[1]))

    async def use_rotation_token(
        self, tx: Tx, tenant_id: int, gateway_id: int, *, jti: str, expires_at: int, now_us: int
    ) -> bool:
        """Record a rotation token's ``jti``; False if it was used before (a replay)."""
        await tx.execute(
            "DELETE FROM rotation_tokens WHERE tenant_id = %s AND expires_at < %s",
            [tenant_id, now_us],
        )
        added = await tx.execute(
            "INSERT INTO rotation_tokens (jti, tenant_id, gateway_id, expires_at)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (jti) DO NOTHING",
            [jti, tenant_id, gateway_id, expires_at],
        )
        return added == 1

    async def revoke_certificates(self, tenant_id: int, gateway_id: int, *, now_us: int) -> int:
        """Mark every unrevoked certificate of the gateway revoked; how many."""
        async with self.db.transaction(tenant_id) as tx:
            return await tx.execute(
                "UPDATE gateway_certificates SET state = 'revoked',"
                " retired_at = COALESCE(retired_at, %s)"
                " WHERE tenant_id = %s AND gateway_id = %s AND state <> 'revoked'",
                [now_us, tenant_id, gateway_id],
            )

    async def list_certificates(self, tenant_id: int, gateway_id: int) -> list[GatewayCertificate]:
        """The certificates ever issued to one gateway of the tenant, newest first."""
        async with self.db.transaction(tenant_id) as tx:
            if not await tx.fetchone(
                "SELECT 1 FROM gateways WHERE tenant_id = %s AND id = %s", [tenant_id, gateway_id]
            ):
                raise NotFound("gateway not found")
            rows = await tx.fetch(
                f"SELECT {_CERT} FROM gateway_certificates WHERE tenant_id = %s"
                " AND gateway_id = %s ORDER BY id DESC",
                [tenant_id, gateway_id],
            )
        return [_certificate(r) for r in rows]


def _status(row: Row | None, now_us: int) -> str:
    # The same decisions as tagway_redeem_claim_token (PostgreSQL), for SQLite.
    if row is None or row[5] is not None:
        return "invalid"
    if row[6] <= now_us:
        return "expired"
    if row[7] >= row[8]:
        return "exhausted"
    return "ok"
