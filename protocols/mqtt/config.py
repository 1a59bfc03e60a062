"""Typed, frozen configuration of the MQTT part: the embedded broker and the subscriber.

Validation happens here, once, at the file boundary; every error names the field and the value.
After this module only frozen objects travel.

Topic patterns: a subscription's `topic` is an MQTT filter (``plant/+/telemetry``) or a pattern
whose whole levels may be ``{device}`` and ``{tag}`` placeholders (``plant/{device}/telemetry``);
each placeholder subscribes as ``+`` and names the device (or tag) from that level of the topic.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)

DEVICE_PLACEHOLDER: Final = "{device}"
TAG_PLACEHOLDER: Final = "{tag}"
USERNAME_PLACEHOLDER: Final = "{username}"
_PLACEHOLDERS: Final = (DEVICE_PLACEHOLDER, TAG_PLACEHOLDER)
_DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def check_topic_filter(value: str, *, field: str, wildcards: bool = True) -> str:
    """Raise `ValueError` naming `field` unless `value` is a valid MQTT topic filter (or name)."""
    if not value or len(value.encode()) > 65_535 or "\x00" in value:
        raise ValueError(f"{field}: {value!r} is not a valid MQTT topic")
    levels = value.split("/")
    for index, level in enumerate(levels):
        if level in ("+", "#") and not wildcards:
            raise ValueError(f"{field}: {value!r} may not contain wildcards")
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"{field}: {value!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"{field}: {value!r}: '+' must be a whole level")
    return value


class BrokerUser(BaseModel):
    """One account on the embedded broker, usually one per device.

    Args:
        username: the MQTT username (the device name by convention).
        password_hash: an Argon2 hash (`protocols.mqtt.broker.hash_password`), the format of
            amqtt's password file; the plain password is never stored.
        publish: topic filters this user may publish to; ``{username}`` expands to the username.
        subscribe: topic filters this user may subscribe to (a subscription must lie inside one).
    """

    model_config = _FROZEN

    username: Annotated[str, Field(min_length=1, max_length=128)]
    password_hash: str
    publish: tuple[str, ...] = (f"plant/{USERNAME_PLACEHOLDER}/#",)
    subscribe: tuple[str, ...] = ()

    @field_validator("password_hash")
    @classmethod
    def _argon2_only(cls, value: str) -> str:
        if not value.startswith("$argon2"):
            raise ValueError(
                "password_hash: expected an Argon2 hash ($argon2id$...), not a password"
            )
        return value

    @field_validator("publish", "subscribe")
    @classmethod
    def _filters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for topic in value:
            check_topic_filter(topic.replace(USERNAME_PLACEHOLDER, "u"), field="acl")
        return value

    def acl(self, action: Literal["publish", "subscribe"]) -> tuple[str, ...]:
        """The filters of `action` with ``{username}`` expanded."""
        filters = self.publish if action == "publish" else self.subscribe
        return tuple(f.replace(USERNAME_PLACEHOLDER, self.username) for f in filters)


class BrokerTls(BaseModel):
    """The broker's TLS certificate and key (PEM files)."""

    model_config = _FROZEN

    cert_file: FilePath
    key_file: FilePath


class EmbeddedBrokerConfig(BaseModel):
    """The MQTT broker the gateway hosts for local devices.

    Args:
        host: the address to bind (loopback by default; a plant network address in production).
        port: the TCP port; 0 lets the OS choose (the broker reports the bound port).
        users: per-device accounts with their ACLs; anonymous clients are always refused.
        session_expiry_s: how long a disconnected persistent session is kept before it is freed.
        tls: serve MQTT over TLS with this certificate, if given.
        max_message_bytes: a larger packet closes the sender's connection (MQTT 5 "packet too
            large" behaviour; MQTT 3.1.1 cannot refuse a single message).
        max_connections: concurrent client connections accepted.
    """

    model_config = _FROZEN

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65_535)] = 1883
    users: tuple[BrokerUser, ...] = ()
    session_expiry_s: Annotated[int, Field(gt=0)] = 3600
    tls: BrokerTls | None = None
    max_message_bytes: Annotated[int, Field(ge=64, le=268_435_455)] = 256 * 1024
    max_connections: Annotated[int, Field(gt=0)] = 1000

    @field_validator("users")
    @classmethod
    def _unique_users(cls, value: tuple[BrokerUser, ...]) -> tuple[BrokerUser, ...]:
        seen: set[str] = set()
        for user in value:
            if user.username in seen:
                raise ValueError(f"users: username {user.username!r} appears twice")
            seen.add(user.username)
        return value


class ValueType(StrEnum):
    """The type a decoded value is converted to."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    STR = "str"


class TimestampFormat(StrEnum):
    """How a payload's timestamp is written."""

    EPOCH_S = "epoch_s"
    EPOCH_MS = "epoch_ms"
    EPOCH_US = "epoch_us"
    EPOCH_NS = "epoch_ns"
    ISO8601 = "iso8601"


TS_UNITS: Final = {
    "s": TimestampFormat.EPOCH_S,
    "ms": TimestampFormat.EPOCH_MS,
    "us": TimestampFormat.EPOCH_US,
    "ns": TimestampFormat.EPOCH_NS,
}
"""`ts_unit` as the `TimestampFormat` it means."""


class JsonField(BaseModel):
    """One value picked from a JSON sample by a dotted path (``"data.temp"``, ``"arr.0"``)."""

    model_config = _FROZEN

    tag: Annotated[str, Field(min_length=1)]
    path: Annotated[str, Field(min_length=1)]
    type: ValueType | None = None  # None keeps the JSON type (number, bool or string)
    unit: str | None = None


class JsonDecoder(BaseModel):
    """JSON payloads. The defaults decode the firmware_sim format:
    ``{"ts": <ms>, "values": {"<tag>": v, ...}, "simulated": true}`` and
    ``{"samples": [{"ts": ..., "values": {...}}, ...]}``.

    Args:
        timestamp: ``payload`` (the sample's own timestamp, at `timestamp_path`) or
            ``gateway`` (the receive time; for devices whose clock cannot be trusted).
        timestamp_path: where each sample's timestamp is; None uses the receive time.
        ts_unit: the unit of a numeric timestamp: ``s``, ``ms`` (the default), ``us`` or ``ns``.
        timestamp_format: the same as a format name (``epoch_s`` ... ``epoch_ns``), or
            ``iso8601`` for ISO-8601 strings with a zone; set `ts_unit` or this, not both.
        timestamps: per tag, ``payload`` or ``gateway`` where a tag differs from `timestamp`.
        values_path: an object whose every key is a tag; None to use `fields` only.
        fields: explicit values by path, with their own type and unit.
        units: unit per tag for the `values_path` object.
        types: type per tag for the `values_path` object.
        samples_path: an array of samples in one message; each is decoded like a message.
        simulated_path: a boolean that marks the readings simulated.
    """

    model_config = _FROZEN

    kind: Literal["json"] = "json"
    timestamp: Literal["payload", "gateway"] = "payload"
    timestamp_path: str | None = "ts"
    ts_unit: Literal["s", "ms", "us", "ns"] | None = None
    timestamp_format: TimestampFormat = TimestampFormat.EPOCH_MS
    timestamps: dict[str, Literal["payload", "gateway"]] = Field(default_factory=dict)
    values_path: str | None = "values"
    fields: tuple[JsonField, ...] = ()
    units: dict[str, str] = Field(default_factory=dict)
    types: dict[str, ValueType] = Field(default_factory=dict)
    samples_path: str | None = "samples"
    simulated_path: str | None = "simulated"

    @model_validator(mode="after")
    def _something_to_read(self) -> JsonDecoder:
        if self.values_path is None and not self.fields:
            raise ValueError("decoder: set values_path or at least one entry in fields")
        return self

    @model_validator(mode="after")
    def _one_timestamp_unit(self) -> JsonDecoder:
        if self.ts_unit is None:
            return self
        if "timestamp_format" in self.model_fields_set:
            raise ValueError(
                f"ts_unit {self.ts_unit!r} and timestamp_format "
                f"{self.timestamp_format.value!r} both set the timestamp's unit; keep one"
            )
        return self

    @property
    def epoch_format(self) -> TimestampFormat:
        """How the timestamp is written, `ts_unit` taken into account."""
        return TS_UNITS[self.ts_unit] if self.ts_unit is not None else self.timestamp_format

    @property
    def reads_payload_time(self) -> bool:
        """Whether any reading takes the payload's timestamp (the decoder's or a tag's choice)."""
        if self.timestamp_path is None:
            return False
        return self.timestamp == "payload" or "payload" in self.timestamps.values()


class RawDecoder(BaseModel):
    """A bare value as the whole payload (``b"21.5"``, ``b"true"``), timestamped on receipt.

    Args:
        tag: the tag name; None takes it from the ``{tag}`` level of the topic.
        type: the value's type; None guesses int, then float, then bool (true/false).
        unit: the engineering unit.
    """

    model_config = _FROZEN

    kind: Literal["raw"] = "raw"
    tag: str | None = None
    type: ValueType | None = None
    unit: str | None = None


class SparkplugDecoder(BaseModel):
    """Sparkplug B births, data and deaths of other edge nodes (`protocols.sparkplug.host`).

    The subscription's topic is ``spBv1.0/<group>/#``; readings name their device
    ``<edge node>`` or ``<edge node>/<device>`` and their tag the metric name.

    Args:
        rebirth_interval_s: the least time between two rebirth requests (NCMD) to one node.
        request_rebirth: ask a node for a rebirth on an unknown alias or a ``seq`` gap; off
            for a read-only account that may not publish.
    """

    model_config = _FROZEN

    kind: Literal["sparkplug_b"] = "sparkplug_b"
    rebirth_interval_s: Annotated[float, Field(gt=0)] = 5.0
    request_rebirth: bool = True


Decoder = Annotated[JsonDecoder | RawDecoder | SparkplugDecoder, Field(discriminator="kind")]
_SPARKPLUG_NAMESPACE: Final = "spBv1.0"


class MqttSubscription(BaseModel):
    """A topic filter and how to turn its messages into readings.

    Args:
        topic: a filter, or a pattern with whole-level ``{device}`` / ``{tag}`` placeholders.
        device: a fixed device name, when the topic has no ``{device}`` level.
        decoder: JSON with a field mapping (the default), raw, or Sparkplug B; the kind
            alone (``decoder: sparkplug_b``) takes that decoder's defaults.
    """

    model_config = _FROZEN

    topic: str
    device: str | None = None
    decoder: Decoder = Field(default_factory=JsonDecoder)

    @field_validator("topic")
    @classmethod
    def _pattern(cls, value: str) -> str:
        levels = value.split("/")
        for placeholder in _PLACEHOLDERS:
            if value.count(placeholder) > 1:
                raise ValueError(f"topic: {value!r} has {placeholder} more than once")
            if placeholder in value and placeholder not in levels:
                raise ValueError(f"topic: {value!r}: {placeholder} must be a whole level")
        if "{" in value.replace(DEVICE_PLACEHOLDER, "").replace(TAG_PLACEHOLDER, ""):
            raise ValueError(f"topic: {value!r}: only {{device}} and {{tag}} are placeholders")
        return check_topic_filter(value, field="topic")

    @field_validator("decoder", mode="before")
    @classmethod
    def _kind_alone(cls, value: object) -> object:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _device_named_once(self) -> MqttSubscription:
        if isinstance(self.decoder, SparkplugDecoder):
            return self._sparkplug_topic()
        in_topic = DEVICE_PLACEHOLDER in self.topic
        if in_topic == (self.device is not None):
            raise ValueError(
                f"device: {self.topic!r} needs exactly one of a {{device}} level or a fixed device"
            )
        decoder = self.decoder
        if (
            isinstance(decoder, RawDecoder)
            and decoder.tag is None
            and TAG_PLACEHOLDER not in self.topic
        ):
            raise ValueError(f"decoder.tag: raw {self.topic!r} needs a tag or a {{tag}} level")
        return self

    def _sparkplug_topic(self) -> MqttSubscription:
        levels = self.topic.split("/")
        group = levels[1] if len(levels) == 3 else ""
        if levels[0] != _SPARKPLUG_NAMESPACE or levels[-1] != "#" or group in ("", "+", "#"):
            raise ValueError(
                f"topic: {self.topic!r}: a sparkplug_b subscription is "
                f"'{_SPARKPLUG_NAMESPACE}/<group>/#'"
            )
        if self.device is not None:
            raise ValueError("device: sparkplug_b names devices from the topic; remove device")
        return self

    @property
    def sparkplug_group(self) -> str | None:
        """The Sparkplug group id of a ``sparkplug_b`` subscription, else None."""
        if not isinstance(self.decoder, SparkplugDecoder):
            return None
        return self.topic.split("/")[1]

    @property
    def topic_filter(self) -> str:
        """The filter sent in SUBSCRIBE: placeholders become ``+``."""
        return self.topic.replace(DEVICE_PLACEHOLDER, "+").replace(TAG_PLACEHOLDER, "+")

    def level_of(self, placeholder: str) -> int | None:
        """The topic level index that holds `placeholder`, or None."""
        levels = self.topic.split("/")
        return levels.index(placeholder) if placeholder in levels else None


class MqttSourceConfig(BaseModel):
    """One MQTT broker the gateway subscribes to (its own embedded broker or an external one).

    Args:
        name: the driver's name (shown in the TUI; readings carry the device from the topic).
        url: ``mqtt://host:port`` or ``mqtts://host:port``.
        username: MQTT username, if the broker wants one.
        password: MQTT password.
        client_id: the client identifier; defaults to ``tagway-<name>``.
        clean_session: False keeps the session (and QoS 1 messages) on the broker across
            reconnects, so a short outage of the link loses nothing.
        qos: the QoS of every subscription.
        subscriptions: the filters and their decoders; the first match wins.
        max_payload_bytes: larger payloads are dead-lettered unread.
        max_future_skew_s: a sample stamped further ahead of the gateway clock is dead-lettered;
            unset (the default), the gateway's `clock` window and the device's `clock_fault`
            decide (restamp, keep or bad), as for every other device.
        simulated: mark every reading simulated (a payload's ``simulated`` flag also does).
        ca_file: CA bundle to verify an ``mqtts://`` broker; None uses the system store.
        keepalive_s: MQTT keep-alive; a dead link is noticed within about 1.5x this.
        timeout_s: how long to wait for CONNACK and SUBACK before giving up on a connection.
        reconnect_base_s: the first reconnect delay's upper bound.
        reconnect_cap_s: the largest reconnect delay.
        max_batch: the most readings handed to the sink in one call.
        max_queued_messages: messages held between the socket and the sink; past this, messages
            are dropped and counted in ``counters.dropped``.
    """

    model_config = _FROZEN

    name: Annotated[str, Field(min_length=1)]
    url: str
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    clean_session: bool = False
    qos: Literal[0, 1, 2] = 1
    subscriptions: Annotated[tuple[MqttSubscription, ...], Field(min_length=1)]
    max_payload_bytes: Annotated[int, Field(gt=0)] = 256 * 1024
    max_future_skew_s: Annotated[float, Field(ge=0)] | None = None
    simulated: bool = False
    ca_file: FilePath | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=65_535)] = 30
    timeout_s: Annotated[float, Field(gt=0)] = 10.0
    reconnect_base_s: Annotated[float, Field(gt=0)] = 0.5
    reconnect_cap_s: Annotated[float, Field(gt=0)] = 30.0
    max_batch: Annotated[int, Field(gt=0)] = 10_000
    max_queued_messages: Annotated[int, Field(gt=0)] = 100_000

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"url: {value!r}: scheme must be mqtt:// or mqtts://")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"url: {value!r}: bad port") from exc
        if not parts.hostname or (port is not None and port == 0):
            raise ValueError(f"url: {value!r}: needs a host and a non-zero port")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(f"url: {value!r}: no path, query or credentials in the URL")
        return value

    @model_validator(mode="after")
    def _reconnect_bounds(self) -> MqttSourceConfig:
        if self.reconnect_base_s > self.reconnect_cap_s:
            raise ValueError("reconnect_base_s: must not exceed reconnect_cap_s")
        return self

    @property
    def host(self) -> str:
        """The broker's host name or address."""
        return urlsplit(self.url).hostname or ""  # the validator refused URLs without a host

    @property
    def port(self) -> int:
        """The broker's port (1883 for mqtt://, 8883 for mqtts:// unless given)."""
        parts = urlsplit(self.url)
        return parts.port or _DEFAULT_PORTS[parts.scheme]

    @property
    def tls(self) -> bool:
        """True for ``mqtts://``."""
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def identifier(self) -> str:
        """The MQTT client id."""
        return self.client_id or f"tagway-{self.name}"


__all__ = [
    "BrokerTls",
    "BrokerUser",
    "EmbeddedBrokerConfig",
    "JsonDecoder",
    "JsonField",
    "MqttSourceConfig",
    "MqttSubscription",
    "RawDecoder",
    "SparkplugDecoder",
    "TimestampFormat",
    "ValueType",
    "check_topic_filter",
]
