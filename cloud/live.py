"""Live messages: what one replica tells the others (and itself) as soon as it commits.

Four kinds, each small except a stored batch:

- `GatewayWake`: a gateway has something new on its channel (a command, a desired change).
- `CommandChange`: a command changed state (for `/v1/stream` clients watching commands).
- `AlarmChanges`: alarm transitions a batch brought, with the cloud's alarm ids.
- `StoredBatch`: a batch was stored; carries the body as the gateway posted it (compressed),
  so another replica decodes its readings only when it has a stream client for the tenant.

A transaction relays its messages to the other replicas through the database (committed with
it: PostgreSQL ``NOTIFY``, see `Database.relay`) and, once committed, hands them to this
replica's hub (`cloud.hub.Hub.announce`). Encoded with msgpack; decoding treats the bytes as
hostile like any input (`LiveError`), although only our own replicas write them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cloud.contract import Batch


class LiveError(ValueError):
    """A relayed message that does not decode."""


@dataclass(frozen=True, slots=True)
class GatewayWake:
    """Wake the channel of this gateway: read what is pending again."""

    gateway_id: int


@dataclass(frozen=True, slots=True)
class CommandChange:
    """A command's new state, as `/v1/stream` shows it."""

    gateway_id: int
    command: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AlarmChanges:
    """Alarm transitions of one batch, each with its alarm id."""

    gateway_id: int
    transitions: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A stored batch. `batch` is set on the replica that stored it (no decoding needed
    there); another replica decodes `body` when one of its stream clients wants readings."""

    gateway_id: int
    body: bytes
    content_type: str
    content_encoding: str | None
    batch: Batch | None = field(default=None, compare=False)


LiveMessage = GatewayWake | CommandChange | AlarmChanges | StoredBatch


def encode_message(message: LiveMessage) -> bytes:
    """The message as msgpack bytes (a stored batch without its decoded form)."""
    if isinstance(message, GatewayWake):
        data: dict[str, Any] = {"k": "wake", "g": message.gateway_id}
    elif isinstance(message, CommandChange):
        data = {"k": "command", "g": message.gateway_id, "c": message.command}
    elif isinstance(message, AlarmChanges):
        data = {"k": "alarms", "g": message.gateway_id, "a": message.transitions}
    else:
        data = {"k": "batch", "g": message.gateway_id, "b": message.body,
                "t": message.content_type, "e": message.content_encoding}  # fmt: skip
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def decode_message(raw: bytes) -> LiveMessage:
    """A message from its bytes; `LiveError` when they are not one."""
    try:
        data = msgpack.unpackb(raw, raw=False)
        kind, gateway = data["k"], int(data["g"])
        if kind == "wake":
            return GatewayWake(gateway)
        if kind == "command":
            return CommandChange(gateway, dict(data["c"]))
        if kind == "alarms":
            return AlarmChanges(gateway, [dict(t) for t in data["a"]])
        if kind == "batch":
            return StoredBatch(gateway, bytes(data["b"]), str(data["t"]), data["e"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise LiveError(f"relayed message does not decode: {exc}") from exc
    raise LiveError(f"unknown relayed message kind {kind!r}")


Announce = Callable[[int, LiveMessage], None]
"""Hands a committed message of a tenant to this replica's hub."""


def ignore(tenant_id: int, message: LiveMessage) -> None:
    """An `Announce` for tools that run without a hub (the CLI's maintenance commands)."""


class News:
    """The live messages of one transaction: relayed to the other replicas inside it (so they
    go out only if it commits), announced to this replica once it has committed.

    Args:
        relay: the backend's `Database.relay`.
        tenant_id: the transaction's tenant.
    """

    def __init__(self, *, relay: Callable[[Any, int, bytes], Awaitable[None]], tenant_id: int):
        self._relay = relay
        self.tenant_id = tenant_id
        self.pending: list[LiveMessage] = []
        self.relayed: list[LiveMessage] = []

    def add(self, *messages: LiveMessage) -> None:
        """Messages to relay and announce."""
        self.pending.extend(messages)

    async def relay(self, tx: Any) -> None:
        """Relay what is pending now (before the transaction's hot rows, if the caller likes)."""
        for message in self.pending:
            await self._relay(tx, self.tenant_id, encode_message(message))
        self.relayed += self.pending
        self.pending = []
