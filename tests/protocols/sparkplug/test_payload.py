"""Sparkplug B payloads: round trips, the reference implementation both ways, hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import CodecError
from protocols.sparkplug import sparkplug_b_pb2 as pb
from protocols.sparkplug.payload import (
    DataType,
    Malformed,
    Metric,
    Payload,
    decode_payload,
    encode_payload,
)
from tests.protocols.sparkplug import tahu

_RANGES = {
    DataType.INT8: (-(2**7), 2**7 - 1),
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT8: (0, 2**8 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.UINT64: (0, 2**64 - 1),
    DataType.DATETIME: (0, 2**63 - 1),
}


def _typed_values() -> st.SearchStrategy[tuple[DataType, object]]:
    integers = [st.tuples(st.just(t), st.integers(low, high)) for t, (low, high) in _RANGES.items()]
    float32 = st.floats(width=32, allow_nan=False)
    return st.one_of(
        *integers,
        st.tuples(st.just(DataType.FLOAT), float32),
        st.tuples(st.just(DataType.DOUBLE), st.floats(allow_nan=False)),
        st.tuples(st.just(DataType.BOOLEAN), st.booleans()),
        st.tuples(st.sampled_from([DataType.STRING, DataType.TEXT]), st.text(max_size=40)),
    )


@given(typed=st.lists(_typed_values(), max_size=8), seq=st.integers(0, 255))
def test_every_scalar_datatype_round_trips(typed: list[tuple[DataType, object]], seq: int) -> None:
    metrics = tuple(
        Metric(name=f"m{i}", alias=i, datatype=t, value=v, timestamp=1_700_000_000_000 + i)  # type: ignore[arg-type]
        for i, (t, v) in enumerate(typed)
    )
    payload = Payload(timestamp=1_700_000_000_000, seq=seq, metrics=metrics)
    decoded = decode_payload(encode_payload(payload))
    assert decoded.seq == seq
    assert [(m.name, m.alias, m.datatype, m.value) for m in decoded.metrics] == [
        (m.name, m.alias, m.datatype, m.value) for m in metrics
    ]


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (tahu.MetricDataType.Int8, -5),
        (tahu.MetricDataType.Int16, -30000),
        (tahu.MetricDataType.Int32, -(2**31)),
        (tahu.MetricDataType.Int64, -1),
        (tahu.MetricDataType.UInt8, 255),
        (tahu.MetricDataType.UInt32, 2**32 - 1),
        (tahu.MetricDataType.UInt64, 2**64 - 1),
        (tahu.MetricDataType.Float, 1.5),
        (tahu.MetricDataType.Double, -2.25e300),
        (tahu.MetricDataType.Boolean, True),
        (tahu.MetricDataType.String, "läuft"),
        (tahu.MetricDataType.DateTime, 1_700_000_000_123),
    ],
)
def test_values_written_by_the_reference_implementation_decode(
    datatype: int, value: object
) -> None:
    message = tahu.payload(seq=3)
    tahu.add(message, "x", 7, datatype, value, 1_700_000_000_000)
    decoded = decode_payload(message.SerializeToString())
    (metric,) = decoded.metrics
    assert (metric.name, metric.alias, metric.datatype, metric.value) == ("x", 7, datatype, value)
    assert metric.timestamp == 1_700_000_000_000
    assert decoded.seq == 3


@pytest.mark.parametrize(
    ("datatype", "value", "field", "wire"),
    [
        (DataType.INT8, -5, "int_value", 251),
        (DataType.INT16, -1, "int_value", 65535),
        (DataType.INT32, -1, "int_value", 2**32 - 1),
        (DataType.INT64, -1, "long_value", 2**64 - 1),
        (DataType.FLOAT, 0.5, "float_value", 0.5),
        (DataType.BOOLEAN, False, "boolean_value", False),
        (DataType.STRING, "on", "string_value", "on"),
    ],
)
def test_tagway_writes_what_the_reference_implementation_reads(
    datatype: DataType, value: object, field: str, wire: object
) -> None:
    data = encode_payload(
        Payload(seq=0, metrics=(Metric(name="x", datatype=datatype, value=value),))  # type: ignore[arg-type]
    )
    (metric,) = tahu.decode(data).metrics
    assert metric.datatype == int(datatype)
    assert metric.WhichOneof("value") == field
    assert getattr(metric, field) == wire


def test_signed_integers_on_32_bits_also_decode() -> None:
    """Some encoders put a negative Int8/Int16 on 32 bits; the value is the same."""
    message = pb.Payload(seq=1)
    message.metrics.add(name="t", datatype=DataType.INT8, int_value=2**32 - 5)
    assert decode_payload(message.SerializeToString()).metrics[0].value == -5


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (DataType.INT8, 128),
        (DataType.UINT16, -1),
        (DataType.UINT8, 1.5),
        (DataType.DOUBLE, "x"),
        (DataType.DATASET, 1),
    ],
)
def test_a_value_its_datatype_cannot_hold_is_a_codec_error(
    datatype: DataType, value: object
) -> None:
    with pytest.raises(CodecError, match=r"metrics\[0\]"):
        encode_payload(Payload(metrics=(Metric(name="x", datatype=datatype, value=value),)))  # type: ignore[arg-type]


def test_properties_carry_units_and_quality() -> None:
    metric = Metric(
        name="flow",
        datatype=DataType.FLOAT,
        value=2.0,
        properties={"engUnit": "m3/h", "Quality": 192, "note": None},
    )
    decoded = decode_payload(encode_payload(Payload(metrics=(metric,))))
    assert decoded.metrics[0].properties == {"engUnit": "m3/h", "Quality": 192, "note": None}
    props = tahu.decode(encode_payload(Payload(metrics=(metric,)))).metrics[0].properties
    assert list(props.keys) == ["engUnit", "Quality", "note"]
    assert props.values[1].type == tahu.MetricDataType.Int32


def _metric_bytes(**fields: object) -> bytes:
    message = pb.Payload(seq=1)
    message.metrics.add(**fields)  # type: ignore[arg-type]
    return message.SerializeToString()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff\xff", "not a Sparkplug B payload"),
        (_metric_bytes(name="a", datatype=99, int_value=1), r"metrics\[0\].datatype: 99"),
        (_metric_bytes(name="a", datatype=9, string_value="x"), r"metrics\[0\]: FLOAT value in"),
        (_metric_bytes(name="a", datatype=5, int_value=300), r"300 out of range for UINT8"),
        (_metric_bytes(name="a", datatype=2, int_value=2**20), "out of range for INT16"),
    ],
)
def test_malformed_payloads_say_what_and_where(data: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        decode_payload(data)


def test_property_keys_and_values_must_pair() -> None:
    message = pb.Payload(seq=1)
    metric = message.metrics.add(name="a", datatype=DataType.BOOLEAN, boolean_value=True)
    metric.properties.keys.extend(["engUnit", "Quality"])
    metric.properties.values.add(type=DataType.STRING, string_value="bar")
    with pytest.raises(Malformed, match="2 keys but 1 values"):
        decode_payload(message.SerializeToString())


@settings(max_examples=400)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_are_malformed(data: bytes) -> None:
    try:
        decode_payload(data)
    except Malformed as exc:
        reason = str(exc)
        assert reason.startswith(("not a Sparkplug B payload", "metrics[", "a string"))


_FIELDS = st.sampled_from(
    ["int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value",
     "bytes_value"]
)  # fmt: skip
_RAW = {
    "int_value": st.integers(0, 2**32 - 1),
    "long_value": st.integers(0, 2**64 - 1),
    "float_value": st.floats(width=32),
    "double_value": st.floats(),
    "boolean_value": st.booleans(),
    "string_value": st.text(max_size=8),
    "bytes_value": st.binary(max_size=8),
}


@st.composite
def _hostile_metric(draw: st.DrawFn) -> dict[str, object]:
    field = draw(_FIELDS)
    fields: dict[str, object] = {field: draw(_RAW[field])}
    if draw(st.booleans()):
        fields["datatype"] = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        fields["name"] = draw(st.text(max_size=8))
    if draw(st.booleans()):
        fields["alias"] = draw(st.integers(0, 2**64 - 1))
    fields["is_null"] = draw(st.booleans())
    return fields


@settings(max_examples=400)
@given(metrics=st.lists(_hostile_metric(), max_size=5))
def test_well_formed_protobuf_with_any_field_mix_decodes_or_is_malformed(
    metrics: list[dict[str, object]],
) -> None:
    message = pb.Payload(seq=0)
    for fields in metrics:
        message.metrics.add(**fields)  # type: ignore[arg-type]
    try:
        decoded = decode_payload(message.SerializeToString())
    except Malformed:
        return
    for metric in decoded.metrics:
        if metric.datatype is None or metric.is_null or not metric.datatype.is_scalar:
            continue
        expected = _PYTHON_TYPE.get(metric.datatype, int)
        assert type(metric.value) is expected, (metric.datatype, metric.value)


_PYTHON_TYPE = {
    DataType.FLOAT: float,
    DataType.DOUBLE: float,
    DataType.BOOLEAN: bool,
    DataType.STRING: str,
    DataType.TEXT: str,
    DataType.UUID: str,
}


def test_the_schema_is_the_reference_implementations_byte_for_byte() -> None:
    assert pb.DESCRIPTOR.serialized_pb == tahu.tahu_pb.DESCRIPTOR.serialized_pb
