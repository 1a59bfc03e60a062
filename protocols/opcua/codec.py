"""Pure OPC UA mapping: node id strings, DataValues to readings, values to Variants.

No I/O here. The driver resolves namespace URIs against the server's NamespaceArray once per
session and then calls these functions on every notification, so they are written for the hot
path (one branch per common type, no per-value allocations beyond the `Reading` itself).

Node id strings follow OPC UA Part 6, 5.3.1.10 (the XML/text form):

    nsu=urn:tagway:firmware-sim;s=pump1.flow     namespace by URI (persisted; resolved at connect)
    ns=2;s=pump1.flow                            namespace by index (fragile across restarts)
    i=2258                                       namespace 0 implied
    g=09087e75-8e5e-499b-954f-f2a9603db28a       GUID
    b=M/RbKBsRVkePCePcx24oRA==                   opaque (base64)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from asyncua import ua

from protocols.errors import CodecError
from protocols.opcua.config import TimestampSource
from protocols.opcua.nodeid import NodeIdSpec
from protocols.opcua.wire import RawChange
from protocols.reading import Quality, Reading, Value, datetime_to_us

_BAD_NO_VALUE_REASON: Final = "no value"

# Integer VariantTypes and their inclusive ranges: a setpoint out of range is refused here
# rather than wrapped silently by the binary encoder.
_INT_RANGES: Final[dict[ua.VariantType, tuple[int, int]]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
_FLOAT_TYPES: Final = frozenset({ua.VariantType.Float, ua.VariantType.Double})

# DataType NodeIds (namespace 0) that are subtypes of a built-in type: Part 3, 8 and Part 6, 5.1.
_DATA_TYPE_ALIASES: Final[dict[int, ua.VariantType]] = {
    290: ua.VariantType.Double,  # Duration
    294: ua.VariantType.DateTime,  # UtcTime
    295: ua.VariantType.String,  # LocaleId
    289: ua.VariantType.UInt32,  # Counter
    26: ua.VariantType.Double,  # Number: abstract; Double is the lossless choice for setpoints
    27: ua.VariantType.Int64,  # Integer (abstract)
    28: ua.VariantType.UInt64,  # UInteger (abstract)
    29: ua.VariantType.Int32,  # Enumeration: encoded as Int32 (Part 6, 5.2.4)
}


def resolve_node_id(spec: NodeIdSpec, namespace_array: Sequence[str]) -> ua.NodeId:
    """Build the wire NodeId, mapping a namespace URI to this server's current index.

    Raises `CodecError` if the URI is not in the server's NamespaceArray.
    """
    index = spec.namespace_index
    if spec.namespace_uri is not None:
        try:
            index = list(namespace_array).index(spec.namespace_uri)
        except ValueError:
            served = list(namespace_array)
            raise CodecError(
                f"namespace {spec.namespace_uri!r} is not served (server has {served})"
            ) from None
    if index is None:  # parse_node_id always sets a URI or an index
        raise CodecError(f"node id spec {spec!r} has neither namespace URI nor index")
    # NodeId infers the most compact encoding (two-byte, four-byte, ...) from the identifier.
    return ua.NodeId(spec.identifier, index)


def quality_of(status: ua.StatusCode | None) -> Quality:
    """The quality of an OPC UA StatusCode by its severity bits (None means Good)."""
    if status is None:
        return Quality.GOOD
    return Quality.from_opcua_status(status.value)


def timestamp_us(dv: ua.DataValue, received_us: int) -> int:
    """SourceTimestamp if present, else ServerTimestamp, else the receive time (µs since epoch)."""
    moment = dv.SourceTimestamp or dv.ServerTimestamp
    if not isinstance(moment, datetime):
        return received_us
    return utc_us(moment)


def utc_us(moment: datetime) -> int:
    """µs since the epoch of an OPC UA DateTime; naive ones are UTC (as the wire is). Never
    raises: a moment that cannot be expressed at all counts as 0 (the epoch), which the
    plausibility check of the pipeline then treats as the implausible clock it is."""
    try:
        return datetime_to_us(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    except (ValueError, OverflowError):
        return 0


def plain_value(raw: object) -> Value | None:  # noqa: PLR0911 - one exit per wire type reads best
    """Convert a decoded Variant value to a `Value`; None if the type has no plain form."""
    # bool before int: bool is a subclass of int and must stay a bool.
    if isinstance(raw, bool | float | str):
        return raw
    if isinstance(raw, int):
        return int(raw)  # IntEnum and friends become plain ints
    if isinstance(raw, ua.LocalizedText):
        return raw.Text or ""
    if isinstance(raw, datetime):
        return utc_us(raw)
    if isinstance(raw, ua.QualifiedName):
        return raw.Name or ""
    if isinstance(raw, uuid.UUID):
        return str(raw)
    return None


def to_reading(  # noqa: PLR0917 - hot path: positional, like the Reading tuple it builds
    device: str,
    tag: str,
    dv: ua.DataValue,
    received_us: int,
    unit: str | None,
    simulated: bool,
    stamp: TimestampSource = "source",
) -> Reading:
    """Map one DataValue to a `Reading`; never raises (a value that cannot be mapped is bad).

    `stamp` picks the clock: ``source`` (SourceTimestamp, else ServerTimestamp, else
    `received_us`), ``server`` (ServerTimestamp, else `received_us`) or ``gateway``.
    """
    status = dv.StatusCode
    quality = Quality.GOOD if status is None else Quality.from_opcua_status(status.value)
    reason = None if quality is Quality.GOOD else status_reason(status)
    variant = dv.Value
    raw = None if variant is None else variant.Value
    value = plain_value(raw)
    if value is None:
        if raw is not None:
            quality, reason = Quality.BAD, f"unsupported value type {type(raw).__name__}"
        elif quality is Quality.GOOD:
            quality, reason = Quality.BAD, _BAD_NO_VALUE_REASON
        value = 0
    if stamp == "source":
        ts = timestamp_us(dv, received_us)
    elif stamp == "server" and isinstance(dv.ServerTimestamp, datetime):
        ts = utc_us(dv.ServerTimestamp)
    else:
        ts = received_us
    return Reading(device, tag, ts, value, quality, unit, simulated, reason)


def raw_to_reading(  # noqa: PLR0917 - hot path: positional, like the Reading tuple it builds
    device: str,
    tag: str,
    change: RawChange,
    received_us: int,
    unit: str | None,
    simulated: bool,
    stamp: TimestampSource = "source",
) -> Reading:
    """`to_reading` for a change decoded by `protocols.opcua.wire` (same rules, plain ints)."""
    status = change.status
    if status == 0:
        quality, reason = Quality.GOOD, None
    else:
        quality = Quality.from_opcua_status(status)
        reason = None if quality is Quality.GOOD else status_reason(ua.StatusCode(status))
    value = change.value
    if value is None:
        if quality is Quality.GOOD:
            quality, reason = Quality.BAD, _BAD_NO_VALUE_REASON
        value = 0
    if stamp == "source":
        ts = change.source_us or change.server_us or received_us
    elif stamp == "server":
        ts = change.server_us or received_us
    else:
        ts = received_us
    return Reading(device, tag, ts, value, quality, unit, simulated, reason)


def status_reason(status: ua.StatusCode | None) -> str:
    """A short operator-readable reason for a non-good status, e.g. ``"opcua BadNodeIdUnknown"``."""
    if status is None:
        return "opcua Good"
    return f"opcua {status.name} (0x{status.value:08X})"


def variant_type_of(data_type: ua.NodeId) -> ua.VariantType:
    """The built-in VariantType for a node's DataType attribute; raises `CodecError` if unknown."""
    if data_type.NamespaceIndex == 0 and isinstance(data_type.Identifier, int):
        ident = data_type.Identifier
        if 1 <= ident <= 25:
            return ua.VariantType(ident)
        if ident in _DATA_TYPE_ALIASES:
            return _DATA_TYPE_ALIASES[ident]
    raise CodecError(f"data type {data_type.to_string()} cannot be written as a plain value")


def to_variant(value: Value, variant_type: ua.VariantType) -> ua.Variant:
    """Encode a setpoint as the node's own type; raises `CodecError` if it does not fit."""
    if variant_type is ua.VariantType.Boolean:
        if isinstance(value, bool):
            return ua.Variant(value, variant_type)
        if isinstance(value, int) and value in (0, 1):
            return ua.Variant(bool(value), variant_type)
    elif variant_type in _INT_RANGES:
        number = _integral(value)
        low, high = _INT_RANGES[variant_type]
        if number is not None and low <= number <= high:
            return ua.Variant(number, variant_type)
    elif variant_type in _FLOAT_TYPES:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return ua.Variant(float(value), variant_type)
    elif variant_type is ua.VariantType.String and isinstance(value, str):
        return ua.Variant(value, variant_type)
    raise CodecError(f"value {value!r} cannot be written as OPC UA {variant_type.name}")


def _integral(value: Value) -> int | None:
    if isinstance(value, bool | str):
        return None
    if isinstance(value, int):
        return value
    if value.is_integer():
        return int(value)
    return None
