"""The gateway's identity on disk: its private key, certificate chain, gateway id and cloud URL.

Layout under ``<state_dir>/identity/`` (directory 0700)::

    identity.json    {"gateway_id", "cloud_url", "generation"}: the commit point
    key-<n>.pem      the private key of generation n (0600, never leaves the gateway)
    chain-<n>.pem    [gateway certificate, tenant CA] of generation n (0644)

Enrollment and rotation follow one pattern. `IdentityStore.prepare_csr` writes the NEXT
generation's key (or reuses it, so a retry after a crash sends the same public key) and returns
the CSR; the caller sends it to the cloud. `IdentityStore.commit` checks the answer (the chain
verifies, the certificate is for the pending key and the expected gateway), writes the chain,
then replaces ``identity.json`` atomically. Until that last rename the old generation stays in
force, key included; a power cut at any point leaves one consistent generation. Old files go
only after the commit.

`rotation_due` says when the certificate should be rotated; `edge.gateway_token.TokenMinter`
mints the uplink's tokens from a loaded identity.

Errors::

    IdentityError            root: an identity file is unusable (the message names it)
    ├── IdentityNotFound     the gateway is not provisioned yet (run `tagway provision`)
    └── IdentityRefused      the cloud's answer does not fit: wrong key, gateway, CA or chain
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.errors import EdgeError
from provisioning.ca import check_issued_by, verify_chain
from provisioning.certificates import (
    certificates_to_pem,
    gateway_id_of,
    load_certificates_pem,
    p256_key,
    tenant_id_of,
    thumbprint,
)
from provisioning.csr import create_csr
from provisioning.errors import ProvisioningError
from provisioning.files import PUBLIC_MODE, write_atomic
from provisioning.keys import (
    PrivateKey,
    generate_private_key,
    read_private_key,
    same_public_key,
    write_private_key,
)

ROTATE_WITHIN: Final = timedelta(days=30)
_RECORD: Final = "identity.json"
_GENERATION_FILE: Final = re.compile(r"(key|chain)-(\d+)\.pem")


class IdentityError(EdgeError):
    """An identity file is missing, unreadable or inconsistent; the message names the file."""


class IdentityNotFound(IdentityError):
    """No identity has been committed yet: the gateway must be provisioned first."""


class IdentityRefused(IdentityError):
    """A certificate chain from the cloud does not fit the pending key or the gateway."""


class IdentityRecord(BaseModel):
    """The content of ``identity.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gateway_id: str = Field(min_length=1, max_length=64)
    cloud_url: str = Field(min_length=1)
    generation: int = Field(ge=1)


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """Who this gateway is, as loaded from disk. `chain` is [gateway certificate, tenant CA]."""

    gateway_id: str
    cloud_url: str
    private_key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    generation: int

    @property
    def certificate(self) -> x509.Certificate:
        """The gateway's own certificate."""
        return self.chain[0]

    @property
    def thumbprint(self) -> str:
        """``x5t#S256`` of the certificate, which tokens carry."""
        return thumbprint(self.certificate)

    @property
    def expires_at(self) -> datetime:
        """When the certificate stops being valid."""
        return self.certificate.not_valid_after_utc


def rotation_due(
    identity: GatewayIdentity, *, within: timedelta = ROTATE_WITHIN, now: datetime | None = None
) -> bool:
    """True if the certificate expires within `within` (or already has): time to rotate."""
    return identity.expires_at - (now or datetime.now(UTC)) <= within


class IdentityStore:
    """The identity files under ``<state_dir>/identity/``.

    Args:
        state_dir: the agent's state directory.
    """

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "identity"

    def exists(self) -> bool:
        """True if an identity has been committed."""
        return (self.directory / _RECORD).is_file()

    def load(self) -> GatewayIdentity:
        """Load and cross-check the committed identity.

        Raises:
            IdentityNotFound: nothing committed yet.
            IdentityError: a file is unreadable, has an insecure mode, or the key, certificate
                and gateway id do not belong together.
        """
        record = self._record()
        if record is None:
            raise IdentityNotFound(f"no gateway identity in {self.directory}; run tagway provision")
        key = self._read_key(record.generation)
        chain = self._read_chain(record.generation, key, record.gateway_id)
        return GatewayIdentity(
            gateway_id=record.gateway_id,
            cloud_url=record.cloud_url,
            private_key=key,
            chain=tuple(chain),
            generation=record.generation,
        )

    def prepare_csr(self, name: str) -> x509.CertificateSigningRequest:
        """Create (or reuse) the next generation's key and return a CSR for it.

        The committed identity, if any, stays in force until `commit`.

        Raises:
            IdentityError: the key cannot be written or read, or `name` is not usable.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        pending = self._next_generation()
        path = self._key_path(pending)
        if path.exists():
            key = self._read_key(pending)
        else:
            key = generate_private_key()
            try:
                write_private_key(path, key)
            except ProvisioningError as exc:
                raise IdentityError(str(exc)) from exc
        try:
            return create_csr(key, name)
        except ProvisioningError as exc:
            raise IdentityError(f"cannot build the CSR: {exc}") from exc

    def prepare_rotation(self) -> x509.CertificateSigningRequest:
        """`prepare_csr` for the current gateway: a NEW key, named by the gateway id."""
        return self.prepare_csr(self.load().gateway_id)

    def commit(self, chain_pem: bytes, *, gateway_id: str, cloud_url: str) -> GatewayIdentity:
        """Check the cloud's chain against the pending key, then make it the identity.

        Raises:
            IdentityRefused: the chain does not verify, is not for the pending key, or names
                another gateway.
            IdentityError: no pending key, or the files cannot be written.
        """
        generation = self._next_generation()
        if not self._key_path(generation).exists():
            raise IdentityError(f"no pending key in {self.directory}; call prepare_csr first")
        key = self._read_key(generation)
        chain = _checked_chain(chain_pem, key, gateway_id)
        record = IdentityRecord(gateway_id=gateway_id, cloud_url=cloud_url, generation=generation)
        try:
            write_atomic(self._chain_path(generation), certificates_to_pem(chain), mode=PUBLIC_MODE)
            write_atomic(
                self.directory / _RECORD, record.model_dump_json().encode(), mode=PUBLIC_MODE
            )
        except OSError as exc:
            raise IdentityError(f"cannot write the identity in {self.directory}: {exc}") from exc
        self._remove_other_generations(generation)
        return self.load()

    def complete_rotation(self, chain_pem: bytes) -> GatewayIdentity:
        """`commit` a rotated certificate: same gateway, same tenant, same cloud.

        Raises:
            IdentityRefused: the new chain is for another gateway or tenant, or see `commit`.
        """
        current = self.load()
        try:
            new_tenant = tenant_id_of(load_certificates_pem(chain_pem)[-1])
            same_tenant = new_tenant == tenant_id_of(current.chain[-1])
        except ProvisioningError as exc:
            raise IdentityRefused(f"the rotated chain is unusable: {exc}") from exc
        if not same_tenant:
            raise IdentityRefused(f"the rotated certificate is from tenant {new_tenant!r}")
        return self.commit(chain_pem, gateway_id=current.gateway_id, cloud_url=current.cloud_url)

    def _read_chain(
        self, generation: int, key: PrivateKey, gateway_id: str
    ) -> list[x509.Certificate]:
        path = self._chain_path(generation)
        try:
            chain = load_certificates_pem(path.read_bytes())
            if len(chain) != 2:
                raise IdentityError(f"{path}: expected [certificate, tenant CA]")
            check_issued_by(chain[0], chain[1])
            issued_to = gateway_id_of(chain[0])
            key_matches = same_public_key(key.public_key(), p256_key(chain[0]))
        except (OSError, ProvisioningError) as exc:
            raise IdentityError(f"{path}: {exc}") from exc
        if issued_to != gateway_id or not key_matches:
            raise IdentityError(f"{path} does not belong to gateway {gateway_id!r} and its key")
        return chain

    def _record(self) -> IdentityRecord | None:
        path = self.directory / _RECORD
        try:
            return IdentityRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            raise IdentityError(f"{path}: {exc}") from exc

    def _next_generation(self) -> int:
        record = self._record()
        return 1 if record is None else record.generation + 1

    def _key_path(self, generation: int) -> Path:
        return self.directory / f"key-{generation}.pem"

    def _chain_path(self, generation: int) -> Path:
        return self.directory / f"chain-{generation}.pem"

    def _read_key(self, generation: int) -> PrivateKey:
        try:
            return read_private_key(self._key_path(generation))
        except ProvisioningError as exc:
            raise IdentityError(str(exc)) from exc

    def _remove_other_generations(self, keep: int) -> None:
        for path in self.directory.iterdir():
            match = _GENERATION_FILE.fullmatch(path.name)
            if match and int(match.group(2)) != keep:
                path.unlink(missing_ok=True)


def _checked_chain(chain_pem: bytes, key: PrivateKey, gateway_id: str) -> list[x509.Certificate]:
    try:
        chain = load_certificates_pem(chain_pem)
        if len(chain) != 2:
            raise IdentityRefused(f"expected [certificate, tenant CA], got {len(chain)} certs")
        issued_to = verify_chain(chain, chain[-1])
        key_matches = same_public_key(key.public_key(), p256_key(chain[0]))
    except ProvisioningError as exc:
        raise IdentityRefused(f"the certificate chain from the cloud is refused: {exc}") from exc
    if not key_matches:
        raise IdentityRefused("the certificate is not for this gateway's pending key")
    if issued_to != gateway_id:
        raise IdentityRefused(f"the certificate is for {issued_to!r}, expected {gateway_id!r}")
    return chain
