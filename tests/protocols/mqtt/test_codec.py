"""The MQTT payload codec with literal payloads: good ones become readings, bad ones dead-letter."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from protocols.mqtt.codec import HEAD_BYTES, DeadLetter, Limits, compile_routes, decode_message
from protocols.mqtt.config import (
    JsonDecoder,
    JsonField,
    MqttSourceConfig,
    MqttSubscription,
    RawDecoder,
    TimestampFormat,
    ValueType,
)
from protocols.reading import Reading

NOW_US = 1_763_800_000_000_000  # 2025-11-22, the gateway's clock in these tests
NOW_MS = NOW_US // 1000
SIM = MqttSubscription(topic="plant/{device}/telemetry")


def decode(
    payload: bytes,
    topic: str = "plant/pump1/telemetry",
    subscription: MqttSubscription = SIM,
    limits: Limits | None = None,
) -> list[Reading] | DeadLetter:
    routes = compile_routes([subscription], limits or Limits())
    return decode_message(routes, topic, payload, NOW_US)


def dead(result: list[Reading] | DeadLetter) -> DeadLetter:
    assert isinstance(result, DeadLetter), result
    return result


def test_firmware_sim_single_sample() -> None:
    payload = (
        b'{"ts": %d, "values": {"flow": 12.5, "running": true, "mode": "auto", "starts": 7},'
        b' "simulated": true}' % NOW_MS
    )
    readings = decode(payload)
    assert readings == [
        Reading("pump1", "flow", NOW_US, 12.5, simulated=True),
        Reading("pump1", "running", NOW_US, True, simulated=True),
        Reading("pump1", "mode", NOW_US, "auto", simulated=True),
        Reading("pump1", "starts", NOW_US, 7, simulated=True),
    ]


def test_firmware_sim_batched_samples() -> None:
    payload = (
        b'{"samples": [{"ts": %d, "values": {"flow": 1.0}}, {"ts": %d, "values": {"flow": 2.0}}],'
        b' "simulated": true}' % (NOW_MS - 1000, NOW_MS)
    )
    readings = decode(payload, topic="plant/tank7/telemetry")
    assert readings == [
        Reading("tank7", "flow", NOW_US - 1_000_000, 1.0, simulated=True),
        Reading("tank7", "flow", NOW_US, 2.0, simulated=True),
    ]


def test_field_mapping_with_paths_types_units_and_iso_timestamps() -> None:
    subscription = MqttSubscription(
        topic="site/boiler/state",
        device="boiler1",
        decoder=JsonDecoder(
            timestamp_path="meta.time",
            timestamp_format=TimestampFormat.ISO8601,
            values_path=None,
            fields=(
                JsonField(tag="temp", path="data.t", type=ValueType.FLOAT, unit="degC"),
                JsonField(tag="stage", path="data.stages.1", type=ValueType.INT),
                JsonField(tag="alarm", path="flags.a", type=ValueType.BOOL),
            ),
        ),
    )
    payload = (
        b'{"meta": {"time": "2025-11-22T08:26:40+00:00"},'
        b' "data": {"t": 80, "stages": [1, 3.0]}, "flags": {"a": 0}}'
    )
    readings = decode(payload, topic="site/boiler/state", subscription=subscription)
    assert readings == [
        Reading("boiler1", "temp", NOW_US, 80.0, unit="degC"),
        Reading("boiler1", "stage", NOW_US, 3),
        Reading("boiler1", "alarm", NOW_US, False),
    ]
    assert isinstance(readings[0].value, float)


@pytest.mark.parametrize(
    ("fmt", "raw", "expected_us"),
    [
        (TimestampFormat.EPOCH_S, b"1763800000", NOW_US),
        (TimestampFormat.EPOCH_S, b"1763800000.25", NOW_US + 250_000),
        (TimestampFormat.EPOCH_MS, b"1763800000001", NOW_US + 1000),
        (TimestampFormat.EPOCH_US, b"1763800000000007", NOW_US + 7),
        (TimestampFormat.ISO8601, b'"2025-11-22T09:26:40.5+01:00"', NOW_US + 500_000),
        (TimestampFormat.ISO8601, b'"2025-11-22T08:26:40Z"', NOW_US),
    ],
)
def test_timestamp_formats(fmt: TimestampFormat, raw: bytes, expected_us: int) -> None:
    subscription = MqttSubscription(topic="d/{device}", decoder=JsonDecoder(timestamp_format=fmt))
    result = decode(b'{"ts": %s, "values": {"x": 1}}' % raw, "d/a", subscription)
    assert isinstance(result, list)
    assert result[0].ts == expected_us


def test_units_and_types_for_the_values_object() -> None:
    subscription = MqttSubscription(
        topic="plant/{device}/telemetry",
        decoder=JsonDecoder(units={"flow": "m3/h"}, types={"flow": ValueType.FLOAT}),
    )
    result = decode(b'{"ts": %d, "values": {"flow": 3}}' % NOW_MS, subscription=subscription)
    assert result == [Reading("pump1", "flow", NOW_US, 3.0, unit="m3/h")]


def test_without_timestamp_path_the_receive_time_is_used() -> None:
    subscription = MqttSubscription(topic="x/{device}", decoder=JsonDecoder(timestamp_path=None))
    assert decode(b'{"values": {"a": 1}}', "x/d", subscription) == [Reading("d", "a", NOW_US, 1)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got array"),
        (b'{"values": {"flow": 1}}', "ts: missing"),
        (b'{"ts": %d}' % NOW_MS, "values: missing"),
        (b'{"ts": %d, "values": [1]}' % NOW_MS, "values: expected an object, got array"),
        (b'{"ts": "yesterday", "values": {}}', "ts: expected a number (epoch_ms), got string"),
        (
            b'{"ts": %d, "values": {"flow": {"v": 1}}}' % NOW_MS,
            "values.flow: expected number, bool or string, got object",
        ),
        (
            b'{"ts": %d, "values": {"flow": null}}' % NOW_MS,
            "values.flow: expected number, bool or string, got null",
        ),
        (
            b'{"ts": %d, "values": {"flow": NaN}}' % NOW_MS,
            "values.flow: nan is not a finite number",
        ),
        (
            b'{"ts": %d, "values": {"flow": Infinity}}' % NOW_MS,
            "values.flow: inf is not a finite number",
        ),
        (b'{"ts": -5, "values": {"a": 1}}', "before 1970"),
        (
            b'{"ts": %d, "values": {"a": 1}, "simulated": "yes"}' % NOW_MS,
            "simulated: expected true or false",
        ),
        (b'{"samples": {"ts": 1}}', "samples: expected an array, got object"),
        (
            b'{"samples": [{"ts": %d, "values": {"a": 1}}, 5]}' % NOW_MS,
            "samples.1: expected an object",
        ),
        (
            b'{"samples": [{"ts": %d, "values": {"a": "x"}}, {"values": {}}]}' % NOW_MS,
            "samples.1.ts: missing",
        ),
    ],
)
def test_bad_payloads_become_dead_letters_naming_the_field(payload: bytes, reason: str) -> None:
    letter = dead(decode(payload))
    assert reason in letter.reason
    assert letter.topic == "plant/pump1/telemetry"
    assert letter.device == "pump1"
    assert letter.head == payload[:HEAD_BYTES]
    assert letter.size == len(payload)
    assert letter.received_us == NOW_US


def test_far_future_names_the_skew_when_a_limit_is_set() -> None:
    payload = b'{"ts": %d, "values": {"a": 1}}' % (NOW_MS + 3_600_000)
    letter = dead(decode(payload, limits=Limits(max_future_skew_us=300_000_000)))
    assert "3600 s in the future (max_future_skew_s 300)" in letter.reason
    # Without one the reading goes on, for the gateway's clock policy (restamp by default).
    passed = decode(payload)
    assert isinstance(passed, list)
    (reading,) = passed
    assert reading.ts == (NOW_MS + 3_600_000) * 1000


def test_small_clock_skew_is_accepted() -> None:
    result = decode(b'{"ts": %d, "values": {"a": 1}}' % (NOW_MS + 60_000))
    assert isinstance(result, list)


def test_wrong_types_against_declared_types() -> None:
    subscription = MqttSubscription(
        topic="p/{device}",
        decoder=JsonDecoder(
            types={
                "f": ValueType.FLOAT,
                "i": ValueType.INT,
                "b": ValueType.BOOL,
                "s": ValueType.STR,
            }
        ),
    )
    cases = {
        b'"f": "1.5"': "values.f: expected float, got string",
        b'"f": true': "values.f: expected float, got bool",
        b'"i": 1.5': "values.i: 1.5 is not an integer",
        b'"b": 2': "values.b: expected bool, got number",
        b'"s": 3': "values.s: expected str, got number",
    }
    for values, reason in cases.items():
        payload = b'{"ts": %d, "values": {%s}}' % (NOW_MS, values)
        assert reason in dead(decode(payload, "p/d", subscription)).reason


def test_oversize_payload_is_refused_unread_and_head_is_bounded() -> None:
    payload = b'{"ts": 1, "values": {"a": "' + b"x" * 2000 + b'"}}'
    letter = dead(decode(payload, limits=Limits(max_payload_bytes=1024)))
    assert letter.reason == f"payload of {len(payload)} bytes exceeds max_payload_bytes 1024"
    assert letter.head == payload[:256]
    assert len(letter.head) == 256


def test_one_bad_sample_refuses_the_whole_message() -> None:
    payload = b'{"samples": [{"ts": %d, "values": {"a": 1}}, {"ts": %d, "values": {"a": NaN}}]}' % (
        NOW_MS,
        NOW_MS,
    )
    assert "samples.1.values.a" in dead(decode(payload)).reason


def test_simulated_flag_from_config() -> None:
    result = decode(b'{"ts": %d, "values": {"a": 1}}' % NOW_MS, limits=Limits(simulated=True))
    assert isinstance(result, list)
    assert result[0].simulated


def test_raw_numeric_payloads_with_tag_from_topic() -> None:
    subscription = MqttSubscription(topic="raw/{device}/{tag}", decoder=RawDecoder(unit="bar"))
    assert decode(b" 21.5\n", "raw/p1/pressure", subscription) == [
        Reading("p1", "pressure", NOW_US, 21.5, unit="bar")
    ]
    assert decode(b"42", "raw/p1/count", subscription) == [
        Reading("p1", "count", NOW_US, 42, unit="bar")
    ]
    assert decode(b"true", "raw/p1/on", subscription) == [
        Reading("p1", "on", NOW_US, True, unit="bar")
    ]
    assert "is not a number or true/false" in dead(decode(b"abc", "raw/p1/x", subscription)).reason
    assert "not a finite number" in dead(decode(b"nan", "raw/p1/x", subscription)).reason
    assert "not UTF-8" in dead(decode(b"\xff", "raw/p1/x", subscription)).reason


def test_raw_with_fixed_tag_and_type() -> None:
    subscription = MqttSubscription(
        topic="meters/m1/kwh",
        device="meter1",
        decoder=RawDecoder(tag="energy", type=ValueType.FLOAT),
    )
    assert decode(b"7", "meters/m1/kwh", subscription) == [Reading("meter1", "energy", NOW_US, 7.0)]
    int_sub = MqttSubscription(topic="m/{device}", decoder=RawDecoder(tag="n", type=ValueType.INT))
    assert "is not an integer" in dead(decode(b"7.5", "m/x", int_sub)).reason


def test_first_matching_subscription_wins_and_unmatched_topics_are_dead_letters() -> None:
    routes = compile_routes(
        [
            MqttSubscription(topic="plant/{device}/telemetry"),
            MqttSubscription(topic="plant/+/raw/{tag}", device="bulk", decoder=RawDecoder()),
        ],
        Limits(),
    )
    assert decode_message(routes, "plant/a/raw/t", b"1", NOW_US) == [
        Reading("bulk", "t", NOW_US, 1)
    ]
    letter = decode_message(routes, "other/topic", b"1", NOW_US)
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "no subscription matches this topic"


def test_hash_filter_with_fixed_device() -> None:
    sub = MqttSubscription(topic="site/#", device="site", decoder=JsonDecoder(timestamp_path=None))
    assert decode(b'{"values": {"a": 1}}', "site/x/y", sub) == [Reading("site", "a", NOW_US, 1)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "plant/pump1/telemetry"}, "device"),
        ({"topic": "plant/{device}/x", "device": "d"}, "device"),
        ({"topic": "plant/x{device}/t"}, "must be a whole level"),
        ({"topic": "plant/{devices}/t", "device": "d"}, "only {device} and {tag}"),
        ({"topic": "plant/#/t", "device": "d"}, "'#' must be the whole last level"),
        ({"topic": "plant/{device}", "decoder": {"kind": "raw"}}, "decoder.tag"),
        ({"topic": "p/{device}", "decoder": {"kind": "json", "values_path": None}}, "values_path"),
        ({"topic": "p/{device}", "decoder": {"kind": "xml"}}, "kind"),
    ],
)
def test_subscription_validation_names_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        MqttSubscription.model_validate(kwargs)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host:1883", "scheme must be mqtt:// or mqtts://"),
        ("mqtt://:1883", "needs a host"),
        ("mqtt://host:0", "non-zero port"),
        ("mqtt://host:99999", "bad port"),
        ("mqtt://user:pw@host", "no path, query or credentials"),
    ],
)
def test_source_url_validation(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MqttSourceConfig(name="m", url=url, subscriptions=(SIM,))


def test_source_defaults_ports_and_tls() -> None:
    plain = MqttSourceConfig(name="m", url="mqtt://broker.local", subscriptions=(SIM,))
    assert (plain.host, plain.port, plain.tls, plain.identifier) == (
        "broker.local",
        1883,
        False,
        "tagway-m",
    )
    secure = MqttSourceConfig(name="m", url="mqtts://10.0.0.2", subscriptions=(SIM,))
    assert (secure.port, secure.tls) == (8883, True)
    with pytest.raises(ValidationError, match="extra"):
        MqttSourceConfig.model_validate(
            {"name": "m", "url": "mqtt://h", "subscriptions": [], "x": 1}
        )
    with pytest.raises(ValidationError):
        plain.qos = 2  # type: ignore[misc]


def test_timestamp_choice_per_decoder_and_per_tag() -> None:
    past_ms = NOW_MS - 120_000
    payload = b'{"ts": %d, "values": {"v": 1, "clockless": 2}}' % past_ms
    per_tag = MqttSubscription(
        topic="plant/{device}/telemetry", decoder=JsonDecoder(timestamps={"clockless": "gateway"})
    )
    readings = decode(payload, subscription=per_tag)
    assert isinstance(readings, list)
    assert [(r.tag, r.ts) for r in readings] == [("v", past_ms * 1000), ("clockless", NOW_US)]
    gateway = MqttSubscription(
        topic="plant/{device}/telemetry",
        decoder=JsonDecoder(timestamp="gateway", timestamps={"v": "payload"}),
    )
    readings = decode(payload, subscription=gateway)
    assert isinstance(readings, list)
    assert [(r.tag, r.ts) for r in readings] == [("v", past_ms * 1000), ("clockless", NOW_US)]
    seconds = MqttSubscription(topic="plant/{device}/telemetry", decoder=JsonDecoder(ts_unit="s"))
    readings = decode(b'{"ts": %d, "values": {"v": 1}}' % (NOW_US // 10**6), subscription=seconds)
    assert isinstance(readings, list)
    assert readings[0].ts == NOW_US // 10**6 * 10**6
    nanos = MqttSubscription(topic="plant/{device}/telemetry", decoder=JsonDecoder(ts_unit="ns"))
    readings = decode(b'{"ts": %d, "values": {"v": 1}}' % (NOW_US * 1000), subscription=nanos)
    assert isinstance(readings, list)
    assert readings[0].ts == NOW_US
