"""The two-way wire pieces as pure data: gateway events, channel messages, relayed messages and
the shadow's merge and delta. Hostile input becomes a stable error, never an exception."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.contract import (
    AlarmRecord,
    Batch,
    ChannelCommand,
    CommandResult,
    DesiredState,
    InvalidBatch,
    ShadowReport,
    WriteRecord,
    batch_from_data,
    batch_to_dict,
    event_to_dict,
    parse_event,
)
from cloud.live import (
    AlarmChanges,
    CommandChange,
    GatewayWake,
    LiveError,
    StoredBatch,
    decode_message,
    encode_message,
)
from cloud.storage.shadow import delta, merge_setpoints, same_value

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["type", "command_id", "state", "id", "ts", "device",
                                        "tag", "value", "outcome", "who", "source", "version",
                                        "desired_version", "agent_version", "finished_at",
                                        "result", "setpoints", "extra"]),
                       json_values | st.sampled_from(["command_result", "write", "reported"]),
                       max_size=12))  # fmt: skip
def test_any_event_parses_or_is_refused_with_a_path(data: dict[str, Any]) -> None:
    refusal: InvalidBatch | None = None
    try:
        parse_event(data)
    except InvalidBatch as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.status == 422
        assert isinstance(refusal.details["path"], list)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_relayed_bytes_decode_or_fail_cleanly(raw: bytes) -> None:
    with contextlib.suppress(LiveError):
        decode_message(raw)


def test_events_round_trip_and_unknown_types_are_counted() -> None:
    events = [
        CommandResult(type="command_result", command_id=4, state="succeeded",
                      result={"read_back": 1.5, "nested": {"a": [1, None]}}, finished_at=9),
        WriteRecord(type="write", id=1, ts=5, device="p", tag="t", value=True, old=False,
                    outcome="written", who="uid 0", source="cli", command_id=4),
        ShadowReport(type="reported", version=3, desired_version=1, agent_version="0.2.0",
                     setpoints={"p": {"t": {"value": "auto", "quality": "good"}}}),
    ]  # fmt: skip
    data = batch_to_dict(Batch("1", 2, 3, events=events))
    data["events"].append({"type": "vibration_spectrum", "whatever": 1})  # a newer gateway's event
    batch = batch_from_data(data)
    assert list(batch.events) == events
    assert batch.ignored_events == 1
    assert [event_to_dict(e) for e in batch.events] == data["events"][:3]


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        ({"type": "command_result", "command_id": "4", "state": "succeeded",
          "finished_at": 1}, ["events", 0, "command_result", "command_id"]),
        ({"type": "command_result", "command_id": 4, "state": "done", "finished_at": 1},
         ["events", 0, "command_result", "state"]),
        ({"type": "command_result", "command_id": 4, "state": "failed", "finished_at": 1,
          "result": {"x": "y" * 20_000}}, ["events", 0, "command_result"]),
        ({"type": "write", "id": 1, "ts": 5, "device": "p", "tag": "t", "value": float("nan"),
          "outcome": "written", "who": "x", "source": "cli"}, ["events", 0, "write", "value"]),
    ],
)  # fmt: skip
def test_bad_events_are_refused_naming_the_field(bad: dict[str, Any], path: list[Any]) -> None:
    with pytest.raises(InvalidBatch) as caught:
        batch_from_data({**batch_to_dict(Batch("1", 2, 3)), "events": [bad]})
    assert caught.value.details["path"][: len(path)] == path


def test_severity_is_a_word_and_old_numbers_still_read() -> None:
    alarm = {"device": "p", "name": "a", "ts": 1}
    base = batch_to_dict(Batch("1", 2, 3))
    words = [batch_from_data({**base, "alarms": [{**alarm, "severity": s}]}).alarms[0].severity
             for s in (1, 2, 3, 4, "critical")]  # fmt: skip
    assert words == ["low", "medium", "high", "critical", "critical"]
    for bad in (0, 5, "urgent", 2.0):
        with pytest.raises(InvalidBatch):
            batch_from_data({**base, "alarms": [{**alarm, "severity": bad}]})
    acked = AlarmRecord(device="p", name="a", ts=1, state="normal", transition="acked",
                        acknowledged_by="uid 1000", comment="checked")  # fmt: skip
    assert batch_from_data(batch_to_dict(Batch("1", 2, 3, alarms=[acked]))).alarms == (acked,)


def test_live_messages_round_trip() -> None:
    for message in (
        GatewayWake(7),
        CommandChange(7, {"id": 1, "state": "queued"}),
        AlarmChanges(7, [{"alarm_id": 3, "state": "active"}]),
        StoredBatch(7, b"\x28\xb5", "application/json", None),
    ):
        assert decode_message(encode_message(message)) == message


def test_channel_messages_refuse_what_the_gateway_must_not_run() -> None:
    good = {
        "id": 1,
        "command": {"kind": "write", "args": {"device": "p", "tag": "t", "value": 3}},
        "created_at": 1,
        "created_by": "key 1",
        "expires_at": 2,
        "expires_in_s": 1.0,
    }
    assert ChannelCommand.model_validate(good).command.kind == "write"
    for change in (
        {"command": {"kind": "format_disk"}},
        {"expires_in_s": -1},
        {"command": {"kind": "write", "args": {"device": "p", "tag": "t"}}},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError
            ChannelCommand.model_validate({**good, **change})
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError
        DesiredState.model_validate({"version": 1, "server_time": 1, "setpoints": {
            "d": {f"t{i}": {"value": 1, "version": 1, "set_at": 1, "set_by": "k"}
                  for i in range(10_001)}}})  # fmt: skip


def test_merge_patch_and_delta() -> None:
    current = merge_setpoints({}, {"p": {"speed": {"value": 10}, "mode": {"value": "auto"}}},
                              version=1, by="key 1", now_us=100)  # fmt: skip
    assert current["p"]["speed"] == {"value": 10, "expires_at": None, "version": 1,
                                     "set_at": 100, "set_by": "key 1"}  # fmt: skip
    patched = merge_setpoints(current, {"p": {"mode": None, "flow": {"value": 2.5,
                                                                     "expires_at": 150}}},
                              version=2, by="key 2", now_us=120)  # fmt: skip
    assert sorted(patched["p"]) == ["flow", "speed"]
    assert patched["p"]["speed"]["version"] == 1  # untouched entries keep their version
    assert merge_setpoints(patched, {"p": None}, version=3, by="k", now_us=1) == {}
    reported = {"setpoints": {"p": {"speed": {"value": 10.000001}, "flow": {"value": 1.0}}}}
    assert delta({"setpoints": patched}, reported, now_us=130) == {"setpoints": {"p": {"flow": {
        "desired": 2.5, "reported": 1.0, "version": 2, "applied": None}}}}  # fmt: skip
    assert delta({"setpoints": patched}, reported, now_us=200) == {"setpoints": {}}  # expired
    assert not same_value(1, True)
    assert not same_value("1", 1)
    assert same_value(1, 1.0)


class _NoDatabase:
    replica = "me"


@settings(max_examples=300)
@given(
    st.text(max_size=80)
    | st.builds(
        lambda t, r, m, d: f"{t}:{r}:{m}:{d}",
        st.integers(),
        st.sampled_from(["me", "other"]),
        st.sampled_from(["i", "l", "x"]),
        st.text(max_size=30),
    )
)
def test_the_hub_survives_any_notification_payload(payload: str) -> None:
    from cloud.hub import Hub  # noqa: PLC0415 - kept beside the one test that needs it
    from cloud.metrics import CloudMetrics  # noqa: PLC0415

    hub = Hub(db=_NoDatabase(), metrics=CloudMetrics())  # type: ignore[arg-type]
    hub._relayed(payload)  # logs and ignores what does not parse
