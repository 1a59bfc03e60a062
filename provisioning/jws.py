"""The compact-serialization codec of JWS (RFC 7515 §7.1): base64url parts of JSON objects.

Strict on purpose: only canonical unpadded base64url (one token has exactly one spelling, so its
string cannot be altered without breaking the signature), JSON objects without duplicate keys
(two parsers must not read two different claim sets from one token), no NaN or Infinity, and
nothing nested deeper than `MAX_DEPTH` (a header 1,500 levels deep must be a refusal, not a
RecursionError in the verifier).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from provisioning.errors import TokenMalformed

_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
MAX_DEPTH: Final = 32

Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]
"""A JSON value, as claims may hold."""


def encode_json(value: Mapping[str, Json]) -> str:
    """Compact JSON of `value`, base64url-encoded (NaN and infinities refused)."""
    return b64encode(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())


def decode_json(part: str, what: str) -> dict[str, Any]:
    """Decode one token part into a JSON object.

    Raises:
        TokenMalformed: not canonical base64url, not JSON, duplicate keys, NaN, not an object.
    """
    raw = b64decode(part, what)
    if nesting(raw) > MAX_DEPTH:
        raise TokenMalformed(f"token {what} is nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise TokenMalformed(f"token {what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TokenMalformed(f"token {what} is not a JSON object")
    return value


def nesting(raw: bytes) -> int:
    """The deepest bracket nesting of a JSON text, strings left out (without parsing it)."""
    bare = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = deepest = 0
    for i, part in enumerate(bare.split(b'"')):
        if i % 2:
            continue  # inside a string
        for byte in part:
            if byte in b"[{":
                depth += 1
                deepest = max(deepest, depth)
            elif byte in b"]}":
                depth -= 1
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def b64encode(raw: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64decode(part: str, what: str) -> bytes:
    """Decode canonical unpadded base64url; `what` names the part in the error.

    Raises:
        TokenMalformed: other characters, padding, or a non-canonical spelling.
    """
    # Canonical form only: one token has one spelling, so a token string cannot be altered
    # without breaking its signature.
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise TokenMalformed(f"token {what} is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenMalformed(f"token {what} is not base64url") from exc
    if b64encode(raw) != part:
        raise TokenMalformed(f"token {what} is not canonical base64url")
    return raw
