"""The plain-JSON Unified Namespace publisher: every tag's latest value, retained, by exception.

Every `interval_s` it walks the latest-value cache and publishes the tags whose value or quality
changed since it last published them, to the topic the template gives (by default
``<ISA-95 path>/<device>/<tag>``), retained, as::

    {"value": 42.5, "quality": "good", "ts": "2026-12-03T19:40:00.123456Z", "unit": "m3/h"}

Retained messages are the UNS's state: a client subscribing later gets every tag's latest value
at once. On every new connection everything is published again (a broker restarted without
persistence has lost its retained messages). The UNS holds latest values, not history, so it
reads the cache rather than the outbox: after an outage it needs the present, not the backlog.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiomqtt

from edge.assets import AssetPath, uns_topic
from edge.north.config import UnsNorth
from protocols.backoff import Backoff, BackoffPolicy
from protocols.reading import Quality, Reading, Value

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UnsStatus:
    """What the local API shows about the UNS publisher."""

    connected: bool = False
    published: int = 0
    last_error: str | None = None


def uns_payload(reading: Reading) -> bytes:
    """The JSON document of one tag's latest value."""
    stamp = dt.datetime.fromtimestamp(reading.ts / 1e6, tz=dt.UTC)
    document: dict[str, Value | None] = {
        "value": reading.value, "quality": reading.quality.value,
        "ts": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "unit": reading.unit,
    }  # fmt: skip
    if reading.quality is not Quality.GOOD and reading.reason:
        document["reason"] = reading.reason
    return json.dumps(document, allow_nan=False, default=str).encode()


class UnsPublisher:
    """Publishes the latest-value cache to the UNS. Run `run()` as a task; cancel to stop.

    Args:
        settings: the config's ``north.uns``.
        latest: the readings of the latest-value cache.
        paths: each device's ISA-95 path (devices without one publish under their name).
    """

    def __init__(
        self,
        *,
        settings: UnsNorth,
        latest: Callable[[], list[Reading]],
        paths: Mapping[str, AssetPath],
    ) -> None:
        self.settings = settings
        self.status = UnsStatus()
        self._latest = latest
        self._paths = paths
        self._sent: dict[tuple[str, str], tuple[Value, Quality]] = {}
        self._topics: dict[tuple[str, str], str] = {}

    def topic(self, device: str, tag: str) -> str:
        """The UNS topic of one tag (cached: the template is rendered once per tag)."""
        key = (device, tag)
        topic = self._topics.get(key)
        if topic is None:
            path = self._paths.get(device)
            topic = self._topics[key] = uns_topic(self.settings.topic_template, path, device, tag)
        return topic

    async def run(self) -> None:
        """Connect, publish changes, reconnect with backoff, forever."""
        s = self.settings
        backoff = Backoff(BackoffPolicy(base=s.reconnect_base_s, cap=s.reconnect_cap_s))
        while True:
            client = aiomqtt.Client(
                s.host, s.port, username=s.username,
                password=s.password.get_secret_value() if s.password else None,
                identifier=s.client_id, keepalive=30, timeout=10.0, logger=log,
                tls_context=ssl.create_default_context() if s.tls else None,
            )  # fmt: skip
            started = time.monotonic()
            try:
                async with client:
                    self.status.connected = True
                    self._sent.clear()  # a new connection republishes everything
                    while True:
                        await self.publish_changes(client)
                        await asyncio.sleep(s.interval_s)
            except (aiomqtt.MqttError, OSError) as exc:
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("uns: %s", self.status.last_error)
            finally:
                self.status.connected = False
            if time.monotonic() - started > 60:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    async def publish_changes(self, client: aiomqtt.Client) -> int:
        """Publish every tag whose value or quality changed; returns how many."""
        sent = self._sent
        count = 0
        for reading in self._latest():
            key = (reading.device, reading.tag)
            state = (reading.value, reading.quality)
            if sent.get(key) == state:
                continue
            await client.publish(self.topic(*key), uns_payload(reading),
                                 qos=self.settings.qos, retain=True)  # fmt: skip
            sent[key] = state
            count += 1
        self.status.published += count
        return count
