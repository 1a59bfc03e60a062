"""P-256 key pairs: generation, PEM encoding, and private-key files written atomically with 0600.

Every key tagway makes or accepts is ECDSA on NIST P-256 (secp256r1): the curve ES256 tokens and
the tenant CAs use, supported by every TLS stack a cloud load balancer runs. A key of any other
type is refused at load, so a wrong file fails at start-up, not at the first signature.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioning.errors import KeyFileError
from provisioning.files import PRIVATE_MODE, InsecureFileMode, read_private, write_atomic

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey


def generate_private_key() -> PrivateKey:
    """A fresh P-256 private key from the operating system's CSPRNG."""
    return ec.generate_private_key(ec.SECP256R1())


def is_p256(key: object) -> bool:
    """True if `key` is a P-256 public or private key."""
    return isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    )


def private_key_to_pem(key: PrivateKey, *, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM; encrypted with the best available scheme when `password` is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_to_pem(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key_pem(
    data: bytes, *, password: bytes | None = None, source: str = "<bytes>"
) -> PrivateKey:
    """Parse a PEM private key and insist it is P-256.

    Raises:
        KeyFileError: not a PEM private key, wrong password, or not P-256; names `source`.
    """
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{source}: not a usable PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not is_p256(key):
        raise KeyFileError(f"{source}: expected a P-256 (secp256r1) EC key, found {type(key)}")
    return key


def load_public_key_pem(data: bytes, *, source: str = "<bytes>") -> PublicKey:
    """Parse a PEM public key and insist it is P-256.

    Raises:
        KeyFileError: not a PEM public key or not P-256; names `source`.
    """
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{source}: not a usable PEM public key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not is_p256(key):
        raise KeyFileError(f"{source}: expected a P-256 (secp256r1) EC key, found {type(key)}")
    return key


def write_private_key(path: Path, key: PrivateKey, *, password: bytes | None = None) -> None:
    """Write `key` to `path` atomically with mode 0600 (never readable by others, even briefly).

    Raises:
        KeyFileError: the file cannot be written; names the file and the reason.
    """
    try:
        write_atomic(path, private_key_to_pem(key, password=password), mode=PRIVATE_MODE)
    except OSError as exc:
        raise KeyFileError(f"cannot write private key {path}: {exc}") from exc


def read_private_key(path: Path, *, password: bytes | None = None) -> PrivateKey:
    """Load the P-256 private key at `path`, refusing a file that group or other can access.

    Raises:
        KeyFileError: missing, unreadable, mode not 0600 (the message names file and mode),
            not PEM, wrong password, or not P-256.
    """
    try:
        data = read_private(path)
    except InsecureFileMode as exc:
        raise KeyFileError(str(exc)) from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc}") from exc
    return load_private_key_pem(data, password=password, source=str(path))


def same_public_key(a: PublicKey, b: PublicKey) -> bool:
    """True if `a` and `b` are the same P-256 public key."""
    return bool(a.public_numbers() == b.public_numbers())
