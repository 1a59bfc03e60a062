"""Node id strings (``nsu=<uri>;s=Pump1.Flow``, ``ns=2;i=1001``, ``g=...``, ``b=...``), parsed
without asyncua: the config is validated by gateways that never load the OPC UA stack.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Final, NamedTuple

from protocols.errors import CodecError

_IDENTIFIER_KINDS: Final = frozenset({"i", "s", "g", "b"})
_UINT32_MAX: Final = 0xFFFFFFFF


class NodeIdSpec(NamedTuple):
    """A parsed node id string, before its namespace is resolved against a server.

    Attributes:
        namespace_uri: the `nsu=` URI, or None when the index is given.
        namespace_index: the `ns=` index (0 when neither is given), or None with a URI.
        kind: ``"i"``, ``"s"``, ``"g"`` or ``"b"``.
        identifier: the identifier, already converted (int, str, UUID or bytes).
    """

    namespace_uri: str | None
    namespace_index: int | None
    kind: str
    identifier: int | str | uuid.UUID | bytes


def parse_node_id(text: str) -> NodeIdSpec:
    """Parse a node id string; raises `CodecError` naming the problem."""
    rest = text.strip()
    if not rest:
        raise CodecError("empty node id")
    uri: str | None = None
    index: int | None = 0
    head, sep, tail = rest.partition(";")
    if sep and head.startswith("nsu="):
        uri, index, rest = head[4:], None, tail
        if not uri:
            raise CodecError(f"node id {text!r}: empty namespace URI after 'nsu='")
    elif sep and head.startswith("ns="):
        index, rest = _parse_uint(head[3:], text, "namespace index"), tail
    kind, eq, raw = rest.partition("=")
    if not eq or kind not in _IDENTIFIER_KINDS:
        raise CodecError(
            f"node id {text!r}: expected 'i=', 's=', 'g=' or 'b=' identifier, "
            "optionally after 'nsu=<uri>;' or 'ns=<index>;'"
        )
    return NodeIdSpec(uri, index, kind, _parse_identifier(kind, raw, text))


def _parse_uint(raw: str, text: str, what: str) -> int:
    if not raw.isdigit() or int(raw) > _UINT32_MAX:
        raise CodecError(f"node id {text!r}: {what} {raw!r} is not an unsigned 32-bit integer")
    return int(raw)


def _parse_identifier(kind: str, raw: str, text: str) -> int | str | uuid.UUID | bytes:
    if kind == "i":
        return _parse_uint(raw, text, "numeric identifier")
    if kind == "s":
        if not raw:
            raise CodecError(f"node id {text!r}: empty string identifier")
        return raw
    if kind == "g":
        try:
            return uuid.UUID(raw)
        except ValueError:
            raise CodecError(f"node id {text!r}: {raw!r} is not a GUID") from None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError(f"node id {text!r}: {raw!r} is not base64") from None
