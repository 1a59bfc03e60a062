"""The gateway identity on disk: enrollment, loading, token minting and crash-safe rotation."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

import edge.identity
from edge.gateway_token import TokenMinter
from edge.identity import (
    GatewayIdentity,
    IdentityError,
    IdentityNotFound,
    IdentityRefused,
    IdentityStore,
    rotation_due,
)
from provisioning.ca import TenantCA, create_tenant_ca, issue_gateway_certificate
from provisioning.certificates import certificates_to_pem
from provisioning.csr import create_csr
from provisioning.errors import TokenCertificateMismatch
from provisioning.files import write_atomic
from provisioning.keys import generate_private_key, same_public_key
from provisioning.tokens import read_unverified, verify_gateway_token

CLOUD_URL = "https://cloud.tagway.test"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sign(
    ca: TenantCA,
    csr: x509.CertificateSigningRequest,
    gateway_id: str = "gw-7",
    *,
    validity: timedelta = timedelta(days=365),
    now: datetime | None = None,
) -> bytes:
    """What the cloud answers: [gateway certificate, tenant CA] as PEM."""
    cert = issue_gateway_certificate(ca, csr, gateway_id=gateway_id, validity=validity, now=now)
    return certificates_to_pem([cert, ca.certificate])


@pytest.fixture
def ca() -> TenantCA:
    return create_tenant_ca("acme")


@pytest.fixture
def store(tmp_path: Path) -> IdentityStore:
    return IdentityStore(tmp_path / "state")


@pytest.fixture
def enrolled(store: IdentityStore, ca: TenantCA) -> GatewayIdentity:
    csr = store.prepare_csr("press line 3")
    return store.commit(_sign(ca, csr), gateway_id="gw-7", cloud_url=CLOUD_URL)


def test_enrollment_writes_a_loadable_identity_with_safe_modes(
    store: IdentityStore, ca: TenantCA
) -> None:
    assert not store.exists()
    csr = store.prepare_csr("press line 3")
    assert _mode(store.directory) == 0o700
    assert _mode(store.directory / "key-1.pem") == 0o600
    assert not store.exists()  # a pending key alone is not an identity

    identity = store.commit(_sign(ca, csr), gateway_id="gw-7", cloud_url=CLOUD_URL)
    assert store.exists()
    assert identity.gateway_id == "gw-7"
    assert identity.cloud_url == CLOUD_URL
    assert identity.generation == 1
    assert same_public_key(identity.private_key.public_key(), csr.public_key())  # type: ignore[arg-type]
    assert identity.chain[-1] == ca.certificate
    assert _mode(store.directory / "key-1.pem") == 0o600
    assert _mode(store.directory / "chain-1.pem") == 0o644
    record = json.loads((store.directory / "identity.json").read_text())
    assert record == {"gateway_id": "gw-7", "cloud_url": CLOUD_URL, "generation": 1}

    loaded = store.load()
    assert loaded.thumbprint == identity.thumbprint
    assert loaded.private_key.private_numbers() == identity.private_key.private_numbers()
    assert "private_key" not in repr(loaded)


def test_not_provisioned_says_so(store: IdentityStore) -> None:
    with pytest.raises(IdentityNotFound, match="tagway provision"):
        store.load()


def test_a_retried_enrollment_reuses_the_pending_key(store: IdentityStore) -> None:
    first, second = store.prepare_csr("gw"), store.prepare_csr("gw")
    assert same_public_key(first.public_key(), second.public_key())  # type: ignore[arg-type]


def test_commit_without_a_pending_key_is_refused(store: IdentityStore, ca: TenantCA) -> None:
    csr = create_csr(generate_private_key(), "gw")
    store.directory.mkdir(parents=True)
    with pytest.raises(IdentityError, match="prepare_csr"):
        store.commit(_sign(ca, csr), gateway_id="gw-7", cloud_url=CLOUD_URL)


def test_certificate_for_another_key_is_refused(store: IdentityStore, ca: TenantCA) -> None:
    store.prepare_csr("gw")
    foreign = create_csr(generate_private_key(), "gw")
    with pytest.raises(IdentityRefused, match="pending key"):
        store.commit(_sign(ca, foreign), gateway_id="gw-7", cloud_url=CLOUD_URL)
    assert not store.exists()


def test_certificate_for_another_gateway_is_refused(store: IdentityStore, ca: TenantCA) -> None:
    csr = store.prepare_csr("gw")
    with pytest.raises(IdentityRefused, match="gw-8"):
        store.commit(_sign(ca, csr, "gw-8"), gateway_id="gw-7", cloud_url=CLOUD_URL)


def test_chain_whose_ca_did_not_sign_the_certificate_is_refused(
    store: IdentityStore, ca: TenantCA
) -> None:
    csr = store.prepare_csr("gw")
    other = create_tenant_ca("acme")
    cert = issue_gateway_certificate(other, csr, gateway_id="gw-7")
    with pytest.raises(IdentityRefused, match="not issued by"):
        store.commit(
            certificates_to_pem([cert, ca.certificate]), gateway_id="gw-7", cloud_url=CLOUD_URL
        )


def test_expired_certificate_is_refused(store: IdentityStore, ca: TenantCA) -> None:
    csr = store.prepare_csr("gw")
    old = _sign(ca, csr, validity=timedelta(days=1), now=datetime.now(UTC) - timedelta(days=3))
    with pytest.raises(IdentityRefused, match="expired"):
        store.commit(old, gateway_id="gw-7", cloud_url=CLOUD_URL)


@pytest.mark.usefixtures("enrolled")
def test_key_readable_by_others_is_refused_at_load(store: IdentityStore) -> None:
    key_path = store.directory / "key-1.pem"
    key_path.chmod(0o644)
    with pytest.raises(IdentityError) as caught:
        store.load()
    assert str(key_path) in str(caught.value)
    assert "0644" in str(caught.value)


@pytest.mark.usefixtures("enrolled")
def test_swapped_chain_file_is_detected_at_load(store: IdentityStore, ca: TenantCA) -> None:
    stranger = _sign(ca, create_csr(generate_private_key(), "gw"))
    write_atomic(store.directory / "chain-1.pem", stranger, mode=0o644)
    with pytest.raises(IdentityError, match="does not belong"):
        store.load()


def test_the_private_key_is_only_in_the_key_file(
    store: IdentityStore, enrolled: GatewayIdentity
) -> None:
    scalar = enrolled.private_key.private_numbers().private_value
    for name in ("identity.json", "chain-1.pem"):
        content = (store.directory / name).read_bytes()
        assert scalar.to_bytes(32, "big") not in content
        assert b"PRIVATE KEY" not in content
    token = TokenMinter(enrolled).token()
    assert str(scalar) not in token


def test_rotation_is_due_within_the_window(enrolled: GatewayIdentity) -> None:
    end = enrolled.expires_at
    assert not rotation_due(enrolled, now=end - timedelta(days=31))
    assert rotation_due(enrolled, now=end - timedelta(days=29))
    assert rotation_due(enrolled, now=end + timedelta(days=1))
    assert rotation_due(enrolled, within=timedelta(days=400))


def test_rotation_swaps_key_and_certificate(
    store: IdentityStore, ca: TenantCA, enrolled: GatewayIdentity
) -> None:
    old_token = TokenMinter(enrolled).token()
    csr = store.prepare_rotation()
    assert not same_public_key(csr.public_key(), enrolled.private_key.public_key())  # type: ignore[arg-type]
    # Until the cloud answers, the old identity stays in force, key included.
    assert store.load().thumbprint == enrolled.thumbprint
    assert _mode(store.directory / "key-2.pem") == 0o600

    rotated = store.complete_rotation(_sign(ca, csr))
    assert rotated.generation == 2
    assert rotated.gateway_id == enrolled.gateway_id
    assert rotated.cloud_url == enrolled.cloud_url
    assert store.load().thumbprint == rotated.thumbprint != enrolled.thumbprint
    assert sorted(p.name for p in store.directory.iterdir()) == [
        "chain-2.pem",
        "identity.json",
        "key-2.pem",
    ]
    # The cloud, now holding the new certificate, refuses tokens of the old one.
    new_token = TokenMinter(rotated).token()
    assert (
        verify_gateway_token(new_token, rotated.certificate, audience=CLOUD_URL).gateway_id
        == "gw-7"
    )
    with pytest.raises(TokenCertificateMismatch):
        verify_gateway_token(old_token, rotated.certificate, audience=CLOUD_URL)


def test_rotation_interrupted_before_the_commit_keeps_the_old_identity(
    store: IdentityStore, ca: TenantCA, enrolled: GatewayIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    csr = store.prepare_rotation()
    answer = _sign(ca, csr)

    def power_cut_at_commit(path: Path, data: bytes, *, mode: int, exclusive: bool = False) -> None:
        if path.name == "identity.json":
            raise OSError(5, "Input/output error")
        write_atomic(path, data, mode=mode, exclusive=exclusive)

    monkeypatch.setattr(edge.identity, "write_atomic", power_cut_at_commit)
    with pytest.raises(IdentityError, match="Input/output error"):
        store.complete_rotation(answer)
    monkeypatch.undo()

    survivor = store.load()
    assert survivor.generation == 1
    assert survivor.thumbprint == enrolled.thumbprint
    assert not [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]
    # The retry reuses the pending key, so the same answer still fits.
    assert store.complete_rotation(answer).generation == 2


def test_rotation_into_another_tenant_is_refused(
    store: IdentityStore, enrolled: GatewayIdentity
) -> None:
    csr = store.prepare_rotation()
    with pytest.raises(IdentityRefused, match="globex"):
        store.complete_rotation(_sign(create_tenant_ca("globex"), csr))
    assert store.load().generation == 1


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_minter_reuses_a_token_until_a_fifth_of_its_life_is_left(
    enrolled: GatewayIdentity,
) -> None:
    clock = _Clock(1_800_000_000)
    minter = TokenMinter(enrolled, lifetime=300, clock=clock)
    first = minter.token()
    clock.now += 239
    assert minter.token() == first
    clock.now += 1  # 240 s used, 60 s (20 %) left
    second = minter.token()
    assert second != first
    content = verify_gateway_token(second, enrolled.certificate, audience=CLOUD_URL, now=clock.now)
    assert content.issued_at == 1_800_000_240
    assert content.expires_at == 1_800_000_540


def test_minter_mints_afresh_when_the_clock_steps_back(enrolled: GatewayIdentity) -> None:
    clock = _Clock(1_800_000_000)
    minter = TokenMinter(enrolled, clock=clock)
    first = minter.token()
    clock.now -= 3600
    second = minter.token()
    assert second != first
    assert read_unverified(second).issued_at == 1_800_000_000 - 3600


def test_minter_invalidate_and_use(
    store: IdentityStore, ca: TenantCA, enrolled: GatewayIdentity
) -> None:
    minter = TokenMinter(enrolled)
    first = minter.token()
    minter.invalidate()
    assert minter.token() != first
    rotated = store.complete_rotation(_sign(ca, store.prepare_rotation()))
    minter.use(rotated)
    assert read_unverified(minter.token()).thumbprint == rotated.thumbprint


def test_minter_token_verifies_at_the_cloud(enrolled: GatewayIdentity) -> None:
    token = TokenMinter(enrolled).token()
    content = verify_gateway_token(token, enrolled.certificate, audience=CLOUD_URL)
    assert content.gateway_id == "gw-7"
    assert content.expires_at - content.issued_at == 300


def test_minter_refuses_a_nonsense_renew_fraction(enrolled: GatewayIdentity) -> None:
    with pytest.raises(ValueError, match="renew_fraction"):
        TokenMinter(enrolled, renew_fraction=1.5)
