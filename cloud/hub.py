"""The hub: one per replica, the live side of the service.

It keeps two registries: the gateway channels this replica holds (woken when a gateway has a
new command or desired change) and the `/v1/stream` clients it serves (fed readings, alarm
transitions and command changes of their tenant). Messages reach it two ways
(`cloud.live`): `announce` after this replica commits, and, on PostgreSQL, the relay listener
for what the other replicas commit (one LISTEN connection per replica).

Nothing here may slow ingest: `announce` only appends to a bounded queue (or sets the events of
waiting channels) and returns; one fan-out task decodes and renders, and each stream client has
its own bounded buffer. A client that falls behind misses events and is told how many; a full
hub queue counts the messages it could not take against every client of that tenant.

Two sweeps run here too: queued commands past their TTL become ``expired`` (every few
seconds), and the relay log forgets what is older than a minute.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Final

from cloud.contract import ContractError, decode_batch
from cloud.errors import StorageError
from cloud.live import (
    AlarmChanges,
    CommandChange,
    GatewayWake,
    LiveError,
    LiveMessage,
    StoredBatch,
    decode_message,
    encode_message,
)
from cloud.metrics import CloudMetrics
from cloud.storage.base import Database
from cloud.stream import StreamEvent, Subscription, alarm_event, batch_event, command_event

log = logging.getLogger("tagway.cloud.hub")

QUEUE_LIMIT: Final = 10_000  # messages waiting for the fan-out task
EXPIRY_EVERY_S: Final = 2.0
PRUNE_EVERY_S: Final = 30.0
RELAY_KEEP_US: Final = 60_000_000


class _LogRef:
    """A message the other replica relayed through ``stream_log``: fetched by the fan-out task,
    and only when a client of its tenant is listening."""

    __slots__ = ("log_id",)

    def __init__(self, log_id: int) -> None:
        self.log_id = log_id


class Hub:
    """The live side of one replica.

    Args:
        db: the backend (its relay and its sweeps).
        metrics: where dropped messages and clients are counted.
    """

    def __init__(self, *, db: Database, metrics: CloudMetrics) -> None:
        self.db = db
        self.metrics = metrics
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._clients: dict[int, set[Subscription]] = {}
        self._queue: deque[tuple[int, LiveMessage | _LogRef]] = deque()
        self._pending = asyncio.Event()
        self.relay_connected = asyncio.Event()

    # ------------------------------------------------------------------------------ inbound

    def announce(self, tenant_id: int, message: LiveMessage) -> None:
        """A committed message of this replica (never blocks, never raises)."""
        self._take(tenant_id, message)

    def _take(self, tenant_id: int, message: LiveMessage | _LogRef) -> None:
        if isinstance(message, GatewayWake):
            for event in self._waiters.get(message.gateway_id, ()):
                event.set()
            return
        clients = self._clients.get(tenant_id)
        if not clients:
            return  # nobody of this tenant listens here: nothing to render
        if len(self._queue) >= QUEUE_LIMIT:
            self.metrics.stream_dropped.inc()
            for client in clients:
                client.missed += 1
                client.ready.set()
            return
        self._queue.append((tenant_id, message))
        self._pending.set()

    # --------------------------------------------------------------------------- registries

    @contextlib.contextmanager
    def gateway_waiter(self, gateway_id: int) -> Iterator[asyncio.Event]:
        """An event set whenever the gateway has something new on its channel."""
        event = asyncio.Event()
        self._waiters.setdefault(gateway_id, set()).add(event)
        self.metrics.channels.inc()
        try:
            yield event
        finally:
            self.metrics.channels.dec()
            waiters = self._waiters.get(gateway_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[gateway_id]

    @contextlib.contextmanager
    def subscribe(self, subscription: Subscription) -> Iterator[Subscription]:
        """Register a stream client for as long as the block runs."""
        self._clients.setdefault(subscription.tenant_id, set()).add(subscription)
        self.metrics.stream_clients.inc()
        try:
            yield subscription
        finally:
            self.metrics.stream_clients.dec()
            clients = self._clients.get(subscription.tenant_id)
            if clients is not None:
                clients.discard(subscription)
                if not clients:
                    del self._clients[subscription.tenant_id]

    # ------------------------------------------------------------------------------- tasks

    async def run(self) -> None:
        """Fan out, listen to the other replicas (PostgreSQL) and sweep, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._fan_out(), name="hub-fan-out")
            tg.create_task(self._sweep(), name="hub-sweep")
            if self.db.relay_listener() is not None:
                tg.create_task(self._listen(), name="hub-relay")
            else:
                self.relay_connected.set()

    async def _fan_out(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._queue:
                tenant_id, message = self._queue.popleft()
                try:
                    await self._deliver(tenant_id, message)
                except (StorageError, ContractError, LiveError) as exc:
                    log.warning("live message of tenant %d not delivered: %s", tenant_id, exc)
                await asyncio.sleep(0)  # ingest requests run between messages

    async def _deliver(self, tenant_id: int, message: LiveMessage | _LogRef) -> None:
        clients = self._clients.get(tenant_id)
        if not clients:
            return
        if isinstance(message, _LogRef):
            raw = await self.db.fetch_relayed(tenant_id, message.log_id)
            if raw is None:
                return  # pruned meanwhile (a minute late): the clients were told about gaps
            message = decode_message(raw)
        for event in self._events(message):
            for client in tuple(clients):
                client.offer(event)

    def _events(self, message: LiveMessage) -> list[StreamEvent]:
        if isinstance(message, StoredBatch):
            batch = message.batch or decode_batch(
                message.body,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
            )
            return [batch_event(message.gateway_id, batch)]
        if isinstance(message, AlarmChanges):
            return [alarm_event(t) for t in message.transitions]
        if isinstance(message, CommandChange):
            return [command_event(message.command)]
        return []

    async def _listen(self) -> None:
        """Follow the other replicas; reconnect with backoff, and after a gap wake every
        channel held here (they re-read what is pending) and tell every client."""
        delay = 0.5
        while True:
            listener = self.db.relay_listener()
            assert listener is not None  # noqa: S101 - only started where there is one
            try:
                async with listener as payloads:
                    self.relay_connected.set()
                    self._after_gap("the relay reconnected")
                    delay = 0.5
                    async for payload in payloads:
                        self._relayed(payload)
            except StorageError as exc:
                log.warning("relay listener lost: %s; reconnecting in %.1f s", exc, delay)
            self.relay_connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _after_gap(self, reason: str) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()
        for clients in self._clients.values():
            for client in clients:
                client.gap(reason)

    def _relayed(self, payload: str) -> None:
        """``tenant:replica:i:<base64 message>`` or ``tenant:replica:l:<log id>``."""
        try:
            tenant, replica, mode, data = payload.split(":", 3)
            if replica == self.db.replica:
                return  # announced locally already
            if mode == "l":
                self._take(int(tenant), _LogRef(int(data)))
            else:
                self._take(int(tenant), decode_message(base64.b64decode(data, validate=True)))
        except (ValueError, binascii.Error, LiveError) as exc:
            log.warning("ignored a relayed message that does not parse: %s", exc)

    async def _sweep(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(EXPIRY_EVERY_S)
            now = time.time_ns() // 1000
            try:
                for tenant_id, command_id, gateway_id, kind in await self.db.expire_commands(now):
                    change = CommandChange(gateway_id, {
                        "id": command_id, "gateway_id": gateway_id, "kind": kind,
                        "state": "expired", "at": now, "error": "TTL ran out before delivery",
                    })  # fmt: skip
                    async with self.db.transaction(tenant_id) as tx:  # tell the other replicas
                        await self.db.relay(tx, tenant_id, encode_message(change))
                    self.announce(tenant_id, change)
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    await self.db.prune_relayed(now - RELAY_KEEP_US)
                    last_prune = time.monotonic()
            except StorageError as exc:
                log.warning("command expiry sweep failed: %s", exc)
