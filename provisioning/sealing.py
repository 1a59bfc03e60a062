"""The master key and CA private keys sealed with it (encrypted at rest).

A tenant CA's private key is stored only sealed: AES-256-GCM under a key derived with HKDF-SHA256
from the service's master key, with the tenant as associated data. A database dump alone reveals
no CA key; a blob copied into another tenant's row does not open (the tag covers the tenant), and
a flipped bit is detected rather than yielding a wrong key.

Blob layout (bytes): ``b"TWS1"`` (format version) || 12-byte random nonce || ciphertext+tag.
The plaintext is the key's unencrypted PKCS#8 DER, so nothing else about the key leaks.

The master key file holds 32 random bytes, base64url-encoded on one line.
`load_or_create_master_key` creates it on the first start of the embedded default (mode 0600,
atomically, and safe when two replicas start at the same moment).
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from provisioning.errors import KeyFileError, SealedKeyError
from provisioning.files import PRIVATE_MODE, InsecureFileMode, read_private, write_atomic
from provisioning.keys import PrivateKey, is_p256

MASTER_KEY_BYTES: Final = 32
_MAGIC: Final = b"TWS1"
_MASTER_KEY_TEXT: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_NONCE_BYTES: Final = 12
_HKDF_INFO: Final = b"tagway sealed private key v1"


class MasterKey:
    """The service's root secret for sealing CA keys. Its repr never shows the bytes.

    Args:
        secret: exactly 32 random bytes.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != MASTER_KEY_BYTES:
            raise KeyFileError(f"a master key is {MASTER_KEY_BYTES} bytes, got {len(secret)}")
        self._secret = secret

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh master key from the operating system's CSPRNG."""
        return cls(os.urandom(MASTER_KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, *, source: str = "<text>") -> MasterKey:
        """Decode the one-line base64url form (as in the key file or a settings value).

        Raises:
            KeyFileError: not base64url, or not 32 bytes; names `source`.
        """
        stripped = text.strip()
        if not _MASTER_KEY_TEXT.fullmatch(stripped):
            raise KeyFileError(
                f"{source}: a master key is {MASTER_KEY_BYTES} bytes as 43 base64url characters"
            )
        secret = base64.urlsafe_b64decode(stripped + "=")
        return cls(secret)

    def to_text(self) -> str:
        """The one-line base64url form (unpadded)."""
        return base64.urlsafe_b64encode(self._secret).rstrip(b"=").decode("ascii")

    def _sealing_key(self) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
            self._secret
        )

    def __repr__(self) -> str:
        return "MasterKey(<secret>)"


def load_or_create_master_key(path: Path) -> MasterKey:
    """Load the master key file, creating it (0600, atomically) if it does not exist yet.

    Raises:
        KeyFileError: the file is accessible by group/other (names file and mode), malformed,
            or cannot be read or created.
    """
    try:
        data = read_private(path)
    except FileNotFoundError:
        key = MasterKey.generate()
        try:
            write_atomic(path, (key.to_text() + "\n").encode(), mode=PRIVATE_MODE, exclusive=True)
        except FileExistsError:
            return load_or_create_master_key(path)  # another process created it first
        except OSError as exc:
            raise KeyFileError(f"cannot create master key file {path}: {exc}") from exc
        return key
    except InsecureFileMode as exc:
        raise KeyFileError(str(exc)) from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read master key file {path}: {exc}") from exc
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: master key file is not ASCII text") from exc
    return MasterKey.from_text(text, source=str(path))


def seal_private_key(key: PrivateKey, master_key: MasterKey, *, context: str) -> bytes:
    """Encrypt `key` under `master_key`, bound to `context` (e.g. ``"tenant:<id>"``)."""
    plaintext = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(master_key._sealing_key()).encrypt(nonce, plaintext, context.encode())
    return _MAGIC + nonce + sealed


def open_sealed_key(blob: bytes, master_key: MasterKey, *, context: str) -> PrivateKey:
    """Decrypt a blob made by `seal_private_key` with the same master key and context.

    Raises:
        SealedKeyError: unknown format, wrong master key, wrong context, or tampered bytes.
    """
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _NONCE_BYTES + 16:
        raise SealedKeyError(f"not a sealed key blob (expected format {_MAGIC!r})")
    nonce = blob[len(_MAGIC) : len(_MAGIC) + _NONCE_BYTES]
    ciphertext = blob[len(_MAGIC) + _NONCE_BYTES :]
    try:
        plaintext = AESGCM(master_key._sealing_key()).decrypt(nonce, ciphertext, context.encode())
    except InvalidTag as exc:
        raise SealedKeyError(
            f"sealed key for {context!r} does not open: wrong master key, another context's "
            "blob, or tampered bytes"
        ) from exc
    key = serialization.load_der_private_key(plaintext, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not is_p256(key):
        raise SealedKeyError(f"sealed key for {context!r} is not a P-256 key")
    return key
