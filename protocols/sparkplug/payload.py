"""Sparkplug B payloads: typed metrics in, protobuf bytes out, and back (Sparkplug 3.0, ch. 6).

The wire schema is `sparkplug_b.proto`, compiled by protoc into `sparkplug_b_pb2` and read by
Google's `protobuf` runtime; this module only maps it to frozen values and checks what the
schema cannot: a datatype the specification defines, a value field that fits the datatype, an
integer within its type's range, keys and values of a property set of equal length.

- `encode_payload` raises `CodecError` for a value that does not fit its datatype (a bug or a
  misconfigured tag on our side).
- `decode_payload` raises `Malformed` with a reason naming the metric (``metrics[3]: ...``):
  bytes from the network are hostile, and the caller turns that into a dead letter.

Signed integers narrower than 64 bits travel in the unsigned ``int_value``. The reference
implementation writes -1 as an Int8 as 255 (two's complement on the type's width), others as
4294967295 (on 32 bits); both decode to -1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from google.protobuf.message import DecodeError

from protocols.errors import CodecError
from protocols.reading import Value
from protocols.sparkplug import sparkplug_b_pb2 as pb

WireValue = int | float | bool | str | bytes
"""What one protobuf value field holds."""


class DataType(IntEnum):
    """Sparkplug datatypes (section 6.4.16)."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19
    PROPERTYSET = 20
    PROPERTYSETLIST = 21
    INT8_ARRAY = 22
    INT16_ARRAY = 23
    INT32_ARRAY = 24
    INT64_ARRAY = 25
    UINT8_ARRAY = 26
    UINT16_ARRAY = 27
    UINT32_ARRAY = 28
    UINT64_ARRAY = 29
    FLOAT_ARRAY = 30
    DOUBLE_ARRAY = 31
    BOOLEAN_ARRAY = 32
    STRING_ARRAY = 33
    DATETIME_ARRAY = 34

    @property
    def is_scalar(self) -> bool:
        """True for the types a tag value can hold (numbers, booleans, strings, DateTime)."""
        return self in _FIELD_OF


# Signed integers: their width in bits; int_value (uint32) below 64 bits, long_value at 64.
_SIGNED_BITS: Final = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
_UNSIGNED_BITS: Final = {
    DataType.UINT8: 8,
    DataType.UINT16: 16,
    DataType.UINT32: 32,
    DataType.UINT64: 64,
    DataType.DATETIME: 64,
}
_FIELD_OF: Final = {
    **{t: ("long_value" if bits == 64 else "int_value") for t, bits in _SIGNED_BITS.items()},
    **{t: ("long_value" if bits == 64 else "int_value") for t, bits in _UNSIGNED_BITS.items()},
    DataType.FLOAT: "float_value",
    DataType.DOUBLE: "double_value",
    DataType.BOOLEAN: "boolean_value",
    DataType.STRING: "string_value",
    DataType.TEXT: "string_value",
    DataType.UUID: "string_value",
}
_MAX_DATATYPE: Final = max(DataType)


class Malformed(ValueError):
    """Bytes or a metric that are not a valid Sparkplug B payload; the message says where."""


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric of a payload.

    Attributes:
        name: the metric name (births carry it; data messages may carry only the alias).
        alias: the alias the edge node assigned in its births, if it uses aliases.
        datatype: its datatype; None when a data message leaves it to the birth.
        value: the value as its datatype reads it; None for a null metric, an unsupported
            datatype (dataset, template, arrays), or (in a decoded data message without a
            datatype) the still uninterpreted wire value, see `wire`.
        timestamp: milliseconds since the epoch, UTC, if the metric has its own.
        is_historical: a value from the past (sent after an outage), not a live one.
        is_transient: not to be stored by hosts.
        is_null: the metric has no value.
        properties: scalar properties by key (``engUnit``, ``Quality``), nulls as None.
        wire: the protobuf value field and its raw value, when decoded without a datatype.
    """

    name: str | None = None
    alias: int | None = None
    datatype: DataType | None = None
    value: Value | None = None
    timestamp: int | None = None
    is_historical: bool = False
    is_transient: bool = False
    is_null: bool = False
    properties: Mapping[str, Value | None] | None = None
    wire: tuple[str, WireValue] | None = None

    def value_as(self, datatype: DataType) -> Value | None:
        """The value read with `datatype` (the birth's, for a data message that omits it).

        Raises `Malformed` if the wire value does not fit `datatype`.
        """
        if self.is_null or self.wire is None:
            return self.value
        field, raw = self.wire
        return from_wire(datatype, field, raw, "value")


@dataclass(frozen=True, slots=True)
class Payload:
    """A Sparkplug B payload: a timestamp (ms), a sequence number and the metrics."""

    timestamp: int | None = None
    seq: int | None = None
    metrics: tuple[Metric, ...] = ()
    uuid: str | None = None
    body: bytes | None = None


def encode_payload(payload: Payload) -> bytes:
    """Serialize `payload`; raises `CodecError` for a value its datatype cannot hold."""
    message = pb.Payload()
    if payload.timestamp is not None:
        message.timestamp = payload.timestamp
    if payload.seq is not None:
        message.seq = payload.seq
    if payload.uuid is not None:
        message.uuid = payload.uuid
    if payload.body is not None:
        message.body = payload.body
    for index, metric in enumerate(payload.metrics):
        fill_metric(message.metrics.add(), metric, f"metrics[{index}]")
    return message.SerializeToString()


def fill_metric(target: pb.Payload.Metric, metric: Metric, where: str) -> None:
    """Write `metric` into a protobuf metric; raises `CodecError` naming `where`."""
    if metric.name is not None:
        target.name = metric.name
    if metric.alias is not None:
        target.alias = metric.alias
    if metric.timestamp is not None:
        target.timestamp = metric.timestamp
    if metric.is_historical:
        target.is_historical = True
    if metric.is_transient:
        target.is_transient = True
    if metric.datatype is not None:
        target.datatype = metric.datatype
    if metric.properties:
        fill_properties(target.properties, metric.properties, where)
    if metric.is_null or metric.value is None:
        target.is_null = True
        return
    if metric.datatype is None:
        raise CodecError(f"{where}: a metric with a value needs a datatype")
    set_value(target, metric.datatype, metric.value, where)


def set_value(target: pb.Payload.Metric | pb.Payload.PropertyValue, datatype: DataType,
              value: Value, where: str) -> None:  # fmt: skip
    """Put `value` into the value field `datatype` uses; raises `CodecError` if it cannot."""
    field = _FIELD_OF.get(datatype)
    if field is None:
        raise CodecError(f"{where}: datatype {datatype.name} cannot hold a tag value")
    try:
        setattr(target, field, to_wire(datatype, value))
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{where}: {value!r} does not fit {datatype.name}: {exc}") from None


def to_wire(datatype: DataType, value: Value) -> WireValue:
    """The raw protobuf value of `value` as `datatype` (two's complement for negatives)."""
    bits = _SIGNED_BITS.get(datatype)
    if bits is not None:
        number = _integer(value)
        if not -(1 << (bits - 1)) <= number < 1 << (bits - 1):
            raise ValueError(f"out of range for {bits}-bit signed")
        return number + (1 << bits) if number < 0 else number
    bits = _UNSIGNED_BITS.get(datatype)
    if bits is not None:
        number = _integer(value)
        if not 0 <= number < 1 << bits:
            raise ValueError(f"out of range for {bits}-bit unsigned")
        return number
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        if isinstance(value, str):
            raise TypeError("a string is not a number")
        return float(value)
    if datatype is DataType.BOOLEAN:
        if isinstance(value, str):
            raise TypeError("a string is not a boolean")
        return bool(value)
    return str(value)


def _integer(value: Value) -> int:
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not an integer")


def fill_properties(
    target: pb.Payload.PropertySet, properties: Mapping[str, Value | None], where: str
) -> None:
    """Write scalar properties: str as String, bool as Boolean, int as Int32 (Int64 if it does
    not fit), float as Double, None as a null String."""
    for key, value in properties.items():
        target.keys.append(key)
        item = target.values.add()
        if value is None:
            item.type = DataType.STRING
            item.is_null = True
            continue
        datatype = _property_type(value)
        item.type = datatype
        set_value(item, datatype, value, f"{where}.properties.{key}")


def _property_type(value: Value) -> DataType:
    if isinstance(value, bool):
        return DataType.BOOLEAN
    if isinstance(value, int):
        return DataType.INT32 if -(1 << 31) <= value < 1 << 31 else DataType.INT64
    if isinstance(value, float):
        return DataType.DOUBLE
    return DataType.STRING


def decode_payload(data: bytes) -> Payload:
    """Parse and check a payload; raises `Malformed` naming what is wrong and where."""
    message = pb.Payload()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise Malformed(f"not a Sparkplug B payload: {exc}") from None
    try:
        metrics = tuple(_metric(m, f"metrics[{i}]") for i, m in enumerate(message.metrics))
        return Payload(
            timestamp=message.timestamp if message.HasField("timestamp") else None,
            seq=message.seq if message.HasField("seq") else None,
            metrics=metrics,
            uuid=message.uuid if message.HasField("uuid") else None,
            body=message.body if message.HasField("body") else None,
        )
    except UnicodeError as exc:  # proto2 strings are not checked while parsing
        raise Malformed(f"a string is not valid UTF-8: {exc}") from None


def _metric(message: pb.Payload.Metric, where: str) -> Metric:
    datatype: DataType | None = None
    if message.HasField("datatype"):
        datatype = _datatype(message.datatype, f"{where}.datatype")
    field = message.WhichOneof("value")
    is_null = message.is_null or field is None
    value: Value | None = None
    wire: tuple[str, WireValue] | None = None
    if not is_null and field is not None:
        if field in _SCALAR_FIELDS:
            raw: WireValue = getattr(message, field)
            if datatype is None:
                wire = (field, raw)
            elif datatype.is_scalar:
                value = from_wire(datatype, field, raw, where)
        elif datatype is not None and datatype.is_scalar:
            raise Malformed(f"{where}: {datatype.name} value in {field}")
    properties = None
    if message.HasField("properties"):
        properties = _properties(message.properties, f"{where}.properties")
    return Metric(
        name=message.name if message.HasField("name") else None,
        alias=message.alias if message.HasField("alias") else None,
        datatype=datatype,
        value=value,
        timestamp=message.timestamp if message.HasField("timestamp") else None,
        is_historical=message.is_historical,
        is_transient=message.is_transient,
        is_null=is_null,
        properties=properties,
        wire=wire,
    )


_SCALAR_FIELDS: Final = frozenset(
    {"int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value",
     "bytes_value"}
)  # fmt: skip


def _datatype(code: int, where: str) -> DataType:
    if not 0 <= code <= _MAX_DATATYPE:
        raise Malformed(f"{where}: {code} is not a Sparkplug datatype")
    return DataType(code)


def from_wire(datatype: DataType, field: str, raw: WireValue, where: str) -> Value | None:
    """Read a raw protobuf value as `datatype`; None for a type that is not a tag value
    (bytes, arrays, datasets). Raises `Malformed` if the field or range is wrong."""
    expected = _FIELD_OF.get(datatype)
    if expected is None:
        return None
    if field != expected:
        raise Malformed(f"{where}: {datatype.name} value in {field}, expected {expected}")
    if isinstance(raw, bool) or not isinstance(raw, int):
        if isinstance(raw, bytes):
            raise Malformed(f"{where}: {datatype.name} value is bytes")
        return raw
    bits = _SIGNED_BITS.get(datatype)
    if bits is None:
        bits = _UNSIGNED_BITS[datatype]
        if raw >= 1 << bits:
            raise Malformed(f"{where}: {raw} out of range for {datatype.name}")
        return raw
    return _signed(raw, bits, datatype, where)


def _signed(raw: int, bits: int, datatype: DataType, where: str) -> int:
    if raw < 1 << (bits - 1):
        return raw
    if raw < 1 << bits:  # two's complement on the type's width (the reference encoder)
        return raw - (1 << bits)
    if bits < 32 and raw >= (1 << 32) - (1 << (bits - 1)):  # two's complement on 32 bits
        return raw - (1 << 32)
    raise Malformed(f"{where}: {raw} out of range for {datatype.name}")


def _properties(message: pb.Payload.PropertySet, where: str) -> dict[str, Value | None]:
    if len(message.keys) != len(message.values):
        raise Malformed(f"{where}: {len(message.keys)} keys but {len(message.values)} values")
    result: dict[str, Value | None] = {}
    for key, item in zip(message.keys, message.values, strict=True):
        field = item.WhichOneof("value")
        if item.is_null or field is None or field not in _SCALAR_FIELDS:
            result[key] = None
            continue
        datatype = _datatype(item.type, f"{where}.{key}.type")
        value = from_wire(datatype, field, getattr(item, field), f"{where}.{key}")
        result[key] = value
    return result


def finite(value: Value | None) -> bool:
    """False for NaN and infinities (which a host records as a bad reading)."""
    return not isinstance(value, float) or math.isfinite(value)


__all__ = [
    "DataType",
    "Malformed",
    "Metric",
    "Payload",
    "decode_payload",
    "encode_payload",
    "fill_metric",
    "finite",
    "from_wire",
    "set_value",
    "to_wire",
]
