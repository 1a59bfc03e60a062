"""The embedded MQTT broker local devices publish into: amqtt behind an async context manager.

    async with EmbeddedBroker(config) as broker:
        print(broker.port)          # the port actually bound (config.port may be 0)
        ...                          # serve until the block exits

What this adds to amqtt 0.12:
- We own the listening socket (`asyncio.start_server`, handed to amqtt as an *external*
  listener), so the bound port is known, TLS uses our own `ssl.SSLContext`, the connection count
  is bounded, and at shutdown every connection task is ours to cancel and await. amqtt's own TCP
  listener leaves its per-connection handler tasks behind after `Broker.shutdown()` (Python 3.11's
  `Server.wait_closed()` does not wait for them), which the test suite rightly reports as leaks.
- Authentication by a plugin reading Argon2 hashes straight from the config (the same hash
  format as amqtt's password file); anonymous clients are refused. Verification runs in a worker
  thread because Argon2 is deliberately slow (~50 ms) and must not stall the event loop.
- Topic ACLs by our own plugin: amqtt 0.12's ACL plugin takes the subscribe list under the
  deprecated key ``acl`` (which raises a DeprecationWarning), ``subscribe_acl`` fails to load,
  and with only ``publish_acl`` every subscription is denied. Ours checks that a subscription
  filter lies *inside* an allowed filter (``plant/#`` is not inside ``plant/pump1/#``).
- A packet size guard in front of amqtt's reader: a packet larger than `max_message_bytes`
  closes the sender's connection before amqtt buffers it (MQTT 3.1.1 cannot refuse one message).
- A PUBLISH whose topic name MQTT 3.1.1 forbids (not UTF-8, U+0000, a wildcard, empty) closes
  the sender's connection before amqtt parses it (sections 1.5.3 and 4.7), counted in
  `counters.malformed_topics`; amqtt alone forwarded NUL topics, and after a wildcard topic read
  the payload as packets.
- Nothing the broker accepted disappears without a count. amqtt's queues are unbounded (a slow
  subscriber delays delivery, it never makes amqtt drop a QoS 0 message), but it discards
  silently in three places: a PUBLISH written to a connection amqtt has already closed (its writer
  adapter turns `write` into a no-op; that happens to every delivery still pending for a
  subscriber when it disconnects or when the broker stops), the broadcast queue it clears at
  shutdown; and a QoS 0 message for a persistent session that is not connected. All are counted
  in `counters.undelivered`; `counters.broadcasts` counts the
  PUBLISHes accepted for fan-out and `backlog` what is queued or pending delivery right now.
- Disconnected sessions expire after `session_expiry_s` (amqtt's session monitor), so devices
  that come and go with fresh client ids do not grow memory.

Errors (from `protocols.errors`): a config that cannot work raises `DriverConfigError`; a port
that cannot be bound raises `ConnectError`; amqtt failing to start raises `ProtocolError`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Self

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext
from amqtt.errors import AMQTTError
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from protocols.errors import ConnectError, DriverConfigError, ProtocolError
from protocols.mqtt.codec import topic_matches
from protocols.mqtt.config import BrokerUser, EmbeddedBrokerConfig

_log = logging.getLogger(__name__)
_LISTENER: Final = "default"
_PASSWORDS: Final = PasswordHash((Argon2Hasher(),))
_DUMMY_HASH: Final = _PASSWORDS.hash("no such user")
_CONCURRENT_VERIFICATIONS: Final = 2


def hash_password(password: str) -> str:
    """An Argon2 hash of `password` for `BrokerUser.password_hash` (and amqtt's password file)."""
    return _PASSWORDS.hash(password)


def filter_within(requested: str, allowed: str) -> bool:
    """True if every topic the filter `requested` matches is also matched by `allowed`."""
    req, allow = requested.split("/"), allowed.split("/")
    for index, level in enumerate(allow):
        if level == "#":
            return True
        if index >= len(req) or req[index] == "#":
            return False
        if level != "+" and req[index] != level:
            return False  # a literal level admits only itself, not '+'
    return len(req) == len(allow)


class DeviceAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt auth plugin: username + password checked against Argon2 hashes from the config."""

    @dataclass
    class Config:
        """Username -> Argon2 hash."""

        users: dict[str, str] = field(default_factory=dict)

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        # A flood of CONNECTs must not turn into a flood of Argon2 runs: at most two at a time.
        self._verifying = asyncio.Semaphore(_CONCURRENT_VERIFICATIONS)

    async def authenticate(self, *, session: Session) -> bool | None:
        """True only for a known user with the right password; anonymous clients are refused."""
        users: dict[str, str] = self.config.users
        expected = users.get(session.username or "")
        if session.username is None or session.password is None:
            return False
        async with self._verifying:
            # Argon2 is slow by design; verifying on the loop would stall every other client.
            # An unknown user is checked against a dummy hash so that timing does not reveal
            # which usernames exist.
            matches = await asyncio.to_thread(
                _PASSWORDS.verify, session.password, expected or _DUMMY_HASH
            )
        return matches and expected is not None


class DeviceAclPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt topic plugin: per-user publish and subscribe filters; no entry means no access."""

    @dataclass
    class Config:
        """Username -> allowed filters, per action."""

        publish: dict[str, list[str]] = field(default_factory=dict)
        subscribe: dict[str, list[str]] = field(default_factory=dict)

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._publish = {u: [f.split("/") for f in fs] for u, fs in self.config.publish.items()}
        self._subscribe: dict[str, list[str]] = self.config.subscribe

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        """Allow a publish inside the user's publish filters, a subscription inside its
        subscribe filters; delivery to an accepted subscription is always allowed."""
        if action == Action.RECEIVE:
            return True
        username = session.username if session else None
        if username is None or not topic:
            return False
        if action == Action.PUBLISH:
            levels = topic.split("/")
            return any(topic_matches(f, levels) for f in self._publish.get(username, ()))
        if action == Action.SUBSCRIBE:
            return any(filter_within(topic, f) for f in self._subscribe.get(username, ()))
        return False


_PUBLISH: Final = 3  # MQTT 3.1.1 control packet type of PUBLISH (the fixed header's high nibble)
_NOT_IN_TOPIC_NAMES: Final = ("\x00", "+", "#")


def publish_topic_problem(body: bytes) -> str | None:
    """Why the topic name at the start of a PUBLISH packet's body breaks MQTT 3.1.1, or None.

    Section 1.5.3: a UTF-8 string, no U+0000 and no surrogates (Python's strict decoder refuses
    encoded surrogates and overlong forms). Section 4.7: a topic name is at least one character
    and has no wildcards.
    """
    if len(body) < 2:  # the two length bytes
        return "PUBLISH without a topic length"
    length = int.from_bytes(body[:2], "big")
    if len(body) < 2 + length:
        return f"PUBLISH topic length {length} runs past the packet"
    try:
        topic = body[2 : 2 + length].decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"PUBLISH topic is not valid UTF-8 ({exc.reason}) [MQTT-1.5.3-1]"
    if not topic:
        return "PUBLISH topic is empty [MQTT-4.7.3-1]"
    for char in _NOT_IN_TOPIC_NAMES:
        if char in topic:
            rule = "[MQTT-1.5.3-2]" if char == "\x00" else "[MQTT-3.3.2-2]"
            return f"PUBLISH topic {topic[:80]!r} contains {char!r} {rule}"
    return None


def amqtt_ignores(first_byte: int, body: bytes) -> bool:
    """True for a PUBLISH amqtt 0.12 reads and then drops with only a log line: a topic starting
    with '$' [MQTT-4.7.2-1], or QoS 0 with the DUP flag set [MQTT-3.3.1-2]."""
    qos0_dup = first_byte & 0x06 == 0 and first_byte & 0x08 != 0
    return qos0_dup or body[2:3] == b"$"


class _PacketSizeGuard(ReaderAdapter):  # type: ignore[misc]  # amqtt ships no type information
    """Reads each MQTT fixed header before amqtt does and ends the stream (EOF) when the packet
    would exceed the limit, so an oversize packet is never buffered. A PUBLISH is read whole and
    its topic name checked first: one MQTT 3.1.1 forbids also ends the stream (the standard says
    the server closes the connection), so amqtt never parses it, nor what follows it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        max_bytes: int,
        on_refused: Any,
        on_malformed: Any = None,
        on_ignored: Any = None,
    ) -> None:
        self._reader = reader
        self._max = max_bytes
        self._on_refused = on_refused
        self._on_malformed = on_malformed
        self._on_ignored = on_ignored
        self._header = bytearray()
        self._left = 0

    async def read(self, n: int = -1) -> bytes:
        if not self._header and self._left == 0 and not await self._next_header():
            return b""
        if self._header:
            count = len(self._header) if n < 0 else min(n, len(self._header))
            data = bytes(self._header[:count])
            del self._header[:count]
            return data
        try:
            data = await self._reader.readexactly(n if n >= 0 else self._left)
        except asyncio.IncompleteReadError as exc:
            data = exc.partial
        self._left -= len(data)
        return data

    async def _next_header(self) -> bool:
        """Read the fixed header (type byte + remaining length); False ends the stream."""
        try:
            header = bytearray(await self._reader.readexactly(1))
            length, multiplier = 0, 1
            for _ in range(4):  # [MQTT-2.2.3]: the remaining length has at most 4 bytes
                byte = (await self._reader.readexactly(1))[0]
                header.append(byte)
                length += (byte & 0x7F) * multiplier
                if not byte & 0x80:
                    break
                multiplier *= 128
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        if length + len(header) > self._max:
            self._on_refused(length + len(header))
            return False
        if header[0] >> 4 == _PUBLISH:
            try:
                body = await self._reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return False
            problem = publish_topic_problem(body)
            if problem is not None:
                if self._on_malformed is not None:
                    self._on_malformed(problem)
                return False
            if self._on_ignored is not None and amqtt_ignores(header[0], body):
                self._on_ignored()
            self._header, self._left = header + body, 0
            return True
        self._header, self._left = header, length
        return True

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class BrokerState(StrEnum):
    """Where the embedded broker is."""

    IDLE = "idle"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(slots=True)
class BrokerCounters:
    """What the broker refused, since start."""

    connections: int = 0  # TCP connections accepted
    refused_connections: int = 0  # over max_connections
    oversize_packets: int = 0  # packets over max_message_bytes (their connection was closed)
    malformed_topics: int = 0  # PUBLISH topics MQTT forbids (their connection was closed)
    broadcasts: int = 0  # PUBLISHes accepted and queued for delivery to subscribers
    refused_publishes: int = 0  # PUBLISHes dropped unbroadcast: ACL, '$' topic, DUP on QoS 0
    undelivered: int = 0  # deliveries amqtt discarded (closed subscriber, broker stopping)


_PENDING_DELIVERY_WAIT_S: Final = 1.0


class _CountingWriter(StreamWriterAdapter):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's stream writer, counting each PUBLISH it is asked to write after the connection
    closed: amqtt's adapter then silently drops it (it marks itself closed before draining)."""

    def __init__(self, writer: asyncio.StreamWriter, counters: BrokerCounters) -> None:
        super().__init__(writer)
        self._counters = counters
        self._transport = writer.transport

    def write(self, data: bytes) -> None:
        if data and data[0] >> 4 == _PUBLISH and (self.is_closed or self._transport.is_closing()):
            self._counters.undelivered += 1
            return
        super().write(data)


class _CountingBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's broker, counting what it accepts for fan-out and what it discards at shutdown.

    Pinned to amqtt 0.12's private broadcast path (`_broadcast_queue`, `_tasks_queue`,
    `_broadcast_message`, `_shutdown_broadcast_loop`); tests/protocols/mqtt/test_broker_loss.py
    fails if an upgrade changes it."""

    def __init__(self, config: dict[str, Any], counters: BrokerCounters, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._counters = counters

    @property
    def backlog(self) -> int:
        """Messages queued for fan-out plus deliveries not yet written to their subscriber."""
        pending = sum(1 for task in self._tasks_queue if not task.done())
        return int(self._broadcast_queue.qsize()) + pending

    async def _broadcast_message(
        self, session: Any, topic: Any, data: Any, force_qos: int | None = None
    ) -> None:
        self._counters.broadcasts += 1
        await super()._broadcast_message(session, topic, data, force_qos)

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        allowed: bool = await super()._topic_filtering(session, topic=topic, action=action)
        if not allowed and action == Action.PUBLISH:
            self._counters.refused_publishes += 1  # amqtt drops it with an INFO log line
        # amqtt asks before each delivery; to a subscriber that is not connected it then keeps
        # only QoS 1/2 messages of a persistent session and skips the rest without a trace.
        if allowed and action == Action.RECEIVE and session.transitions.state != "connected":
            qos = self._subscription_qos(session, topic)
            if session.clean_session or session.is_anonymous or qos not in (1, 2):
                self._counters.undelivered += 1
        return allowed

    def _subscription_qos(self, session: Session, topic: str) -> int:
        for topic_filter, subscriptions in self._subscriptions.items():
            if self._matches(topic, topic_filter):
                for subscriber, qos in subscriptions:
                    if subscriber is session:
                        return int(qos)
        return 0

    def _discard_queued(self) -> None:
        while not self._broadcast_queue.empty():
            self._broadcast_queue.get_nowait()
            self._counters.undelivered += 1

    async def shutdown(self) -> None:
        # Subscribers are about to be disconnected: what is not fanned out yet never will be.
        self._discard_queued()
        await super().shutdown()

    async def _shutdown_broadcast_loop(self) -> None:
        # The subscribers' writers are closed by now, so each pending delivery runs straight to
        # its (counted) no-op write; only those that still do not finish are cancelled.
        pending = [task for task in self._tasks_queue if not task.done()]
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=_PENDING_DELIVERY_WAIT_S)
            self._counters.undelivered += len(stuck)
        await super()._shutdown_broadcast_loop()
        self._discard_queued()


class EmbeddedBroker:
    """The gateway's own MQTT 3.1.1 broker.

    Args:
        config: bind address and port, users with ACLs, session expiry, TLS, size limits.
    """

    def __init__(self, config: EmbeddedBrokerConfig) -> None:
        self.config = config
        self.state = BrokerState.IDLE
        self.counters = BrokerCounters()
        self._broker: _CountingBroker | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The TCP port actually bound; raises `ProtocolError` before the broker started."""
        if self._port is None:
            raise ProtocolError("the embedded broker is not running")
        return self._port

    @property
    def session_count(self) -> int:
        """Sessions the broker holds, connected or kept for a disconnected persistent client."""
        return len(self._broker.sessions) if self._broker is not None else 0

    @property
    def backlog(self) -> int:
        """Messages queued in the broker for fan-out plus deliveries not yet written."""
        return self._broker.backlog if self._broker is not None else 0

    @property
    def url(self) -> str:
        """``mqtt://host:port`` (``mqtts://`` with TLS) for clients."""
        scheme = "mqtts" if self.config.tls else "mqtt"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def __aenter__(self) -> Self:
        if self.state is not BrokerState.IDLE:
            raise ProtocolError(f"the embedded broker cannot start from state {self.state}")
        tls = self._tls_context()
        try:
            self._broker = _CountingBroker(
                self._amqtt_config(), self.counters, plugin_namespace="tagway.mqtt.broker"
            )
            await self._broker.start()
        except AMQTTError as exc:
            raise ProtocolError(f"embedded MQTT broker failed to start: {exc}") from exc
        try:
            self._server = await asyncio.start_server(
                self._serve, self.config.host, self.config.port, ssl=tls
            )
        except OSError as exc:
            await self._broker.shutdown()
            where = f"{self.config.host}:{self.config.port}"
            raise ConnectError(f"embedded MQTT broker cannot bind {where}: {exc}") from exc
        self._port = self._server.sockets[0].getsockname()[1]
        self.state = BrokerState.RUNNING
        _log.info("embedded MQTT broker listening on %s", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop accepting, disconnect every client, and wait until no task of ours is left."""
        if self.state is BrokerState.CLOSED:
            return
        self.state = BrokerState.CLOSED
        if self._server is not None:
            self._server.close()
        if self._broker is not None:
            # Stops amqtt's session handlers, its broadcast loop and its session monitor.
            await self._broker.shutdown()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # cannot happen: start_server runs this callback in its own task
            return
        peer = writer.get_extra_info("peername")
        task.set_name(f"mqtt-broker-connection {peer}")
        if len(self._connections) >= self.config.max_connections or self._broker is None:
            self.counters.refused_connections += 1
            writer.close()
            return
        self._connections.add(task)
        self.counters.connections += 1
        guard = _PacketSizeGuard(
            reader,
            self.config.max_message_bytes,
            self._refuse_oversize,
            self._refuse_topic,
            self._ignored_publish,
        )
        try:
            await self._broker.external_connected(
                guard, _CountingWriter(writer, self.counters), _LISTENER
            )
        except (OSError, AMQTTError) as exc:
            _log.debug("MQTT client %s dropped: %s", peer, exc)
        except asyncio.CancelledError:
            if self.state is not BrokerState.CLOSED:
                raise
            # Only close() cancels a connection, and then gathers it. Python 3.11's start_server
            # logs a cancelled callback task as an error, so the shutdown ends here as a return.
            task.uncancel()
        finally:
            self._connections.discard(task)
            writer.close()

    def _refuse_oversize(self, size: int) -> None:
        self.counters.oversize_packets += 1
        _log.warning(
            "MQTT packet of %d bytes exceeds max_message_bytes %d; closing the connection",
            size,
            self.config.max_message_bytes,
        )

    def _ignored_publish(self) -> None:
        self.counters.refused_publishes += 1

    def _refuse_topic(self, problem: str) -> None:
        self.counters.malformed_topics += 1
        _log.warning("MQTT client sent a malformed packet: %s; closing the connection", problem)

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.config.tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.config.tls.cert_file, self.config.tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise DriverConfigError(f"tls: cannot load certificate/key: {exc}") from exc
        return context

    def _amqtt_config(self) -> dict[str, Any]:
        users: tuple[BrokerUser, ...] = self.config.users
        return {
            "listeners": {_LISTENER: {"type": "external"}},
            "session_expiry_interval": self.config.session_expiry_s,
            "plugins": {
                f"{__name__}.DeviceAuthPlugin": {
                    "users": {u.username: u.password_hash for u in users}
                },
                f"{__name__}.DeviceAclPlugin": {
                    "publish": {u.username: list(u.acl("publish")) for u in users},
                    "subscribe": {u.username: list(u.acl("subscribe")) for u in users},
                },
            },
        }
