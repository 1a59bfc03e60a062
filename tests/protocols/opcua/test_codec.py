"""The pure OPC UA mapping with literal values: node ids, DataValue -> Reading, value -> Variant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from asyncua import ua

from protocols.errors import CodecError
from protocols.opcua.codec import (
    plain_value,
    resolve_node_id,
    status_reason,
    to_reading,
    to_variant,
    variant_type_of,
)
from protocols.opcua.nodeid import NodeIdSpec, parse_node_id
from protocols.reading import Quality

NAMESPACES = ["http://opcfoundation.org/UA/", "urn:other", "urn:x", "urn:tagway:firmware-sim"]
T0 = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
T0_US = 1_772_366_400_250_000
T1 = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)
T1_US = 1_772_366_401_000_000
RECEIVED_US = 1_800_000_000_000_000


# --- node ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "nsu=urn:tagway:firmware-sim;s=pump1.flow",
            NodeIdSpec("urn:tagway:firmware-sim", None, "s", "pump1.flow"),
        ),
        ("ns=3;s=pump1.flow", NodeIdSpec(None, 3, "s", "pump1.flow")),
        ("i=2258", NodeIdSpec(None, 0, "i", 2258)),
        ("ns=2;i=7", NodeIdSpec(None, 2, "i", 7)),
        ("s=a;b=c", NodeIdSpec(None, 0, "s", "a;b=c")),  # ';' inside a string identifier is kept
        ("nsu=urn:a;s=x;y", NodeIdSpec("urn:a", None, "s", "x;y")),
        (
            "g=09087e75-8e5e-499b-954f-f2a9603db28a",
            NodeIdSpec(None, 0, "g", uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")),
        ),
        ("ns=1;b=AAEC", NodeIdSpec(None, 1, "b", b"\x00\x01\x02")),
        ("  i=85  ", NodeIdSpec(None, 0, "i", 85)),
    ],
)
def test_parse_node_id(text: str, expected: NodeIdSpec) -> None:
    assert parse_node_id(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty node id"),
        ("pump1.flow", "expected 'i=', 's=', 'g=' or 'b='"),
        ("x=5", "expected 'i=', 's=', 'g=' or 'b='"),
        ("ns=a;i=5", "namespace index 'a'"),
        ("ns=2;i=-1", "numeric identifier '-1'"),
        ("i=4294967296", "not an unsigned 32-bit"),
        ("nsu=;s=x", "empty namespace URI"),
        ("ns=2;s=", "empty string identifier"),
        ("g=not-a-guid", "is not a GUID"),
        ("b=!!!", "is not base64"),
    ],
)
def test_parse_node_id_refuses_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        parse_node_id(text)


def test_namespace_uri_resolves_to_the_servers_current_index() -> None:
    node = resolve_node_id(parse_node_id("nsu=urn:tagway:firmware-sim;s=pump1.flow"), NAMESPACES)
    assert node == ua.NodeId("pump1.flow", 3)
    reordered = ["http://opcfoundation.org/UA/", "urn:tagway:firmware-sim"]
    assert (
        resolve_node_id(parse_node_id("nsu=urn:tagway:firmware-sim;s=a"), reordered).NamespaceIndex
        == 1
    )


def test_index_and_numeric_ids_resolve_as_given() -> None:
    assert resolve_node_id(parse_node_id("i=2258"), NAMESPACES) == ua.NodeId(2258, 0)
    assert resolve_node_id(parse_node_id("ns=2;i=70000"), NAMESPACES) == ua.NodeId(70000, 2)


def test_unknown_namespace_uri_names_what_the_server_has() -> None:
    with pytest.raises(CodecError, match=r"'urn:nope' is not served .*urn:tagway:firmware-sim"):
        resolve_node_id(parse_node_id("nsu=urn:nope;s=x"), NAMESPACES)


# --- DataValue -> Reading -------------------------------------------------------------------


def _dv(value: object, vtype: ua.VariantType, **fields: object) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vtype), **fields)


def test_source_timestamp_wins() -> None:
    dv = _dv(12.5, ua.VariantType.Double, SourceTimestamp=T0, ServerTimestamp=T1)
    reading = to_reading("pump1", "flow", dv, RECEIVED_US, "m3/h", True)
    assert reading.ts == T0_US
    assert (reading.value, reading.quality, reading.unit, reading.simulated) == (
        12.5,
        Quality.GOOD,
        "m3/h",
        True,
    )
    assert reading.reason is None


def test_server_timestamp_then_receive_time() -> None:
    assert (
        to_reading(
            "d", "t", _dv(1.0, ua.VariantType.Double, ServerTimestamp=T1), RECEIVED_US, None, False
        ).ts
        == T1_US
    )
    assert (
        to_reading("d", "t", _dv(1.0, ua.VariantType.Double), RECEIVED_US, None, False).ts
        == RECEIVED_US
    )


@pytest.mark.parametrize(
    ("status", "quality"),
    [
        (ua.StatusCodes.Good, Quality.GOOD),
        (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN),
        (ua.StatusCodes.UncertainEngineeringUnitsExceeded, Quality.UNCERTAIN),
        (ua.StatusCodes.BadSensorFailure, Quality.BAD),
        (ua.StatusCodes.BadNodeIdUnknown, Quality.BAD),
        (0xC0000000, Quality.BAD),  # reserved severity 11 counts as bad
    ],
)
def test_status_code_severity_maps_to_quality(status: int, quality: Quality) -> None:
    dv = _dv(3.0, ua.VariantType.Double, StatusCode=ua.StatusCode(status))
    reading = to_reading("d", "t", dv, RECEIVED_US, None, False)
    assert reading.quality is quality
    assert (reading.reason is None) == (quality is Quality.GOOD)


def test_bad_status_carries_the_status_name() -> None:
    dv = ua.DataValue(None, StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure))
    reading = to_reading("d", "t", dv, RECEIVED_US, None, False)
    assert reading.quality is Quality.BAD
    assert reading.value == 0
    assert reading.reason == "opcua BadSensorFailure (0x808C0000)"


@pytest.mark.parametrize(
    ("value", "vtype", "expected"),
    [
        (True, ua.VariantType.Boolean, True),
        (-5, ua.VariantType.Int16, -5),
        (70000, ua.VariantType.UInt32, 70000),
        (2**63 - 1, ua.VariantType.Int64, 2**63 - 1),
        (1.5, ua.VariantType.Float, 1.5),
        ("P-101", ua.VariantType.String, "P-101"),
        (ua.LocalizedText("Störung", "de"), ua.VariantType.LocalizedText, "Störung"),
        (ua.QualifiedName("Run", 2), ua.VariantType.QualifiedName, "Run"),
        (T0, ua.VariantType.DateTime, T0_US),
    ],
)
def test_values_convert_to_plain_types(
    value: object, vtype: ua.VariantType, expected: object
) -> None:
    reading = to_reading("d", "t", _dv(value, vtype), RECEIVED_US, None, False)
    assert reading.value == expected
    assert type(reading.value) is type(expected)
    assert reading.quality is Quality.GOOD


def test_bool_stays_bool_and_int_enum_becomes_int() -> None:
    assert plain_value(True) is True
    value = plain_value(ua.NodeClass.Variable)
    assert value == 2
    assert type(value) is int


def test_unsupported_value_is_bad_not_an_exception() -> None:
    reading = to_reading("d", "t", _dv([1.0, 2.0], ua.VariantType.Double), RECEIVED_US, None, False)
    assert reading.quality is Quality.BAD
    assert reading.reason == "unsupported value type list"


def test_good_status_without_value_is_bad() -> None:
    reading = to_reading("d", "t", ua.DataValue(None), RECEIVED_US, None, False)
    assert (reading.quality, reading.reason) == (Quality.BAD, "no value")


def test_status_reason_without_status() -> None:
    assert status_reason(None) == "opcua Good"


# --- value -> Variant for writes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_type", "vtype"),
    [
        (ua.NodeId(ua.ObjectIds.Double), ua.VariantType.Double),
        (ua.NodeId(ua.ObjectIds.Boolean), ua.VariantType.Boolean),
        (ua.NodeId(ua.ObjectIds.Int16), ua.VariantType.Int16),
        (ua.NodeId(ua.ObjectIds.String), ua.VariantType.String),
        (ua.NodeId(290), ua.VariantType.Double),  # Duration
        (ua.NodeId(29), ua.VariantType.Int32),  # Enumeration
    ],
)
def test_variant_type_of_data_type(data_type: ua.NodeId, vtype: ua.VariantType) -> None:
    assert variant_type_of(data_type) is vtype


def test_custom_data_type_cannot_be_written_plainly() -> None:
    with pytest.raises(CodecError, match="ns=2;i=3001"):
        variant_type_of(ua.NodeId(3001, 2))


@pytest.mark.parametrize(
    ("value", "vtype", "expected"),
    [
        (1450, ua.VariantType.Double, 1450.0),
        (12.5, ua.VariantType.Float, 12.5),
        (True, ua.VariantType.Boolean, True),
        (1, ua.VariantType.Boolean, True),
        (-32768, ua.VariantType.Int16, -32768),
        (3.0, ua.VariantType.UInt16, 3),
        (2**64 - 1, ua.VariantType.UInt64, 2**64 - 1),
        ("P-102", ua.VariantType.String, "P-102"),
    ],
)
def test_to_variant_uses_the_nodes_type(
    value: object, vtype: ua.VariantType, expected: object
) -> None:
    variant = to_variant(value, vtype)  # type: ignore[arg-type]
    assert variant.VariantType is vtype
    assert variant.Value == expected
    assert type(variant.Value) is type(expected)


@pytest.mark.parametrize(
    ("value", "vtype"),
    [
        (32768, ua.VariantType.Int16),
        (-1, ua.VariantType.UInt32),
        (2.5, ua.VariantType.Int32),
        (True, ua.VariantType.Int32),  # a bool is not a number here: refuse rather than guess
        (2, ua.VariantType.Boolean),
        ("1", ua.VariantType.Double),
        (1.0, ua.VariantType.String),
        (1, ua.VariantType.DateTime),
    ],
)
def test_to_variant_refuses_what_does_not_fit(value: object, vtype: ua.VariantType) -> None:
    with pytest.raises(CodecError, match=f"cannot be written as OPC UA {vtype.name}"):
        to_variant(value, vtype)  # type: ignore[arg-type]
