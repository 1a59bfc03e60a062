"""The `north:` section: publishers that read the outbox besides the cloud uplink.

north:
  sparkplug:
    url: mqtt://127.0.0.1:1883
    group_id: plant1
    edge_node_id: gw-01
    primary_host_id: scada     # optional: publish only while this host is online
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from edge.assets import check_template
from protocols.sparkplug.topic import check_id

SPARKPLUG_CONSUMER = "sparkplug"
"""The Sparkplug publisher's name as an outbox consumer."""

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class _Broker(BaseModel):
    """An MQTT broker's URL, ``mqtt://host:port`` or ``mqtts://host:port``."""

    model_config = _FROZEN

    url: str

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{value!r}: write mqtt://host:port or mqtts://host:port")
        try:
            parts.port  # noqa: B018 - raises for a bad port
        except ValueError as exc:
            raise ValueError(f"{value!r}: bad port") from exc
        return value

    @property
    def host(self) -> str:
        """The broker's host name."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The broker's port (1883, or 8883 for mqtts, when the URL names none)."""
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        """True for ``mqtts://``."""
        return urlsplit(self.url).scheme == "mqtts"


class SparkplugNorth(_Broker):
    """The gateway as a Sparkplug B 3.0 edge node.

    Args:
        url: the MQTT broker, ``mqtt://host:port`` (or ``mqtts://``).
        group_id / edge_node_id: the node's topic levels, ``spBv1.0/<group_id>/.../<edge_node_id>``.
        primary_host_id: publish only while this host's STATE says online; meanwhile readings
            wait in the outbox and go out afterwards marked historical.
        username / password: broker credentials, if it wants them.
        client_id: the MQTT client id (default ``<group_id>-<edge_node_id>``).
        data_qos: QoS of DDATA. Sparkplug 3.0 asks for 0; 1 makes the broker confirm each
            message before the outbox forgets it (nothing lost in a broker disconnect).
        keepalive_s: MQTT keepalive.
        reconnect_base_s / reconnect_cap_s: the jittered backoff between connection attempts.
        max_chunks: outbox chunks published per round (each becomes one DDATA per device).
        command_ttl_s: a DCMD stamped longer ago than this is refused, never run.
    """

    model_config = _FROZEN

    group_id: str
    edge_node_id: str
    primary_host_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    data_qos: Literal[0, 1] = 0
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_base_s: float = Field(default=0.5, gt=0)
    reconnect_cap_s: float = Field(default=30.0, gt=0)
    max_chunks: int = Field(default=8, ge=1, le=1000)
    command_ttl_s: float = Field(default=60.0, gt=0)

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _topic_level(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, field="id")


class UnsNorth(_Broker):
    """The plain-JSON Unified Namespace publisher: the latest value of every tag, retained, at
    ``<uns path>/<device>/<tag>`` (the device's ISA-95 `path`, see `edge.assets`), by exception.

    Args:
        url: the MQTT broker, ``mqtt://host:port`` (or ``mqtts://``).
        topic_template: where a tag goes; fields ``{path}``, ``{device}``, ``{tag}`` and the
            level names ``{enterprise}`` ``{site}`` ``{area}`` ``{line}`` ``{cell}``.
        qos: of every message (retained).
        interval_s: how often changed values are published.
        username / password / client_id: as the broker wants them.
    """

    model_config = _FROZEN

    topic_template: str = "{path}/{device}/{tag}"
    qos: Literal[0, 1] = 1
    interval_s: float = Field(default=1.0, gt=0, le=3600)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    reconnect_base_s: float = Field(default=0.5, gt=0)
    reconnect_cap_s: float = Field(default=30.0, gt=0)

    @field_validator("topic_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)


class NorthSection(BaseModel):
    """Publishers besides the cloud uplink (each an outbox consumer of its own)."""

    model_config = _FROZEN

    sparkplug: SparkplugNorth | None = None
    uns: UnsNorth | None = None

    @property
    def consumers(self) -> tuple[str, ...]:
        """The outbox consumers these publishers need."""
        return (SPARKPLUG_CONSUMER,) if self.sparkplug is not None else ()
