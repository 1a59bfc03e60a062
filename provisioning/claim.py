"""Claim tokens: the one-time secret an installer types to enroll a gateway into a tenant.

A claim token looks like ``twc_`` + 43 base64url characters (256 random bits). The first
`DISPLAY_PREFIX_LENGTH` characters (``twc_`` and 8 more) are its visible prefix: stored in clear
and shown in listings, so an admin can tell tokens apart and a leaked one can be recognised,
without the stored prefix being enough to use it (it holds 48 of the 256 bits).

Only the SHA-256 of the whole token is stored. A slow password hash would buy nothing here: the
token is 256 random bits, not something a person chose, so it cannot be guessed from its digest.
Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

from provisioning.errors import ClaimTokenMalformed

PREFIX: Final = "twc_"
SECRET_BYTES: Final = 32
DISPLAY_PREFIX_LENGTH: Final = len(PREFIX) + 8
_SHAPE: Final = re.compile(r"twc_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class IssuedClaimToken:
    """A new claim token: show `token` once, store `display_prefix` and `digest`.

    Attributes:
        token: the secret, to be shown to the admin exactly once.
        display_prefix: the visible start of the token, safe to store and list.
        digest: SHA-256 hex of the token, what the cloud stores to recognise it.
    """

    token: str
    display_prefix: str
    digest: str

    def __repr__(self) -> str:
        return f"IssuedClaimToken(display_prefix={self.display_prefix!r}, token=<secret>)"


def new_claim_token() -> IssuedClaimToken:
    """Generate a fresh claim token from the operating system's CSPRNG."""
    token = PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    return IssuedClaimToken(
        token=token, display_prefix=display_prefix(token), digest=hash_claim_token(token)
    )


def check_claim_token(token: str) -> str:
    """Return `token` stripped of surrounding whitespace if it has the claim-token shape.

    Lets the CLI reject a mistyped token before it talks to the cloud.

    Raises:
        ClaimTokenMalformed: wrong prefix, length or alphabet (the token is not echoed).
    """
    stripped = token.strip()
    if not _SHAPE.fullmatch(stripped):
        raise ClaimTokenMalformed(
            f"not a claim token: expected {PREFIX!r} followed by 43 base64url characters"
        )
    return stripped


def display_prefix(token: str) -> str:
    """The visible, storable start of a claim token."""
    return token[:DISPLAY_PREFIX_LENGTH]


def hash_claim_token(token: str) -> str:
    """SHA-256 hex digest of the token, for storage and lookup."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def claim_token_matches(token: str, stored_digest: str) -> bool:
    """True if `token` hashes to `stored_digest`, compared in constant time."""
    return hmac.compare_digest(hash_claim_token(token), stored_digest)
