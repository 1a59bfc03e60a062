"""Property tests: every decoder fed anything a device can send gives readings, a bad reading or
a dead letter (or, for the Modbus codec, its one typed `CodecError`), never another exception.

Bounded example counts run in `make test`; the same properties run far longer under `-m slow`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from asyncua import ua
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import CodecError
from protocols.modbus.codec import RegisterBlockDecoder
from protocols.modbus.config import ModbusTag
from protocols.mqtt.codec import DeadLetter, Limits, compile_routes, decode_message
from protocols.mqtt.config import JsonDecoder, JsonField, MqttSubscription, RawDecoder, ValueType
from protocols.opcua.codec import raw_to_reading, to_reading
from protocols.opcua.wire import RawChange
from protocols.reading import MAX_NAME_CHARS, Quality, Reading

NOW_US = 1_763_800_000_000_000
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck))

ROUTES = compile_routes(
    [
        MqttSubscription(topic="json/{device}/telemetry"),
        MqttSubscription(
            topic="fields/{device}",
            decoder=JsonDecoder(
                timestamp_path=None,
                values_path=None,
                samples_path="samples",
                fields=(
                    JsonField(path="a.b.0", tag="ab", type=ValueType.FLOAT),
                    JsonField(path="n", tag="n", type=ValueType.INT),
                    JsonField(path="on", tag="on", type=ValueType.BOOL),
                    JsonField(path="s", tag="s", type=ValueType.STR),
                ),
            ),
        ),
        MqttSubscription(topic="raw/{device}/{tag}", decoder=RawDecoder()),
        MqttSubscription(topic="rawf/{device}/{tag}", decoder=RawDecoder(type=ValueType.FLOAT)),
        MqttSubscription(topic="rawi/{device}/{tag}", decoder=RawDecoder(type=ValueType.INT)),
        MqttSubscription.model_validate({"topic": "spBv1.0/g1/#", "decoder": "sparkplug_b"}),
    ],
    Limits(max_payload_bytes=1 << 20),
)
TOPICS = st.sampled_from(
    [
        *("json/pump1/telemetry", "fields/pump1", "raw/pump1/level", "rawf/p/t", "rawi/p/t"),
        *("json//telemetry", "raw/pump1/" + "x" * 300, "nowhere/at/all", "raw/\x00/t"),
        *("spBv1.0/g1/NBIRTH/n1", "spBv1.0/g1/NDATA/n1", "spBv1.0/g1/DDATA/n1/d1"),
        *("spBv1.0/g1/DBIRTH/n1/d1", "spBv1.0/g1/NDEATH/n1", "spBv1.0/g1/STATE/x"),
    ]
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text()
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["ts", "values", "samples", "a", "b", "0", "n", "s"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def _deep(depth: int, opener: str) -> bytes:
    return (opener * depth).encode()


payloads = (
    st.binary(max_size=512)
    | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
    | st.builds(
        lambda values, ts: json.dumps({"ts": ts, "values": values}, allow_nan=True).encode(),
        st.dictionaries(st.text(max_size=250), scalars, max_size=4),
        scalars,
    )
    | st.builds(_deep, st.integers(1, 120_000), st.sampled_from(["[", '{"a":', "[{}"]))
    | st.text().map(lambda t: t.encode("utf-8", "surrogatepass"))
)


def _is_reading(reading: object) -> bool:
    if not isinstance(reading, Reading):
        return False
    ok_value = isinstance(reading.value, bool | int | float | str)
    return (
        ok_value
        and isinstance(reading.ts, int)
        and isinstance(reading.quality, Quality)
        and 0 < len(reading.tag) <= MAX_NAME_CHARS
        and 0 < len(reading.device) <= MAX_NAME_CHARS
    )


def check_mqtt(topic: str, payload: bytes) -> None:
    decoded = decode_message(ROUTES, topic, payload, NOW_US)
    if isinstance(decoded, DeadLetter):
        assert decoded.reason
        assert decoded.size == len(payload)
        assert len(decoded.head) <= 256
        return
    assert isinstance(decoded, list)
    assert all(_is_reading(r) for r in decoded), decoded
    for reading in decoded:
        if isinstance(reading.value, float):
            assert math.isfinite(reading.value)


datetimes = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001 - naive, as asyncua may give
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001 - naive, as asyncua may give
) | st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-14))]))
anything = (
    scalars
    | st.binary(max_size=20)
    | datetimes
    | st.lists(st.integers(), max_size=3)
    | st.builds(ua.LocalizedText, st.text(max_size=5) | st.none())
    | st.builds(ua.QualifiedName, st.text(max_size=5) | st.none())
    | st.uuids()
    | st.builds(complex, st.floats(), st.floats())
    | st.builds(object)
    | st.sampled_from([ua.VariantType.Int32, ua.NodeId(5), ua.StatusCode(0)])
)
status_codes = st.none() | st.builds(ua.StatusCode, st.integers(0, 2**32 - 1))


def check_opcua(value: Any, status: ua.StatusCode | None, source: Any, server: Any) -> None:
    variant = ua.Variant()
    variant.Value = value
    dv = ua.DataValue()
    dv.Value = variant
    dv.StatusCode = status
    dv.SourceTimestamp = source
    dv.ServerTimestamp = server
    reading = to_reading("pump1", "flow", dv, NOW_US, None, False)
    assert _is_reading(reading), reading
    if reading.quality is not Quality.BAD:
        assert reading.reason is None or reading.quality is Quality.UNCERTAIN


def check_opcua_raw(value: Any, status: int, source_us: int, server_us: int) -> None:
    change = RawChange(1, value, status, source_us, server_us)
    reading = raw_to_reading("pump1", "flow", change, NOW_US, None, False)
    assert _is_reading(reading), reading


TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"]
ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]


@st.composite
def modbus_blocks(draw: st.DrawFn) -> tuple[RegisterBlockDecoder, bytes]:
    tags: list[ModbusTag] = []
    address = 0
    for i in range(draw(st.integers(1, 8))):
        type_ = draw(st.sampled_from([*TYPES, "bit"]))
        extra: dict[str, Any] = {}
        if type_ == "string":
            extra["length"] = draw(st.integers(1, 4))
        if type_ == "bit":
            extra["bit"] = draw(st.integers(0, 15))
        if draw(st.booleans()) and type_ not in ("string", "bit"):
            extra["scale"] = draw(st.floats(1e-6, 1e6) | st.floats(-1e6, -1e-6))
            extra["offset"] = draw(st.floats(-1e6, 1e6))
        tags.append(
            ModbusTag(
                name=f"t{i}",
                table="holding_register",
                address=address,
                type=type_,
                order=draw(st.sampled_from(ORDERS)),
                **extra,  # type: ignore[arg-type]
            )
        )
        address = tags[-1].end + draw(st.integers(0, 2))
    decoder = RegisterBlockDecoder(0, address, tags)
    size = draw(st.sampled_from([2 * address, 2 * address, draw(st.integers(0, 2 * address + 4))]))
    return decoder, draw(st.binary(min_size=size, max_size=size))


def check_modbus(block: tuple[RegisterBlockDecoder, bytes]) -> None:
    decoder, data = block
    try:
        values = decoder.decode(data)
    except CodecError:
        assert len(data) != decoder.byte_count  # the one refusal: a response of the wrong size
        return
    assert len(values) == len(decoder.tags)
    assert all(isinstance(v, bool | int | float | str) for v in values)


def _both(check: Callable[..., None], **strategies: st.SearchStrategy[Any]) -> tuple[Any, Any]:
    quick = QUICK(given(**strategies)(check))
    long = pytest.mark.slow(LONG(given(**strategies)(check)))
    return quick, long


test_mqtt_decoders, test_mqtt_decoders_long = _both(check_mqtt, topic=TOPICS, payload=payloads)
test_opcua_values, test_opcua_values_long = _both(
    check_opcua,
    value=anything,
    status=status_codes,
    source=st.none() | datetimes,
    server=st.none() | datetimes,
)
test_opcua_raw_values, test_opcua_raw_values_long = _both(
    check_opcua_raw,
    value=st.none() | scalars,
    status=st.integers(0, 2**32 - 1),
    source_us=st.integers(0, 2**63),
    server_us=st.integers(0, 2**63),
)
test_modbus_codec, test_modbus_codec_long = _both(check_modbus, block=modbus_blocks())


def test_known_hostile_examples() -> None:
    """The cases of issue 14, named, so a regression reads as one."""
    check_mqtt("json/pump1/telemetry", b"[" * 100_000)
    check_mqtt("json/pump1/telemetry", b'{"ts": 1, "values": {"v": 1' + b"0" * 400 + b"}}")
    check_mqtt("raw/pump1/level", b"1" + b"0" * 400)
    check_opcua(datetime(1601, 1, 1), None, datetime(1, 1, 1), None)  # noqa: DTZ001 - asyncua's naive UTC
    check_opcua(float("nan"), ua.StatusCode(0x80000000), None, None)
    check_modbus(
        (
            RegisterBlockDecoder(
                0, 2, [ModbusTag(name="f", table="holding_register", address=0, type="float32")]
            ),
            struct.pack(">f", math.inf),
        )
    )
