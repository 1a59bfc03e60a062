"""A host's view of other edge nodes, fed with messages the reference implementation builds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.reading import Quality
from protocols.sparkplug.host import HostSession
from protocols.sparkplug.payload import decode_payload
from tests.protocols.sparkplug import tahu

T = tahu.MetricDataType
NOW_MS = 1_700_000_000_000
NOW_US = NOW_MS * 1000


def nbirth(bd_seq: int = 3) -> bytes:
    message = tahu.payload(seq=0, timestamp=NOW_MS)
    tahu.add(message, "bdSeq", None, T.Int64, bd_seq, NOW_MS)
    tahu.add(message, "Node Control/Rebirth", None, T.Boolean, False, NOW_MS)
    temp = tahu.add(message, "Ambient/Temp", 1, T.Float, 21.5, NOW_MS)
    temp.properties.keys.append("engUnit")
    temp.properties.values.add(type=T.String, string_value="degC")
    data: bytes = message.SerializeToString()
    return data


def dbirth(seq: int = 1) -> bytes:
    message = tahu.payload(seq=seq, timestamp=NOW_MS)
    tahu.add(message, "speed", 10, T.Int16, -20, NOW_MS)
    tahu.add(message, "running", 11, T.Boolean, True, NOW_MS)
    data: bytes = message.SerializeToString()
    return data


def data(seq: int, *metrics: tuple[int, int, object], ts: int = NOW_MS + 1000) -> bytes:
    message = tahu.payload(seq=seq, timestamp=ts)
    for alias, datatype, value in metrics:
        tahu.add(message, None, alias, datatype, value, ts)
    result: bytes = message.SerializeToString()
    return result


def ndeath(bd_seq: int) -> bytes:
    message = tahu.payload(seq=None)
    tahu.add(message, "bdSeq", None, T.Int64, bd_seq, NOW_MS)
    result: bytes = message.SerializeToString()
    return result


def born() -> HostSession:
    host = HostSession(group="g1", rebirth_interval_us=5_000_000)
    assert host.receive("spBv1.0/g1/NBIRTH/gw", nbirth(), NOW_US).refused is None
    assert host.receive("spBv1.0/g1/DBIRTH/gw/pump", dbirth(), NOW_US).refused is None
    return host


def test_births_declare_metrics_and_their_values_become_readings() -> None:
    host = HostSession(group="g1")
    node = host.receive("spBv1.0/g1/NBIRTH/gw", nbirth(), NOW_US)
    assert [(r.device, r.tag, r.value, r.unit, r.ts) for r in node.readings] == [
        ("gw", "Ambient/Temp", 21.5, "degC", NOW_US)
    ]
    device = host.receive("spBv1.0/g1/DBIRTH/gw/pump", dbirth(), NOW_US)
    assert {(r.device, r.tag, r.value) for r in device.readings} == {
        ("gw/pump", "speed", -20),
        ("gw/pump", "running", True),
    }


def test_data_by_alias_resolves_names_types_and_units_from_the_births() -> None:
    host = born()
    node = host.receive("spBv1.0/g1/NDATA/gw", data(2, (1, T.Float, 22.0)), NOW_US)
    device = host.receive("spBv1.0/g1/DDATA/gw/pump", data(3, (10, T.Int16, -7)), NOW_US)
    assert [(r.tag, r.value, r.unit, r.quality) for r in node.readings] == [
        ("Ambient/Temp", 22.0, "degC", Quality.GOOD)
    ]
    assert [(r.device, r.tag, r.value) for r in device.readings] == [("gw/pump", "speed", -7)]
    assert node.rebirths == device.rebirths == []


def test_an_unknown_alias_refuses_the_message_and_asks_for_a_rebirth_once() -> None:
    host = born()
    first = host.receive("spBv1.0/g1/DDATA/gw/pump", data(2, (99, T.Int16, 1)), NOW_US)
    again = host.receive("spBv1.0/g1/DDATA/gw/pump", data(3, (99, T.Int16, 1)), NOW_US + 1000)
    assert first.refused is not None
    assert "unknown alias 99; rebirth requested" in first.refused
    assert [r.topic for r in first.rebirths] == ["spBv1.0/g1/NCMD/gw"]
    command = decode_payload(first.rebirths[0].payload).metrics[0]
    assert (command.name, command.value) == ("Node Control/Rebirth", True)
    assert again.refused is not None
    assert again.rebirths == []  # within rebirth_interval_us


def test_a_seq_gap_keeps_the_data_and_asks_for_a_rebirth() -> None:
    host = born()
    outcome = host.receive("spBv1.0/g1/NDATA/gw", data(5, (1, T.Float, 23.0)), NOW_US)
    assert [r.value for r in outcome.readings] == [23.0]
    assert "seq 5 where 2 was expected" in outcome.rebirths[0].reason


def test_seq_wraps_from_255_to_0() -> None:
    host = born()
    outcomes = [
        host.receive("spBv1.0/g1/NDATA/gw", data(seq % 256, (1, T.Float, 1.0)), NOW_US)
        for seq in range(2, 300)
    ]
    assert all(not o.rebirths and o.refused is None for o in outcomes)


def test_data_without_a_birth_asks_for_one() -> None:
    host = HostSession(group="g1")
    outcome = host.receive("spBv1.0/g1/NDATA/gw", data(7, (1, T.Float, 1.0)), NOW_US)
    assert outcome.refused is not None
    assert "without a current NBIRTH" in outcome.refused
    assert [r.topic for r in outcome.rebirths] == ["spBv1.0/g1/NCMD/gw"]


def test_ndeath_marks_the_node_and_its_devices_bad_with_the_reason() -> None:
    host = born()
    outcome = host.receive("spBv1.0/g1/NDEATH/gw", ndeath(3), NOW_US + 5)
    assert {(r.device, r.tag) for r in outcome.readings} == {
        ("gw", "Ambient/Temp"),
        ("gw/pump", "speed"),
        ("gw/pump", "running"),
    }
    assert all(r.quality is Quality.BAD for r in outcome.readings)
    assert all(r.reason == "edge node gw offline (NDEATH)" for r in outcome.readings)
    assert {r.tag: r.value for r in outcome.readings}["speed"] == -20  # the last value


def test_a_late_will_of_an_older_session_is_ignored() -> None:
    host = born()
    assert host.receive("spBv1.0/g1/NDEATH/gw", ndeath(2), NOW_US).readings == []
    alive = host.receive("spBv1.0/g1/NDATA/gw", data(2, (1, T.Float, 1.0)), NOW_US)
    assert alive.refused is None


def test_ddeath_marks_only_that_device_bad() -> None:
    host = born()
    message = tahu.payload(seq=2, timestamp=NOW_MS + 9)
    outcome = host.receive("spBv1.0/g1/DDEATH/gw/pump", message.SerializeToString(), NOW_US)
    assert {(r.device, r.quality, r.reason) for r in outcome.readings} == {
        ("gw/pump", Quality.BAD, "device pump offline (DDEATH)")
    }


def test_historical_metrics_keep_their_own_timestamps() -> None:
    host = born()
    message = tahu.payload(seq=2, timestamp=NOW_MS + 60_000)
    tahu.add(message, None, 1, T.Float, 19.0, NOW_MS - 3_600_000, historical=True)
    tahu.add(message, None, 1, T.Float, 20.0, NOW_MS + 60_000)
    outcome = host.receive("spBv1.0/g1/NDATA/gw", message.SerializeToString(), NOW_US)
    assert [(r.ts, r.value) for r in outcome.readings] == [
        ((NOW_MS - 3_600_000) * 1000, 19.0),
        ((NOW_MS + 60_000) * 1000, 20.0),
    ]


def test_quality_property_and_null_values_become_reading_quality() -> None:
    host = born()
    message = tahu.payload(seq=2, timestamp=NOW_MS)
    metric = tahu.add(message, None, 10, T.Int16, 5, NOW_MS)
    metric.properties.keys.append("Quality")
    metric.properties.values.add(type=T.Int32, int_value=0)
    tahu.add_null(message, None, 11, T.Boolean).timestamp = NOW_MS
    outcome = host.receive("spBv1.0/g1/DDATA/gw/pump", message.SerializeToString(), NOW_US)
    assert [(r.tag, r.quality, r.reason) for r in outcome.readings] == [
        ("speed", Quality.BAD, None),
        ("running", Quality.BAD, "null value"),
    ]


def test_a_timestamp_far_in_the_future_refuses_the_message() -> None:
    host = born()
    far = NOW_MS + 3_600_000
    outcome = host.receive("spBv1.0/g1/NDATA/gw", data(2, (1, T.Float, 1.0), ts=far), NOW_US)
    assert outcome.refused is not None
    assert "in the future" in outcome.refused


def test_other_groups_and_non_sparkplug_topics_are_refused() -> None:
    host = born()
    assert "not this host's group" in (
        host.receive("spBv1.0/g2/NDATA/x", b"", NOW_US).refused or ""
    )
    assert "namespace" in (host.receive("plant/x", b"", NOW_US).refused or "")
    assert host.receive("spBv1.0/STATE/scada", b"{}", NOW_US).refused is None


@settings(max_examples=300)
@given(
    kind=st.sampled_from(["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD"]),
    payload=st.binary(max_size=200),
)
def test_hostile_messages_never_raise(kind: str, payload: bytes) -> None:
    host = born()
    device = "/pump" if kind.startswith("D") else ""
    outcome = host.receive(f"spBv1.0/g1/{kind}/gw{device}", payload, NOW_US)
    assert outcome.refused is None or outcome.readings == []
