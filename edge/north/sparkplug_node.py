"""The gateway as a Sparkplug B 3.0 edge node: the outbox's ``sparkplug`` consumer.

One MQTT session at a time (aiomqtt), each with the next ``bdSeq`` and its NDEATH registered as
the will. In a session:

    connect (will: NDEATH bdSeq) → subscribe NCMD, DCMD (and STATE/<primary host>)
      → wait until the primary host is online (at once without one)
      → NBIRTH (seq 0), DBIRTH for every connected device
      → publish rounds: lease chunks from the outbox as consumer ``sparkplug``, one DDATA per
        device per round by alias, ack once the broker has them (below); DBIRTH/DDEATH as
        drivers connect and drop; a full rebirth on NCMD ``Node Control/Rebirth`` or a tag no
        birth declared
      → host offline (or broker gone): NDEATH, disconnect, start again with the next bdSeq

Readings appended before the session's birth (the host or the broker was away) go out with
``is_historical``; the publisher alternates a round of live data (the newest chunks, those
appended since the birth) with a round of backlog (the oldest chunks, oldest first), so a long
backlog never holds live data back. The outbox holds everything meanwhile: nothing is lost while
the host is offline, and the uplink to the cloud never waits for this publisher.

Sparkplug asks for DDATA at QoS 0, which the broker never confirms, and a kill -9 of the agent
discards what the kernel had not yet sent (the socket is reset when it holds unread data). So
before a round's chunks are acked, the node waits for the broker's answer to an UNSUBSCRIBE of a
topic it never subscribed: the broker reads one connection's packets in order, so its UNSUBACK
means every DDATA sent before it has arrived. A kill before that answer republishes the round
after the restart, marked historical; nothing is acked that the broker did not take.

DCMD writes go through the gateway's write door (`edge.writes`: the tag must be writable, the
value inside its limits and its rate; every attempt is audited and reaches the cloud as an
event), exactly like the cloud's commands. Each DCMD is recorded (a digest of its device and
bytes, in the state directory) before it is acted on, so the same command delivered twice runs
once; one older than `command_ttl_s` never runs. Metrics are named by name or by the alias the
birth gave them; the value is read with the birth's datatype when the command omits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import aiomqtt

from edge.chunk import ChunkError, ChunkRow, decode_rows
from edge.north.command_log import CommandLog
from edge.north.config import SPARKPLUG_CONSUMER, SparkplugNorth
from edge.north.sparkplug_metrics import (
    MetricCatalog,
    by_device,
    command_target,
    device_birth,
    device_data,
    device_death,
    node_birth,
    node_death,
)
from edge.writes import WriteOrigin, WriteOutcome
from protocols.backoff import Backoff, BackoffPolicy
from protocols.reading import Reading, Value
from protocols.sparkplug.conventions import REBIRTH
from protocols.sparkplug.payload import DataType, Malformed, decode_payload
from protocols.sparkplug.sequence import SEQ_MODULO, SeqCounter
from protocols.sparkplug.topic import MessageType, StateTopic, Topic, parse_topic
from store_forward import Chunk, Lane, Lease

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.1
_DEVICE_POLL_S = 0.5
_GOODBYE_S = 2.0


class LeaseSource(Protocol):
    """What the publisher needs from the (async) outbox."""

    async def lease(self, *, max_bytes: int, max_chunks: int, newest_first: bool,
                    consumer: str | None) -> Lease: ...  # fmt: skip
    async def ack(self, lease: Lease) -> int: ...
    async def release(self, lease: Lease) -> int: ...


class WritePath(Protocol):
    """The gateway's write door (`edge.writes.WriteDoor`)."""

    async def write(self, device: str, tag: str, value: Value, *,
                    origin: WriteOrigin) -> WriteOutcome: ...  # fmt: skip


class NodeState(StrEnum):
    """Where the edge node is."""

    DISCONNECTED = "disconnected"
    WAITING_FOR_HOST = "waiting_for_host"  # connected; the primary host is offline
    ONLINE = "online"  # born, publishing
    STOPPED = "stopped"


@dataclass(slots=True)
class NodeStatus:
    """What the local API shows about the edge node."""

    state: NodeState = NodeState.DISCONNECTED
    bd_seq: int | None = None
    births: int = 0
    rebirth_commands: int = 0
    messages: int = 0
    readings: int = 0
    historical_readings: int = 0
    refused_commands: int = 0
    written_commands: int = 0
    duplicate_commands: int = 0
    last_error: str | None = None
    refusals: list[str] = field(default_factory=list)


class _HostOffline(Exception):
    """The primary host said it went offline: end the session (NDEATH, disconnect)."""


@dataclass(frozen=True, slots=True)
class NodeInputs:
    """What the node reads from the rest of the agent.

    Args:
        outbox: the durable buffer, read as consumer ``sparkplug``.
        devices: each configured device and whether its driver is connected now.
        latest: the latest reading per (device, tag) (the pipeline's cache), for births.
        datatypes: the configured datatype per (device, tag) (Modbus tag types).
        state_dir: where the node keeps its ``bdSeq`` and the DCMDs it ran, across restarts.
        writes: the write door DCMDs go through; None refuses them.
    """

    outbox: LeaseSource
    devices: Callable[[], Mapping[str, bool]]
    latest: Callable[[], Mapping[tuple[str, str], Reading]]
    datatypes: Mapping[tuple[str, str], DataType]
    state_dir: Path
    writes: WritePath | None = None


class SparkplugNode:
    """The Sparkplug B edge node. Run `run()` as a task; cancel it to stop (NDEATH is sent).

    Args:
        settings: the config's ``north.sparkplug``.
        inputs: the outbox, device states, latest values and configured datatypes.
        clock: wall-clock seconds (births, historical cut-off, timestamps).
    """

    def __init__(
        self,
        *,
        settings: SparkplugNorth,
        inputs: NodeInputs,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.status = NodeStatus()
        self._in = inputs
        self._clock = clock
        self._seq = SeqCounter()
        self._catalog = MetricCatalog.empty(inputs.datatypes)
        self._born: set[str] = set()
        self._host_online = asyncio.Event()
        self._rebirth = asyncio.Event()
        self._birth_time = 0.0
        self._bd_path = inputs.state_dir / "sparkplug_bdseq.json"
        self._commands: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=100)
        self._done = CommandLog(inputs.state_dir / "sparkplug_dcmd.json")
        self._device_of: dict[str, str] = {}  # Sparkplug device id -> tagway device name
        prefix = f"spBv1.0/{settings.group_id}"
        self._node = settings.edge_node_id
        self._prefix = prefix

    def topic(self, kind: MessageType, device: str | None = None) -> str:
        """The topic of this node's (or one of its devices') messages of `kind`. A device name
        that cannot be one topic level (``/``, ``+``, ``#``) goes out with ``_`` in their
        place; DCMDs to that id find the device again."""
        device_id = None
        if device is not None:
            device_id = device_level(device)
            self._device_of[device_id] = device
        return str(Topic(self.settings.group_id, kind, self._node, device_id))

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff, forever."""
        backoff = Backoff(BackoffPolicy(base=self.settings.reconnect_base_s,
                                        cap=self.settings.reconnect_cap_s))  # fmt: skip
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._session()
                except (aiomqtt.MqttError, _HostOffline, OSError) as exc:
                    self.status.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("sparkplug: session ended: %s", self.status.last_error)
                finally:
                    self.status.state = NodeState.DISCONNECTED
                    self._born.clear()
                if time.monotonic() - started > 60:
                    backoff.reset()
                await asyncio.sleep(backoff.next_delay())
        finally:
            self.status.state = NodeState.STOPPED

    async def _session(self) -> None:
        bd_seq = self._next_bd_seq()
        self.status.bd_seq = bd_seq
        will = aiomqtt.Will(self.topic(MessageType.NDEATH),
                            node_death(timestamp_ms=self._ms(), bd_seq=bd_seq), qos=1)  # fmt: skip
        s = self.settings
        client = aiomqtt.Client(
            s.host, s.port, username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            identifier=s.client_id or f"{s.group_id}-{s.edge_node_id}", will=will,
            clean_session=True, keepalive=s.keepalive_s, timeout=10.0,
            tls_context=ssl.create_default_context() if s.tls else None, logger=log,
        )  # fmt: skip
        self._host_online.clear()
        if s.primary_host_id is None:
            self._host_online.set()
        async with client:
            filters = [self.topic(MessageType.NCMD), f"{self._prefix}/DCMD/{self._node}/+"]
            if s.primary_host_id is not None:
                filters.append(str(StateTopic(s.primary_host_id)))
            await client.subscribe([(f, 1) for f in filters])
            self.status.state = NodeState.WAITING_FOR_HOST
            try:
                await self._serve(client, bd_seq)
            except asyncio.CancelledError:
                await self._goodbye(client, bd_seq)  # the agent stops: say so, as the will would
                raise

    async def _serve(self, client: aiomqtt.Client, bd_seq: int) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._listen(client), name="sparkplug:listen")
                group.create_task(self._publish(client, bd_seq), name="sparkplug:publish")
                group.create_task(self._run_commands(), name="sparkplug:dcmd")
        except* _HostOffline as offline:
            await self._goodbye(client, bd_seq)
            raise offline.exceptions[0] from None
        except* aiomqtt.MqttError as lost:
            raise lost.exceptions[0] from None

    async def _goodbye(self, client: aiomqtt.Client, bd_seq: int) -> None:
        """NDEATH before a deliberate disconnect (the will covers the others); bounded, so a
        stopping agent never waits on a broker that does not answer."""
        death = node_death(timestamp_ms=self._ms(), bd_seq=bd_seq)
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(_GOODBYE_S):
                await client.publish(self.topic(MessageType.NDEATH), death, qos=1)

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            parsed = parse_topic(str(message.topic))
            if isinstance(parsed, StateTopic):
                self._host_state(payload)
            elif isinstance(parsed, Topic) and parsed.message_type is MessageType.NCMD:
                self._node_command(payload)
            elif isinstance(parsed, Topic) and parsed.message_type is MessageType.DCMD:
                try:
                    device = self._device_of.get(parsed.device or "", parsed.device or "")
                    self._commands.put_nowait((device, payload))
                except asyncio.QueueFull:
                    self._refuse(f"DCMD to {parsed.device} refused: 100 commands are waiting")

    def _host_state(self, payload: bytes) -> None:
        online = _state_online(payload)
        if online is None:
            log.warning("sparkplug: STATE of %s unreadable: %r", self.settings.primary_host_id,
                        payload[:100])  # fmt: skip
            return
        if online:
            self._host_online.set()
            return
        if self._host_online.is_set():
            self._host_online.clear()
            raise _HostOffline(f"primary host {self.settings.primary_host_id} went offline")

    def _node_command(self, payload: bytes) -> None:
        try:
            metrics = decode_payload(payload).metrics
        except Malformed as exc:
            log.warning("sparkplug: NCMD refused: %s", exc)
            self.status.refused_commands += 1
            return
        if any(m.name == REBIRTH and m.value is True for m in metrics):
            self.status.rebirth_commands += 1
            self._rebirth.set()

    def _refuse(self, reason: str) -> None:
        log.warning("sparkplug: %s", reason)
        self.status.refused_commands += 1
        self.status.refusals = [*self.status.refusals[-9:], reason]

    async def _run_commands(self) -> None:
        """DCMDs one at a time, in arrival order (a write waits for its device)."""
        while True:
            device, payload = await self._commands.get()
            await self._device_command(device, payload)

    async def _device_command(self, device: str, payload: bytes) -> None:
        writes = self._in.writes
        if writes is None:
            self._refuse(f"DCMD to {device} refused: this gateway takes no writes over Sparkplug")
            return
        try:
            command = decode_payload(payload)
        except Malformed as exc:
            self._refuse(f"DCMD to {device} refused: {exc}")
            return
        key = hashlib.sha256(device.encode() + b"\0" + payload).hexdigest()
        if key in self._done:
            self.status.duplicate_commands += 1
            log.info("sparkplug: DCMD to %s received again; it ran once already", device)
            return
        age_s = self._clock() - command.timestamp / 1000 if command.timestamp else 0.0
        if age_s > self.settings.command_ttl_s:
            self._refuse(f"DCMD to {device} refused: it expired ({age_s:.0f} s old, "
                         f"command_ttl_s is {self.settings.command_ttl_s:g})")  # fmt: skip
            return
        self._done.add(key)  # durable before acting: delivered twice, it runs once
        who = f"host {self.settings.primary_host_id or 'unknown'}"
        for metric in command.metrics:
            target = command_target(self._catalog.devices.get(device, {}), device, metric)
            if isinstance(target, str):
                self._refuse(f"DCMD to {device} refused: {target}")
                continue
            tag, value = target
            origin = WriteOrigin(source="sparkplug", who=who)
            outcome = await writes.write(device, tag, value, origin=origin)
            if outcome.written:
                self.status.written_commands += 1
            else:
                self._refuse(f"DCMD {device}.{tag} = {value!r} {outcome.outcome}: {outcome.reason}")

    async def _publish(self, client: aiomqtt.Client, bd_seq: int) -> None:
        await self._host_online.wait()
        await self._birth(client, bd_seq)
        self.status.state = NodeState.ONLINE
        live_round = True
        next_device_check = 0.0
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                # Python 3.11's wait_for (under aiomqtt's publish and unsubscribe) loses a
                # cancellation that arrives as its answer does: honour it here, or the session
                # never ends (the host went offline and no NDEATH ever followed).
                raise asyncio.CancelledError
            if self._rebirth.is_set():
                await self._birth(client, bd_seq)
            if time.monotonic() >= next_device_check:
                await self._follow_devices(client)
                next_device_check = time.monotonic() + _DEVICE_POLL_S
            sent = await self._round(client, bd_seq, live=live_round)
            live_round = not live_round
            if not sent and live_round:  # both kinds of round found nothing
                await asyncio.sleep(_IDLE_POLL_S)

    async def _birth(self, client: aiomqtt.Client, bd_seq: int) -> None:
        """NBIRTH and a DBIRTH for every connected device: a new birth sequence."""
        self._rebirth.clear()
        self._birth_time = self._clock()
        latest = self._in.latest()
        for reading in latest.values():
            self._catalog.declare(reading)
        self._catalog.realias()
        self._seq.birth()
        await client.publish(self.topic(MessageType.NBIRTH),
                             node_birth(timestamp_ms=self._ms(), bd_seq=bd_seq), qos=0)  # fmt: skip
        self.status.births += 1
        self.status.messages += 1
        self._born.clear()
        await self._follow_devices(client)

    async def _follow_devices(self, client: aiomqtt.Client) -> None:
        """DBIRTH for devices that connected (and have declared tags), DDEATH for those that
        dropped."""
        states = self._in.devices()
        for device in sorted(set(self._born) - {d for d, up in states.items() if up}):
            await client.publish(self.topic(MessageType.DDEATH, device),
                                 device_death(seq=self._seq.take(), timestamp_ms=self._ms()),
                                 qos=0)  # fmt: skip
            self._born.discard(device)
            self.status.messages += 1
        for device, up in sorted(states.items()):
            if up and device not in self._born and self._catalog.devices.get(device):
                await self._device_birth(client, device)

    async def _device_birth(self, client: aiomqtt.Client, device: str) -> None:
        latest = self._in.latest()
        tags = self._catalog.devices[device]
        values = {tag: latest[(device, tag)] for tag in tags if (device, tag) in latest}
        await client.publish(self.topic(MessageType.DBIRTH, device),
                             device_birth(tags, values, seq=self._seq.take(),
                                          timestamp_ms=self._ms()), qos=0)  # fmt: skip
        self._born.add(device)
        self.status.messages += 1

    async def _round(self, client: aiomqtt.Client, bd_seq: int, *, live: bool) -> bool:
        """One lease: the newest chunks appended since the birth (`live`), or the oldest ones.
        Returns whether it published anything."""
        lease = await self._in.outbox.lease(
            max_bytes=8 << 20, max_chunks=self.settings.max_chunks, newest_first=live,
            consumer=SPARKPLUG_CONSUMER,
        )  # fmt: skip
        if not lease:
            return False
        chunks = [c for c in lease.chunks if c.created >= self._birth_time] if live else None
        if chunks is not None and not chunks:
            await self._in.outbox.release(lease)  # only backlog: the next round takes it
            return False
        taken = tuple(sorted(chunks if chunks is not None else lease.chunks, key=lambda c: c.id))
        try:
            await self._send(client, bd_seq, taken)
            await self._broker_has_them(client)
        except BaseException:
            await asyncio.shield(self._in.outbox.release(lease))
            raise
        # Acking part of a lease hands the rest back: the lease row goes with the ack.
        await self._in.outbox.ack(Lease(lease.lease_id, taken, lease.deadline, lease.consumer))
        return True

    async def _broker_has_them(self, client: aiomqtt.Client) -> None:
        """Returns once the broker has received everything published before (see the module's
        docstring); at QoS 1 aiomqtt's publish already waited for each PUBACK."""
        if self.settings.data_qos == 0:
            await client.unsubscribe(f"{self.topic(MessageType.NCMD)}/barrier")

    async def _send(self, client: aiomqtt.Client, bd_seq: int, chunks: tuple[Chunk, ...]) -> None:
        live: list[ChunkRow] = []
        history: list[ChunkRow] = []
        for chunk in chunks:
            if chunk.lane is not Lane.TELEMETRY:
                continue  # alarm and event records travel to the cloud only
            try:
                rows = decode_rows(chunk.payload)
            except ChunkError as exc:
                log.error("sparkplug: chunk %d unreadable, skipped: %s", chunk.id, exc)  # noqa: TRY400 - the reason is the message
                continue
            (live if chunk.created >= self._birth_time else history).extend(rows)
        declare = self._catalog.declare_tag
        new = [r for r in (*history, *live) if declare(r[0], r[1], r[3], r[5])]
        if new:
            await self._birth(client, bd_seq)  # a tag no birth declared: rebirth first
        qos = self.settings.data_qos
        for rows, historical in ((history, True), (live, False)):
            for device, items in by_device(rows).items():
                if device not in self._born:
                    # Data of a device whose driver is down now (a backlog after a restart):
                    # born for it, and the next device check declares it dead again.
                    await self._device_birth(client, device)
                payload = device_data(self._catalog.devices[device], items,
                                      seq=self._seq.take(), timestamp_ms=self._ms(),
                                      historical=historical)  # fmt: skip
                await client.publish(self.topic(MessageType.DDATA, device), payload, qos=qos)
                self.status.messages += 1
                self.status.readings += len(items)
                if historical:
                    self.status.historical_readings += len(items)

    def _ms(self) -> int:
        return int(self._clock() * 1000)

    def _next_bd_seq(self) -> int:
        """The next session's bdSeq, kept across restarts (a host tells sessions apart by it)."""
        try:
            last = int(json.loads(self._bd_path.read_text(encoding="utf-8"))["bd_seq"])
        except (OSError, ValueError, KeyError, TypeError):
            last = -1
        value = (last + 1) % SEQ_MODULO
        self._bd_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._bd_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bd_seq": value}), encoding="utf-8")
        tmp.replace(self._bd_path)
        return value


def device_level(name: str) -> str:
    """A device name as one Sparkplug topic level: ``/``, ``+``, ``#`` and NUL become ``_``."""
    return "".join("_" if c in "/+#\x00" else c for c in name) or "_"


def _state_online(payload: bytes) -> bool | None:
    """A host's STATE: Sparkplug 3.0 JSON ``{"online": true, ...}``, or 2.2's ``ONLINE`` /
    ``OFFLINE``; None if it is neither."""
    text = payload.decode("utf-8", errors="replace").strip()
    if text in ("ONLINE", "OFFLINE"):
        return text == "ONLINE"
    try:
        document = json.loads(text)
    except ValueError:
        return None
    online = document.get("online") if isinstance(document, dict) else None
    return online if isinstance(online, bool) else None
