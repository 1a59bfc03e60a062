"""MQTT devices: each simulated device connects to a broker and publishes JSON telemetry.

Topic `<prefix>/<device>/telemetry` (prefix `plant` by default). Payload, one sample:
`{"ts": <epoch ms>, "values": {...}, "simulated": true}`; batched (`batch > 1`):
`{"samples": [{"ts": ..., "values": {...}}, ...], "simulated": true}`.

Faults: a link drop disconnects the device until it ends; slow answers delay each publish;
`mqtt_malformed` publishes a truncated, invalid JSON document; `mqtt_oversize` publishes valid
JSON padded to the requested size; `mqtt_hostile` replaces a share of the messages by random
hostile payloads (`hostile_payload`), counted as kind ``hostile``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiomqtt

from firmware_sim.errors import SimConfigError
from firmware_sim.faults import MqttHostile, MqttMalformed, MqttOversize
from firmware_sim.simulation import PlantModel

log = logging.getLogger(__name__)

_RETRY_S: Final = 0.5


@dataclass(frozen=True)
class BrokerAddress:
    """Where the devices publish: host, port and optional credentials from an MQTT URL."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """Parse `mqtt://[user[:password]@]host[:port]` (also `tcp://`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise SimConfigError(f"MQTT URL must look like mqtt://host:port, got {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or 1883,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class DeviceLink(StrEnum):
    """A device's connection to the broker."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DROPPED = "dropped"


class MqttDevice:
    """One simulated device publishing its telemetry."""

    def __init__(
        self,
        *,
        model: PlantModel,
        device: str,
        broker: BrokerAddress,
        interval_s: float,
        batch: int,
        topic_prefix: str,
    ) -> None:
        """A device that samples every `interval_s` and publishes every `batch` samples."""
        self.model = model
        self.device = device
        self.broker = broker
        self.interval_s = interval_s
        self.batch = batch
        self.topic = f"{topic_prefix}/{device}/telemetry"
        self.state = DeviceLink.CONNECTING
        self.published: Counter[str] = Counter()  # by payload kind: telemetry, malformed, ...
        self._hostile: random.Random | None = None

    async def run(self) -> None:
        """Connect, publish, and reconnect after link drops or broker loss, until cancelled."""
        while True:
            if self.model.faults.link_down(self.device):
                self.state = DeviceLink.DROPPED
                await asyncio.sleep(min(self.interval_s, 0.1))
                continue
            self.state = DeviceLink.CONNECTING
            client = aiomqtt.Client(
                self.broker.host,
                self.broker.port,
                username=self.broker.username,
                password=self.broker.password,
                identifier=f"firmware-sim-{self.device}",
                timeout=5,
            )
            try:
                async with client:
                    self.state = DeviceLink.CONNECTED
                    await self._publish_until_link_drop(client)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT %s: %s; retrying", self.device, exc)
                await asyncio.sleep(_RETRY_S)
            finally:
                _read_disconnect_reason(client)

    async def _publish_until_link_drop(self, client: aiomqtt.Client) -> None:
        samples: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while not self.model.faults.link_down(self.device):
            samples.append(
                {"ts": time.time_ns() // 1_000_000, "values": self.model.reported(self.device)}
            )
            if len(samples) >= self.batch:
                if (delay := self.model.faults.delay_s(self.device)) > 0:
                    await asyncio.sleep(delay)
                kind, payload = self.payload(samples)
                await client.publish(self.topic, payload, qos=0)
                self.published[kind] += 1
                samples = []
            # A fixed rate: the time spent publishing does not stretch the interval.
            deadline = max(deadline + self.interval_s, loop.time())
            await asyncio.sleep(deadline - loop.time())
        self.state = DeviceLink.DROPPED

    def payload(self, samples: list[dict[str, Any]]) -> tuple[str, bytes]:
        """The bytes to publish for `samples`, with any payload fault applied."""
        if len(samples) == 1:
            document: dict[str, Any] = {**samples[0], "simulated": True}
        else:
            document = {"samples": samples, "simulated": True}
        for rec in self.model.faults.for_device(self.device):
            if isinstance(rec.fault, MqttHostile):
                if self._hostile is None:
                    self._hostile = random.Random(rec.fault.seed)  # noqa: S311 - not crypto
                if self._hostile.random() < rec.fault.share:
                    return "hostile", hostile_payload(self._hostile, document)
                continue
            if isinstance(rec.fault, MqttMalformed):
                text = json.dumps(document).encode()
                return "malformed", text[: max(1, len(text) // 2)] + b"\xff}"
            if isinstance(rec.fault, MqttOversize):
                base = len(json.dumps(document)) + len(', "padding": ""')
                document["padding"] = "x" * max(0, rec.fault.size - base)
                return "oversize", json.dumps(document).encode()
        return "telemetry", json.dumps(document).encode()


def hostile_payload(rng: random.Random, document: dict[str, Any]) -> bytes:
    """One random payload a gateway must refuse (each kind is a dead letter for the default JSON
    decoder): what a broken or malicious device sends."""
    ts = document.get("ts", time.time_ns() // 1_000_000)

    def doc(value: object) -> bytes:
        return json.dumps(value).encode()

    makers = (
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) + b"\xff",
        lambda: doc(document)[: rng.randrange(1, len(doc(document)))],  # truncated
        lambda: b"[" * rng.choice((5_000, 100_000)),  # nested too deeply to parse
        lambda: b'{"values": ' * rng.randrange(1_000, 20_000),
        lambda: doc({"ts": ts, "values": {"flow": 0}}).replace(b": 0}", b": NaN}"),
        lambda: doc({"ts": ts, "values": {"": 1.0}}),  # empty tag name
        lambda: doc({"ts": ts, "values": {"t" * rng.randrange(201, 20_000): 1.0}}),
        lambda: doc({"ts": ts + 86_400_000, "values": {"flow": 1.0}}),  # a day ahead
        lambda: doc({"values": {"flow": 1.0}}),  # no timestamp
        lambda: doc([ts, {"flow": 1.0}]),  # not an object
        lambda: doc({"ts": ts, "values": {"flow": [1, {"a": None}]}}),  # not a scalar
        lambda: doc({"ts": "yesterday", "values": {"flow": 1.0}}),
    )
    return rng.choice(makers)()


def _read_disconnect_reason(client: aiomqtt.Client) -> None:
    """Mark a lost connection's reason as seen.

    aiomqtt 2.5 keeps why the broker went away in a future that its `__aexit__` never reads
    when the device is stopped while waiting between publishes (the broker stopped first, as
    when the demo stops its agent); asyncio then logs "Future exception was never retrieved"
    for every device. The loop above already handles the loss, so reading it here is enough.
    """
    disconnected = getattr(client, "_disconnected", None)
    if not isinstance(disconnected, asyncio.Future) or not disconnected.done():
        return
    if not disconnected.cancelled():
        disconnected.exception()


class MqttPlantDevices:
    """Every device of the plant as an MQTT publisher."""

    def __init__(
        self,
        *,
        model: PlantModel,
        url: str,
        interval_s: float = 1.0,
        batch: int = 1,
        topic_prefix: str = "plant",
    ) -> None:
        """Devices publishing to the broker at `url` (see `BrokerAddress.from_url`)."""
        self.broker = BrokerAddress.from_url(url)
        self.devices = {
            name: MqttDevice(
                model=model,
                device=name,
                broker=self.broker,
                interval_s=interval_s,
                batch=batch,
                topic_prefix=topic_prefix,
            )
            for name in model.devices
        }

    async def run(self) -> None:
        """Run every device until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for name, device in self.devices.items():
                tasks.create_task(device.run(), name=f"sim-mqtt-{name}")

    def publish_counts(self) -> dict[str, dict[str, int]]:
        """Messages published per device and payload kind."""
        return {name: dict(dev.published) for name, dev in self.devices.items()}
