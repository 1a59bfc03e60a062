"""Pure MQTT payload decoding: topic in, payload in, `list[Reading]` or a `DeadLetter` out.

No I/O and no exceptions out of `Route.decode`: every payload that cannot become readings (not
JSON, wrong types, missing fields, oversize, a timestamp far in the future, NaN) becomes a typed
`DeadLetter` carrying the topic, the reason and the first 256 bytes, which the driver hands to
its dead-letter sink and counts. A message is decoded whole or not at all, so a half-understood
message never passes as complete.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

from protocols.mqtt.config import (
    DEVICE_PLACEHOLDER,
    TAG_PLACEHOLDER,
    JsonDecoder,
    MqttSubscription,
    RawDecoder,
    SparkplugDecoder,
    TimestampFormat,
    ValueType,
)
from protocols.reading import Quality, Reading, Value, datetime_to_us, name_problem

if TYPE_CHECKING:
    from protocols.sparkplug.host import HostSession

HEAD_BYTES: Final = 256
"""How much of a bad payload a dead letter keeps: enough to see what went wrong, bounded."""

_US_PER_UNIT: Final = {
    TimestampFormat.EPOCH_S: 1_000_000,
    TimestampFormat.EPOCH_MS: 1_000,
    TimestampFormat.EPOCH_US: 1,
}
_NS_PER_US: Final = 1_000
_RAW_BOOLS: Final = {"true": True, "false": False}
_PLAIN: Final = frozenset({int, str, bool})
_GOOD: Final = Quality.GOOD


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be turned into readings.

    Attributes:
        topic: the topic it arrived on.
        reason: why it was refused, naming the field (``"values.flow: expected float, got str"``).
        head: the first `HEAD_BYTES` bytes of the payload.
        size: the payload's full length in bytes.
        received_us: when the gateway received it (microseconds since the epoch).
        device: the device resolved from the topic, if it could be.
    """

    topic: str
    reason: str
    head: bytes
    size: int
    received_us: int
    device: str | None = None


Decoded = list[Reading] | DeadLetter


class _Refused(Exception):
    """Internal: a payload problem; becomes a `DeadLetter` at the boundary of `Route.decode`."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds a payload must respect.

    Args:
        max_payload_bytes: larger payloads are refused unread.
        max_future_skew_us: a sample stamped further ahead of the receive time is refused; None
            (the default) passes it on for the gateway's clock policy to restamp, keep or mark.
        simulated: every reading is marked simulated.
    """

    max_payload_bytes: int = 256 * 1024
    max_future_skew_us: int | None = None
    simulated: bool = False


class Route:
    """A compiled subscription: matches topics and decodes their payloads.

    Args:
        subscription: the configured subscription.
        limits: payload bounds.
    """

    __slots__ = (
        "_device_level",
        "_host",
        "_levels",
        "_tag_level",
        "decoder",
        "limits",
        "outgoing",
        "subscription",
    )

    def __init__(self, subscription: MqttSubscription, limits: Limits) -> None:
        self.subscription = subscription
        self.decoder = subscription.decoder
        self.limits = limits
        self._levels = tuple(subscription.topic_filter.split("/"))
        self._device_level = subscription.level_of(DEVICE_PLACEHOLDER)
        self._tag_level = subscription.level_of(TAG_PLACEHOLDER)
        self._host: HostSession | None = None
        self.outgoing: list[tuple[str, bytes]] = []
        """Messages this route wants published (Sparkplug rebirth requests); the driver
        takes them after each delivery."""
        if isinstance(self.decoder, SparkplugDecoder):
            # protobuf is loaded only by configs that read Sparkplug B.
            from protocols.sparkplug.host import HostSession  # noqa: PLC0415

            self._host = HostSession(
                group=subscription.sparkplug_group or "",
                simulated=limits.simulated,
                rebirth_interval_us=round(self.decoder.rebirth_interval_s * 1_000_000),
                max_future_skew_us=limits.max_future_skew_us,
            )

    def matches(self, topic: str) -> bool:
        """True if `topic` (a topic name, no wildcards) matches this subscription's filter."""
        return topic_matches(self._levels, topic.split("/"))

    def decode(self, topic: str, payload: bytes, received_us: int) -> Decoded:
        """Decode one message into readings, or a `DeadLetter` saying why not. Never raises."""
        device: str | None = None
        try:
            decoder = self.decoder
            levels = topic.split("/")
            if not isinstance(decoder, SparkplugDecoder):
                device = self._level(levels, self._device_level) or self.subscription.device
                if device is None:
                    raise _Refused("topic has no device level")  # noqa: TRY301 - one exit, below
            if len(payload) > self.limits.max_payload_bytes:
                raise _Refused(  # noqa: TRY301 - one exit, below
                    f"payload of {len(payload)} bytes exceeds max_payload_bytes "
                    f"{self.limits.max_payload_bytes}"
                )
            if isinstance(decoder, SparkplugDecoder) and self._host is not None:
                readings = self._sparkplug(self._host, decoder, topic, payload, received_us)
            elif device is None:
                raise _Refused("topic has no device level")  # noqa: TRY301 - one exit, below
            elif isinstance(decoder, RawDecoder):
                tag = decoder.tag or self._level(levels, self._tag_level) or ""
                readings = [self._raw(decoder, device, tag, payload, received_us)]
            elif isinstance(decoder, JsonDecoder):
                readings = self._json(decoder, device, payload, received_us)
            else:
                raise _Refused(f"no decoder for {topic}")  # noqa: TRY301 - unreachable by config
            _check_names(readings)
            return readings  # noqa: TRY300 - the handlers below end in one dead letter
        except _Refused as exc:
            reason = str(exc.args[0])
            device = exc.args[1] if len(exc.args) > 1 else device
        except Exception as exc:  # noqa: BLE001 - a payload must never crash the driver
            # A bug of ours that a payload can reach: still one dead letter, with the cause.
            reason = f"decoder failed on this payload: {type(exc).__name__}: {exc}"[:500]
        return DeadLetter(
            topic=topic,
            reason=reason,
            head=bytes(payload[:HEAD_BYTES]),
            size=len(payload),
            received_us=received_us,
            device=device,
        )

    def _sparkplug(
        self,
        host: HostSession,
        decoder: SparkplugDecoder,
        topic: str,
        payload: bytes,
        received_us: int,
    ) -> list[Reading]:
        outcome = host.receive(topic, payload, received_us)
        if decoder.request_rebirth:
            self.outgoing += [(rebirth.topic, rebirth.payload) for rebirth in outcome.rebirths]
        if outcome.refused is not None:
            raise _Refused(outcome.refused, outcome.device)
        return outcome.readings

    @staticmethod
    def _level(levels: Sequence[str], index: int | None) -> str | None:
        if index is None:
            return None
        name = levels[index] if index < len(levels) else ""
        if not name:
            raise _Refused(f"topic level {index} (a placeholder) is empty")
        return name

    def _raw(
        self, decoder: RawDecoder, device: str, tag: str, payload: bytes, received_us: int
    ) -> Reading:
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise _Refused(f"payload is not UTF-8: {exc.reason}") from None
        value = _raw_value(text, decoder.type, tag)
        return Reading(
            device, tag, received_us, value, unit=decoder.unit, simulated=self.limits.simulated
        )

    def _json(
        self, decoder: JsonDecoder, device: str, payload: bytes, received_us: int
    ) -> list[Reading]:
        try:
            message = json.loads(payload)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _Refused(f"not JSON: {exc}") from None
        except RecursionError:
            # The parser recurses once per level of [ or {; a few thousand levels fit in a
            # small payload and would otherwise crash the driver.
            raise _Refused(
                "not JSON this gateway accepts: arrays or objects nested too deeply to parse"
            ) from None
        if not isinstance(message, dict):
            raise _Refused(f"expected a JSON object, got {_json_type(message)}")
        simulated = self.limits.simulated or _flag(message, decoder.simulated_path)
        samples = _lookup(message, decoder.samples_path) if decoder.samples_path else None
        if samples is _MISSING:
            return self._sample(
                decoder, device, message, simulated=simulated, received_us=received_us, where=""
            )
        if not isinstance(samples, list):
            raise _Refused(f"{decoder.samples_path}: expected an array, got {_json_type(samples)}")
        readings: list[Reading] = []
        for index, sample in enumerate(samples):
            where = f"{decoder.samples_path}.{index}."
            if not isinstance(sample, dict):
                raise _Refused(f"{where[:-1]}: expected an object, got {_json_type(sample)}")
            sample_simulated = simulated or _flag(sample, decoder.simulated_path)
            readings += self._sample(
                decoder,
                device,
                sample,
                simulated=sample_simulated,
                received_us=received_us,
                where=where,
            )
        return readings

    def _sample(
        self,
        decoder: JsonDecoder,
        device: str,
        sample: dict[str, object],
        *,
        simulated: bool,
        received_us: int,
        where: str,
    ) -> list[Reading]:
        ts = payload_ts = received_us
        if decoder.reads_payload_time:
            payload_ts = self._timestamp(sample, decoder, received_us, where)
            if decoder.timestamp == "payload":
                ts = payload_ts
        readings: list[Reading] = []
        if decoder.values_path is not None:
            values = _require(sample, decoder.values_path, where)
            if not isinstance(values, dict):
                raise _Refused(
                    f"{where}{decoder.values_path}: expected an object, got {_json_type(values)}"
                )
            types, units = decoder.types, decoder.units
            prefix = f"{where}{decoder.values_path}."
            for tag, raw in values.items():
                # Fast path for the common case, measured in tests/bench/bench_mqtt.py: an
                # untyped int/str/bool or a finite float (x - x is NaN for NaN and inf).
                kind = type(raw)
                if tag not in types and (kind in _PLAIN or (kind is float and raw - raw == 0.0)):
                    value: Value = raw
                else:
                    value = _convert(raw, types.get(tag), prefix + tag)
                readings.append(Reading(device, tag, ts, value, _GOOD, units.get(tag), simulated))
        for field in decoder.fields:
            raw = _require(sample, field.path, where)
            value = _convert(raw, field.type, f"{where}{field.path}")
            readings.append(
                Reading(device, field.tag, ts, value, unit=field.unit, simulated=simulated)
            )
        if decoder.timestamps:  # tags that take the other clock than the decoder's
            clocks = {"payload": payload_ts, "gateway": received_us}
            own = decoder.timestamps
            readings = [r._replace(ts=clocks[own[r.tag]]) if r.tag in own else r for r in readings]
        return readings

    def _timestamp(
        self, sample: dict[str, object], decoder: JsonDecoder, received_us: int, where: str
    ) -> int:
        path = f"{where}{decoder.timestamp_path}"
        raw = _require(sample, decoder.timestamp_path or "", where)
        ts = _timestamp_us(raw, decoder.epoch_format, path)
        if ts < 0:
            raise _Refused(f"{path}: timestamp {raw!r} is before 1970")
        skew = ts - received_us
        limit = self.limits.max_future_skew_us
        if limit is not None and skew > limit:
            raise _Refused(
                f"{path}: timestamp {raw!r} is {skew / 1e6:.0f} s in the future "
                f"(max_future_skew_s {limit / 1e6:g})"
            )
        return ts


def _check_names(readings: list[Reading]) -> None:
    """Refuse the message if a device or tag name could never be stored (empty, too long, NUL):
    the cloud would refuse the whole batch holding it."""
    seen: set[str] = set()
    for reading in readings:
        for kind, name in (("device", reading.device), ("tag", reading.tag)):
            if name in seen:
                continue
            problem = name_problem(name)
            if problem is not None:
                raise _Refused(f"{kind} name {name[:40]!r} {problem}")
            seen.add(name)


def topic_matches(filter_levels: Sequence[str], topic_levels: Sequence[str]) -> bool:
    """MQTT 3.1.1 section 4.7 matching of a topic name against a filter, both split on ``/``."""
    if topic_levels and topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]: wildcards at the first level do not match $ topics
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level != "+" and level != topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


class _Missing:
    """Sentinel type: a path that does not exist (distinct from a JSON null)."""


_MISSING: Final = _Missing()


def _lookup(node: object, path: str) -> object:
    """Follow a dotted path (``"a.b.0"``) through objects and arrays; `_MISSING` if absent."""
    for key in path.split("."):
        if isinstance(node, dict):
            node = node.get(key, _MISSING)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return _MISSING
        if node is _MISSING:
            return node
    return node


def _require(node: object, path: str, where: str) -> object:
    found = _lookup(node, path)
    if found is _MISSING:
        raise _Refused(f"{where}{path}: missing")
    return found


def _flag(message: dict[str, object], path: str | None) -> bool:
    if path is None:
        return False
    found = _lookup(message, path)
    if found is _MISSING:
        return False
    if not isinstance(found, bool):
        raise _Refused(f"{path}: expected true or false, got {_json_type(found)}")
    return found


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise _Refused(f"{where}: {value!r} is not a finite number")
    return value


def _convert(raw: object, wanted: ValueType | None, where: str) -> Value:  # noqa: PLR0911 - one exit per accepted JSON type reads clearer than a table
    """Check and convert one JSON value to `wanted` (None keeps number, bool or string)."""
    is_number = isinstance(raw, int | float) and not isinstance(raw, bool)
    if wanted is None:
        if isinstance(raw, bool | str | int):
            return raw
        if isinstance(raw, float):
            return _finite(raw, where)
    elif wanted is ValueType.FLOAT and is_number:
        try:
            return _finite(float(raw), where)  # type: ignore[arg-type]
        except OverflowError:
            raise _Refused(f"{where}: {raw!r} does not fit a float") from None
    elif wanted is ValueType.INT and is_number:
        if isinstance(raw, int):
            return raw
        if math.isfinite(raw) and float(raw).is_integer():  # type: ignore[arg-type]
            return int(raw)  # type: ignore[call-overload,no-any-return]
        raise _Refused(f"{where}: {raw!r} is not an integer")
    elif wanted is ValueType.BOOL and (isinstance(raw, bool) or raw in (0, 1)):
        return bool(raw)
    elif wanted is ValueType.STR and isinstance(raw, str):
        return raw
    expected = wanted.value if wanted else "number, bool or string"
    raise _Refused(f"{where}: expected {expected}, got {_json_type(raw)}")


def _timestamp_us(raw: object, fmt: TimestampFormat, where: str) -> int:
    if fmt is TimestampFormat.ISO8601:
        if not isinstance(raw, str):
            raise _Refused(f"{where}: expected an ISO-8601 string, got {_json_type(raw)}")
        try:
            return datetime_to_us(datetime.fromisoformat(raw))
        except ValueError as exc:
            raise _Refused(f"{where}: {exc}") from None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Refused(f"{where}: expected a number ({fmt.value}), got {_json_type(raw)}")
    if fmt is TimestampFormat.EPOCH_NS:
        if isinstance(raw, int):
            return raw // _NS_PER_US
        return round(_finite(raw, where) / _NS_PER_US)
    scale = _US_PER_UNIT[fmt]
    if isinstance(raw, int):
        return raw * scale
    return round(_finite(_finite(raw, where) * scale, where))


def _raw_value(text: str, wanted: ValueType | None, tag: str) -> Value:
    where = f"payload ({tag})"
    if wanted is ValueType.STR:
        return text
    if wanted in (None, ValueType.INT):
        try:
            return int(text)
        except ValueError:
            if wanted is ValueType.INT:
                raise _Refused(f"{where}: {text[:40]!r} is not an integer") from None
    if wanted in (None, ValueType.FLOAT):
        try:
            return _finite(float(text), where)
        except ValueError:
            if wanted is ValueType.FLOAT:
                raise _Refused(f"{where}: {text[:40]!r} is not a number") from None
    if text.lower() in _RAW_BOOLS:
        return _RAW_BOOLS[text.lower()]
    expected = wanted.value if wanted else "a number or true/false"
    raise _Refused(f"{where}: {text[:40]!r} is not {expected}")


def compile_routes(subscriptions: Sequence[MqttSubscription], limits: Limits) -> tuple[Route, ...]:
    """Compile subscriptions in order; the first route that matches a topic decodes it."""
    return tuple(Route(subscription, limits) for subscription in subscriptions)


def decode_message(
    routes: Sequence[Route], topic: str, payload: bytes, received_us: int
) -> Decoded:
    """Decode with the first matching route; a topic no route matches is a dead letter."""
    for route in routes:
        if route.matches(topic):
            return route.decode(topic, payload, received_us)
    return DeadLetter(
        topic=topic,
        reason="no subscription matches this topic",
        head=bytes(payload[:HEAD_BYTES]),
        size=len(payload),
        received_us=received_us,
    )
