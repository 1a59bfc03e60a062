"""The fast PublishResponse decoder against asyncua's own encoder and decoder, byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from protocols.opcua.codec import raw_to_reading, to_reading
from protocols.opcua.wire import DataChanges, NotFast, RawChange, decode_publish_response
from protocols.reading import Quality

T0 = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
T1 = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)
RECEIVED_US = 1_800_000_000_000_000


def _encode(*notifications: object, seq: int = 42, available: list[int] | None = None) -> bytes:
    response = ua.PublishResponse()
    result = response.Parameters
    result.SubscriptionId = 7
    result.AvailableSequenceNumbers = available if available is not None else [40, 41, 42]
    result.MoreNotifications = False
    result.NotificationMessage.SequenceNumber = seq
    result.NotificationMessage.PublishTime = T1
    result.NotificationMessage.NotificationData = list(notifications)
    return struct_to_binary(response)


def _change(handle: int, dv: ua.DataValue) -> ua.MonitoredItemNotification:
    return ua.MonitoredItemNotification(ClientHandle=handle, Value=dv)


PLAIN = [
    ua.DataValue(ua.Variant(12.5, ua.VariantType.Double), SourceTimestamp=T0, ServerTimestamp=T1),
    ua.DataValue(ua.Variant(1.5, ua.VariantType.Float), ServerTimestamp=T1),
    ua.DataValue(ua.Variant(-7, ua.VariantType.Int16)),
    ua.DataValue(ua.Variant(2**64 - 1, ua.VariantType.UInt64), SourceTimestamp=T0),
    ua.DataValue(ua.Variant(-(2**63), ua.VariantType.Int64), SourceTimestamp=T0),
    ua.DataValue(ua.Variant(True, ua.VariantType.Boolean), SourceTimestamp=T0),
    ua.DataValue(ua.Variant(200, ua.VariantType.Byte), SourceTimestamp=T0),
    ua.DataValue(ua.Variant(-3, ua.VariantType.SByte), SourceTimestamp=T0),
    ua.DataValue(ua.Variant(4_000_000_000, ua.VariantType.UInt32), SourceTimestamp=T0),
    ua.DataValue(ua.Variant("Störung ⚠", ua.VariantType.String), SourceTimestamp=T0),
    ua.DataValue(ua.Variant(None, ua.VariantType.String), SourceTimestamp=T0),
    ua.DataValue(
        None, StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure), SourceTimestamp=T0
    ),
    ua.DataValue(
        ua.Variant(3.0, ua.VariantType.Double),
        StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
        SourceTimestamp=T0,
    ),
]


def test_plain_changes_decode_to_the_same_readings_as_asyncua() -> None:
    items = [_change(i, dv) for i, dv in enumerate(PLAIN)]
    data = _encode(ua.DataChangeNotification(MonitoredItems=items))
    fast = decode_publish_response(data)
    slow = struct_from_binary(ua.PublishResponse, Buffer(data))

    assert fast.Parameters.SubscriptionId == slow.Parameters.SubscriptionId == 7
    assert fast.Parameters.AvailableSequenceNumbers == [40, 41, 42]
    assert fast.Parameters.MoreNotifications is False
    assert fast.Parameters.NotificationMessage.SequenceNumber == 42
    assert fast.Parameters.NotificationMessage.PublishTime == T1
    (changes,) = fast.Parameters.NotificationMessage.NotificationData
    assert isinstance(changes, DataChanges)
    (reference,) = slow.Parameters.NotificationMessage.NotificationData
    for raw, item in zip(changes.changes, reference.MonitoredItems, strict=True):
        assert raw.handle == item.ClientHandle
        mine = raw_to_reading("d", "t", raw, RECEIVED_US, "u", True)
        theirs = to_reading("d", "t", item.Value, RECEIVED_US, "u", True)
        assert mine == theirs
        assert type(mine.value) is type(theirs.value)


def test_literal_bytes_of_one_double_change() -> None:
    # ClientHandle 5, mask 0x05 (value, source timestamp), Variant Double 2.0, ticks of 1970-01-01.
    body = (
        (1).to_bytes(4, "little", signed=True)
        + (5).to_bytes(4, "little")
        + b"\x05"
        + b"\x0b"
        + (0x4000000000000000).to_bytes(8, "little")
        + (116_444_736_000_000_000 + 10).to_bytes(8, "little")
        + (0).to_bytes(4, "little", signed=True)  # no DiagnosticInfos
    )
    extension = (
        b"\x01\x00" + (811).to_bytes(2, "little") + b"\x01" + len(body).to_bytes(4, "little") + body
    )
    empty = _encode()  # ... NotificationData count 0, Results count 0, DiagnosticInfos count 0
    data = empty[:-12] + (1).to_bytes(4, "little", signed=True) + extension + empty[-8:]
    (changes,) = decode_publish_response(data).Parameters.NotificationMessage.NotificationData
    assert changes.changes == [RawChange(5, 2.0, 0, 1, 0)]


@pytest.mark.parametrize(
    "notification",
    [
        ua.DataChangeNotification(
            MonitoredItems=[_change(1, ua.DataValue(ua.Variant([1.0, 2.0], ua.VariantType.Double)))]
        ),
        ua.DataChangeNotification(
            MonitoredItems=[
                _change(
                    1, ua.DataValue(ua.Variant(ua.LocalizedText("x"), ua.VariantType.LocalizedText))
                )
            ]
        ),
        ua.DataChangeNotification(
            MonitoredItems=[_change(1, ua.DataValue(ua.Variant(T0, ua.VariantType.DateTime)))]
        ),
        ua.DataChangeNotification(
            MonitoredItems=[
                _change(1, ua.DataValue(ua.Variant(1.0), SourceTimestamp=T0, SourcePicoseconds=5))
            ]
        ),
        ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout)),
        ua.EventNotificationList(
            Events=[ua.EventFieldList(ClientHandle=1, EventFields=[ua.Variant(1)])]
        ),
    ],
)
def test_anything_else_is_left_to_asyncua(notification: object) -> None:
    with pytest.raises(NotFast):
        decode_publish_response(_encode(notification))


def test_keep_alive_has_no_notifications() -> None:
    fast = decode_publish_response(_encode(seq=9, available=[]))
    assert fast.Parameters.NotificationMessage.NotificationData == []
    assert fast.Parameters.NotificationMessage.SequenceNumber == 9
    assert fast.Parameters.AvailableSequenceNumbers == []


def test_null_timestamps_fall_back_to_receive_time() -> None:
    raw = RawChange(1, 4.0, 0, 0, 0)
    reading = raw_to_reading("d", "t", raw, RECEIVED_US, None, False)
    assert (reading.ts, reading.quality) == (RECEIVED_US, Quality.GOOD)


def _decoded(items: list[ua.MonitoredItemNotification]) -> list[int]:
    """Decode `items` both ways; the readings must be equal. Returns the handles."""
    data = _encode(ua.DataChangeNotification(MonitoredItems=items))
    (fast,) = decode_publish_response(data).Parameters.NotificationMessage.NotificationData
    slow = struct_from_binary(ua.PublishResponse, Buffer(data))
    (reference,) = slow.Parameters.NotificationMessage.NotificationData
    for raw, item in zip(fast.changes, reference.MonitoredItems, strict=True):
        assert raw.handle == item.ClientHandle
        mine = raw_to_reading("d", "t", raw, RECEIVED_US, None, False)
        assert mine == to_reading("d", "t", item.Value, RECEIVED_US, None, False)
        assert type(mine.value) is type(to_reading("d", "t", item.Value, 0, None, False).value)
    return [raw.handle for raw in fast.changes]


def _double(value: float, *, server: bool = True) -> ua.DataValue:
    variant = ua.Variant(value, ua.VariantType.Double)
    if server:
        return ua.DataValue(variant, SourceTimestamp=T0, ServerTimestamp=T1)
    return ua.DataValue(variant, SourceTimestamp=T0)


ALIKE = {
    "double, both timestamps": lambda i: _double(i * 0.5),
    "int32, server timestamp": lambda i: ua.DataValue(
        ua.Variant(i, ua.VariantType.Int32), ServerTimestamp=T1
    ),
    "float, uncertain": lambda i: ua.DataValue(
        ua.Variant(float(i), ua.VariantType.Float),
        StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
        SourceTimestamp=T0,
    ),
    "boolean, no timestamps": lambda i: ua.DataValue(ua.Variant(i % 2 == 0)),
}


@pytest.mark.parametrize("kind", list(ALIKE))
def test_a_notification_of_alike_items_decodes_as_asyncua_does(kind: str) -> None:
    """Items that share one layout are unpacked as one array (issue 23): same readings."""
    items = [_change(i, ALIKE[kind](i)) for i in range(300)]
    assert _decoded(items) == list(range(300))


@pytest.mark.parametrize("at", [0, 25, 50])
@pytest.mark.parametrize(
    "odd",
    [
        ua.DataValue(ua.Variant("x", ua.VariantType.String), SourceTimestamp=T0),
        ua.DataValue(ua.Variant(7, ua.VariantType.Int64), SourceTimestamp=T0, ServerTimestamp=T1),
        _double(2.0, server=False),
    ],
)
def test_one_odd_item_among_alike_ones_is_still_decoded_exactly(at: int, odd: object) -> None:
    values = [_double(i * 1.0) for i in range(50)]
    values.insert(at, odd)
    assert _decoded([_change(i, dv) for i, dv in enumerate(values)]) == list(range(51))


@pytest.mark.parametrize("run", [1, 7, 8, 100])
def test_runs_of_different_kinds_decode_exactly(run: int) -> None:
    """A device's items in runs of kinds (Doubles, then Int64s, then Booleans, a String, Floats:
    as a PLC's tags come, and as firmware_sim sends its map tags before its float32 ones) decode
    as asyncua decodes them, whatever the runs' lengths (issue 23)."""
    values: list[ua.DataValue] = []
    for i in range(3):
        values += [_double(i * 10.0 + k) for k in range(run)]
        values += [
            ua.DataValue(
                ua.Variant(k, ua.VariantType.Int64), SourceTimestamp=T0, ServerTimestamp=T1
            )
            for k in range(run)
        ]
        values += [ua.DataValue(ua.Variant(k % 2 == 1), SourceTimestamp=T0) for k in range(run)]
        values.append(ua.DataValue(ua.Variant("s", ua.VariantType.String), SourceTimestamp=T0))
        values += [ALIKE["float, uncertain"](k) for k in range(run)]
    assert _decoded([_change(i, dv) for i, dv in enumerate(values)]) == list(range(len(values)))
