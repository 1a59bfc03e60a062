"""The MQTT subscriber driver (aiomqtt 2.5, MQTT 3.1.1): one broker, many devices.

    async with MqttDriver(config, dead_letters=store_dead_letters) as driver:
        await driver.run(sink)       # until cancelled; reconnects by itself

- Connects, subscribes to every configured filter in one SUBSCRIBE and checks each SUBACK
  return code. A refused filter is not silence: it is counted in `counters.errors`, named in
  `link.last_error` and listed in `refused_subscriptions`; if every filter is refused the
  connection is dropped and retried with backoff (an ACL may be fixed meanwhile).
- Re-subscribes on every reconnect (a broker restart forgets subscriptions), with capped,
  jittered backoff (`protocols.backoff`) between attempts.
- Messages are decoded by the pure codec; the device of each reading comes from the topic.
  Whatever is queued is drained and decoded together, so the sink gets one `list[Reading]` per
  burst, not one call per message.
- A ``sparkplug_b`` subscription follows other edge nodes' births and deaths
  (`protocols.sparkplug.host`) and publishes the rebirth requests (NCMD) its decoder asks for.
- A payload that cannot be decoded becomes a `DeadLetter`, handed to the dead-letter sink and
  counted in `counters.dropped` and `counters.errors`; the driver keeps running.
- aiomqtt's incoming queue is ours (`_Inbox`): when it is full the message is dropped by aiomqtt,
  and we count it in `counters.dropped` rather than lose it silently.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Self, cast

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from protocols.backoff import Backoff, BackoffPolicy
from protocols.driver import ConnectionState, DriverCounters, DriverState, Sink
from protocols.errors import ConnectError, DriverConfigError, SecurityError, WriteError
from protocols.mqtt.codec import DeadLetter, Limits, compile_routes, decode_message
from protocols.mqtt.config import MqttSourceConfig
from protocols.reading import Reading, Value, now_us

_log = logging.getLogger(__name__)

DeadLetterSink = Callable[[list[DeadLetter]], Awaitable[None]]
"""Where undecodable messages go (the edge persists them in a table). Awaited, per batch."""

# CONNACK "bad username or password" and "not authorised": MQTT 3.1.1 codes 4 and 5, which
# paho reports as their MQTT 5 reason codes 134 and 135.
_CONNACK_AUTH_FAILURES: Final = frozenset({4, 5, 134, 135})


class _Inbox(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming message queue, bounded, counting what it has to refuse."""

    def __init__(self, maxsize: int, counters: DriverCounters) -> None:
        super().__init__(maxsize=maxsize)
        self._counters = counters

    def put_nowait(self, item: aiomqtt.Message) -> None:
        try:
            super().put_nowait(item)
        except asyncio.QueueFull:
            self._counters.dropped += 1  # aiomqtt logs and discards it; we make it visible
            raise


class MqttDriver(DriverState):
    """Subscribes to one MQTT broker and delivers decoded readings in batches.

    `name` is the source's name; each reading carries the device resolved from its topic. In
    `counters`, requests are messages received and dropped are dead letters plus inbox overflow.

    Args:
        config: the broker URL, credentials, subscriptions and limits.
        dead_letters: awaited with every batch of undecodable messages.
        backoff: the reconnect policy; defaults to the config's base and cap.
    """

    def __init__(
        self,
        config: MqttSourceConfig,
        *,
        dead_letters: DeadLetterSink,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.config = config
        self._dead_letters = dead_letters
        super().__init__(config.name)
        policy = backoff or BackoffPolicy(base=config.reconnect_base_s, cap=config.reconnect_cap_s)
        self._backoff = Backoff(policy)
        limits = Limits(
            max_payload_bytes=config.max_payload_bytes,
            max_future_skew_us=_skew_us(config.max_future_skew_s),
            simulated=config.simulated,
        )
        self._routes = compile_routes(config.subscriptions, limits)
        self._tls: ssl.SSLContext | None = None
        self.refused_subscriptions: tuple[str, ...] = ()
        """Filters the broker refused on the last connect (SUBACK 0x80)."""

    async def __aenter__(self) -> Self:
        if self.config.tls:
            try:
                self._tls = ssl.create_default_context(cafile=self.config.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise DriverConfigError(
                    f"ca_file: cannot load {self.config.ca_file}: {exc}"
                ) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._link.to(ConnectionState.CLOSED)

    async def write(self, tag: str, value: Value) -> Value:
        """MQTT sources are read-only here: there is no command topic to publish setpoints to."""
        raise WriteError(f"{self.name}: MQTT source cannot write {tag}={value!r}: read-only")

    async def run(self, sink: Sink) -> None:
        """Connect, subscribe and deliver until cancelled; every failure leads to a reconnect."""
        while True:
            self._link.to(ConnectionState.CONNECTING)
            try:
                await self._session(sink)
                error = "broker closed the connection"
            except (aiomqtt.MqttError, ConnectError) as exc:
                error = str(_translate(exc))
            self._counters.errors += 1
            self._link.to(ConnectionState.BACKOFF, error=error)
            delay = self._backoff.next_delay()
            _log.warning("%s: %s; reconnecting in %.2f s", self.name, error, delay)
            await asyncio.sleep(delay)

    async def _session(self, sink: Sink) -> None:
        """One connection: subscribe, then receive until the link drops."""
        inbox = _Inbox(self.config.max_queued_messages, self._counters)
        async with self._client(inbox) as client:
            refused = await self._subscribe(client)
            self._link.to(ConnectionState.CONNECTED)
            if refused is not None:
                self._link.error(refused)
            self._backoff.reset()
            try:
                async for message in client.messages:
                    await self._deliver([message, *self._drain(inbox)], sink)
                    await self._publish_outgoing(client)
            except aiomqtt.MqttError:
                # What arrived before the link dropped is still ours to deliver.
                await self._deliver(self._drain(inbox, everything=True), sink)
                raise

    def _client(self, inbox: _Inbox) -> aiomqtt.Client:
        config = self.config
        password = config.password.get_secret_value() if config.password else None
        return aiomqtt.Client(
            config.host,
            config.port,
            username=config.username,
            password=password,
            identifier=config.identifier,
            clean_session=config.clean_session,
            keepalive=config.keepalive_s,
            timeout=config.timeout_s,
            tls_context=self._tls,
            logger=_log,
            # aiomqtt builds its queue as queue_type(maxsize=...); handing it ours lets us
            # drain it in one go and count overflow.
            queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", lambda maxsize: inbox),
        )

    async def _subscribe(self, client: aiomqtt.Client) -> str | None:
        """Subscribe to every filter; the refusal message when some (not all) were refused."""
        filters = [route.subscription.topic_filter for route in self._routes]
        unique = list(dict.fromkeys(filters))
        qos: int = self.config.qos
        codes = await client.subscribe([(f, qos) for f in unique])
        refused = tuple(f for f, code in zip(unique, codes, strict=True) if _refused(code))
        self.refused_subscriptions = refused
        if not refused:
            return None
        self._counters.errors += len(refused)
        message = f"broker refused subscription to {', '.join(refused)} (SUBACK 0x80)"
        if len(refused) == len(unique):
            raise ConnectError(message)
        _log.error("%s: %s", self.name, message)
        return message

    def _drain(self, inbox: _Inbox, *, everything: bool = False) -> list[aiomqtt.Message]:
        """Take what is already queued, up to `max_batch` messages (everything when the link
        dropped, so nothing received is left behind)."""
        taken: list[aiomqtt.Message] = []
        limit = self.config.max_batch
        while not inbox.empty() and (everything or len(taken) < limit):
            taken.append(inbox.get_nowait())
        return taken

    async def _deliver(self, messages: list[aiomqtt.Message], sink: Sink) -> None:
        if not messages:
            return
        received_us = now_us()
        readings: list[Reading] = []
        letters: list[DeadLetter] = []
        for message in messages:
            decoded = decode_message(
                self._routes, message.topic.value, message.payload, received_us
            )
            if isinstance(decoded, DeadLetter):
                letters.append(decoded)
            else:
                readings += decoded
        self._counters.requests += len(messages)
        if letters:
            self._counters.dropped += len(letters)
            self._counters.errors += len(letters)
            await self._dead_letters(letters)
        step = self.config.max_batch
        for start in range(0, len(readings), step):
            batch = readings[start : start + step]
            self._counters.readings += len(batch)  # counted when handed over, as in Modbus
            await sink(batch)

    async def _publish_outgoing(self, client: aiomqtt.Client) -> None:
        """Publish what the decoders asked for (Sparkplug rebirth requests), at QoS 0: a lost
        request is asked again at the next unknown alias or gap."""
        for route in self._routes:
            if not route.outgoing:
                continue
            outgoing, route.outgoing = route.outgoing, []
            for topic, payload in outgoing:
                _log.info("%s: publishing %s", self.name, topic)
                await client.publish(topic, payload, qos=0)


def _refused(code: object) -> bool:
    value = code.value if isinstance(code, ReasonCode) else code
    return not isinstance(value, int) or value >= 0x80


def _translate(exc: Exception) -> ConnectError:
    """aiomqtt errors as ours: refused credentials are a `SecurityError`."""
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, aiomqtt.MqttCodeError):
        code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        if isinstance(exc, MqttConnectError) and code in _CONNACK_AUTH_FAILURES:
            return SecurityError(f"broker refused the credentials: {exc}")
    return ConnectError(f"MQTT link failed: {exc}")


def _skew_us(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1_000_000)
