"""Key generation, PEM, and private-key files: 0600 from the first byte, atomic, refused if open."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from provisioning.errors import KeyFileError
from provisioning.files import write_atomic
from provisioning.keys import (
    generate_private_key,
    load_private_key_pem,
    load_public_key_pem,
    private_key_to_pem,
    public_key_to_pem,
    read_private_key,
    same_public_key,
    write_private_key,
)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask of 0, the worst case: files would be world-writable unless created otherwise."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_keys_are_p256_and_distinct() -> None:
    a, b = generate_private_key(), generate_private_key()
    assert isinstance(a.curve, ec.SECP256R1)
    assert not same_public_key(a.public_key(), b.public_key())


def test_pem_round_trip_keeps_the_key() -> None:
    key = generate_private_key()
    loaded = load_private_key_pem(private_key_to_pem(key))
    assert loaded.private_numbers() == key.private_numbers()
    public = load_public_key_pem(public_key_to_pem(key.public_key()))
    assert same_public_key(public, key.public_key())


@pytest.mark.usefixtures("open_umask")
def test_written_key_has_mode_0600_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    key = generate_private_key()
    write_private_key(path, key)
    assert _mode(path) == 0o600
    assert read_private_key(path).private_numbers() == key.private_numbers()


@pytest.mark.usefixtures("open_umask")
def test_key_is_never_readable_by_others_while_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    write_private_key(tmp_path / "gateway.key", generate_private_key())
    assert seen == [0o600]


def test_encrypted_key_needs_its_password(tmp_path: Path) -> None:
    path = tmp_path / "ca.key"
    key = generate_private_key()
    write_private_key(path, key, password=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert read_private_key(path, password=b"correct horse").private_numbers() == (
        key.private_numbers()
    )
    with pytest.raises(KeyFileError, match=str(path)):
        read_private_key(path, password=b"wrong")
    with pytest.raises(KeyFileError):
        read_private_key(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610, 0o602])
def test_key_file_open_to_group_or_other_is_refused_naming_file_and_mode(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "gateway.key"
    write_private_key(path, generate_private_key())
    path.chmod(mode)
    with pytest.raises(KeyFileError) as caught:
        read_private_key(path)
    assert str(path) in str(caught.value)
    assert f"{mode:04o}" in str(caught.value)


def test_key_behind_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    write_private_key(real, generate_private_key())
    link = tmp_path / "gateway.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match=r"gateway\.key"):
        read_private_key(link)


def test_missing_key_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"absent\.key"):
        read_private_key(tmp_path / "absent.key")


def test_key_of_another_curve_is_refused(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(KeyFileError, match="P-256"):
        load_private_key_pem(private_key_to_pem(p384))


def test_garbage_is_not_a_key() -> None:
    with pytest.raises(KeyFileError, match="not a usable PEM private key"):
        load_private_key_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def test_failed_write_keeps_the_old_key_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.key"
    old = generate_private_key()
    write_private_key(path, old)

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(KeyFileError, match="No space left"):
        write_private_key(path, generate_private_key())
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.key"]
    assert read_private_key(path).private_numbers() == old.private_numbers()


def test_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "gateway.key"
    target.mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(KeyFileError, match=r"gateway\.key"):
        write_private_key(target, generate_private_key())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.key"]
    assert target.is_dir()


def test_exclusive_write_refuses_an_existing_file_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    write_atomic(path, b"first", mode=0o600, exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", mode=0o600, exclusive=True)
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]


@pytest.mark.usefixtures("open_umask")
def test_public_files_get_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "chain.pem"
    write_atomic(path, b"certificate", mode=0o644)
    assert _mode(path) == 0o644
    assert path.read_bytes() == b"certificate"
