"""The master key file and CA keys sealed at rest: unreadable without the master key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from provisioning import files, sealing
from provisioning.ca import TenantCA, create_tenant_ca
from provisioning.errors import KeyFileError, SealedKeyError
from provisioning.keys import generate_private_key
from provisioning.sealing import (
    MasterKey,
    load_or_create_master_key,
    open_sealed_key,
    seal_private_key,
)


def test_master_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = load_or_create_master_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_master_key(path).to_text() == first.to_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]


def test_master_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    load_or_create_master_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"master\.key has mode 0644"):
        load_or_create_master_key(path)


@pytest.mark.parametrize(
    ("content", "reason"), [("c2hvcnQ\n", "32 bytes"), ("!" * 43 + "\n", "base64url")]
)
def test_malformed_master_key_file_is_refused_not_replaced(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "master.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=reason):
        load_or_create_master_key(path)
    assert path.read_text() == content


def test_master_key_repr_hides_the_secret() -> None:
    key = MasterKey.generate()
    assert key.to_text() not in repr(key)
    assert MasterKey.from_text(key.to_text()).to_text() == key.to_text()


def test_sealed_key_opens_with_the_same_master_key_and_context() -> None:
    key, master = generate_private_key(), MasterKey.generate()
    blob = seal_private_key(key, master, context="tenant:acme")
    opened = open_sealed_key(blob, master, context="tenant:acme")
    assert opened.private_numbers() == key.private_numbers()


def test_sealed_key_is_not_readable_without_the_master_key() -> None:
    key = generate_private_key()
    blob = seal_private_key(key, MasterKey.generate(), context="tenant:acme")
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert scalar not in blob
    assert pkcs8[-32:] not in blob
    with pytest.raises(SealedKeyError, match="does not open"):
        open_sealed_key(blob, MasterKey.generate(), context="tenant:acme")
    with pytest.raises(ValueError):  # noqa: PT011 - any parse failure proves the point
        serialization.load_der_private_key(blob[16:], password=None)


def test_sealed_key_of_another_tenant_does_not_open() -> None:
    master = MasterKey.generate()
    blob = seal_private_key(generate_private_key(), master, context="tenant:acme")
    with pytest.raises(SealedKeyError, match="globex"):
        open_sealed_key(blob, master, context="tenant:globex")


@pytest.mark.parametrize("position", [0, 5, 20, -1])
def test_tampered_sealed_key_is_refused(position: int) -> None:
    master = MasterKey.generate()
    blob = bytearray(seal_private_key(generate_private_key(), master, context="tenant:acme"))
    blob[position] ^= 0x01
    with pytest.raises(SealedKeyError):
        open_sealed_key(bytes(blob), master, context="tenant:acme")


def test_tenant_ca_round_trips_through_its_sealed_key(tmp_path: Path) -> None:
    master = load_or_create_master_key(tmp_path / "master.key")
    ca = create_tenant_ca("acme")
    reopened = TenantCA.open(ca.certificate, ca.seal(master), master)
    assert reopened.private_key.private_numbers() == ca.private_key.private_numbers()
    # A restarted service reads the same master key file and still opens it.
    again = load_or_create_master_key(tmp_path / "master.key")
    assert TenantCA.open(ca.certificate, ca.seal(master), again).tenant_id == "acme"


def test_tenant_ca_refuses_another_tenants_sealed_key() -> None:
    master = MasterKey.generate()
    acme, globex = create_tenant_ca("acme"), create_tenant_ca("globex")
    with pytest.raises(SealedKeyError):
        TenantCA.open(acme.certificate, globex.seal(master), master)


def test_tenant_ca_refuses_a_sealed_key_that_is_not_its_own() -> None:
    master = MasterKey.generate()
    acme, acme_again = create_tenant_ca("acme"), create_tenant_ca("acme")
    with pytest.raises(SealedKeyError, match="not the key"):
        TenantCA.open(acme.certificate, acme_again.seal(master), master)


def test_master_key_creation_race_keeps_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replica B checks, finds no file, and meanwhile replica A creates it: B must adopt A's key.
    path = tmp_path / "master.key"
    winner = MasterKey.generate()
    real_read = files.read_private
    calls = 0

    def racing_read(target: Path) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            path.write_text(winner.to_text() + "\n")
            path.chmod(0o600)
            raise FileNotFoundError(target)
        return real_read(target)

    monkeypatch.setattr(sealing, "read_private", racing_read)
    assert load_or_create_master_key(path).to_text() == winner.to_text()
    assert path.read_text() == winner.to_text() + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]
