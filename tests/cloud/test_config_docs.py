"""The cloud's handling of config documents and fleet messages as pure functions: redaction,
parsing of documents and labels, the fleet events, and health assessment. Property tests feed
them hostile input: they answer a value or our own error, never anything else."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.config_docs import REDACTED, diff, parse_document, parse_label, probation_s, redact
from cloud.contract import InvalidBatch, StatusReport, parse_event
from cloud.errors import InvalidRequest
from cloud.health import HealthPolicy, assess

SECRET_KEYS = ("password", "password_hash", "token", "client_secret", "api_key")
keys = st.sampled_from(["name", "host", "port", "users", "tags", "x", *SECRET_KEYS])
scalars = st.one_of(
    st.integers(-1000, 1000), st.text(max_size=20), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=25,
)


def _secrets(node: Any, found: list[Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SECRET_KEYS:
                found.append(value)
            else:
                _secrets(value, found)
    elif isinstance(node, list):
        for item in node:
            _secrets(item, found)


def _shape(node: Any) -> Any:
    """The document with every secret's value replaced, for comparing what is left."""
    if isinstance(node, dict):
        return {k: REDACTED if k in SECRET_KEYS else _shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return node


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(keys, documents, min_size=1, max_size=5),
       flow=st.booleans())  # fmt: skip
def test_redaction_removes_every_secret_and_keeps_everything_else(
    doc: dict[str, Any], flow: bool
) -> None:
    text = yaml.safe_dump(doc, default_flow_style=flow, sort_keys=False)
    shown = redact(text)
    assert yaml.safe_load(shown) == _shape(doc)


def test_redaction_keeps_comments_and_layout() -> None:
    text = (
        "# broker users\nmqtt_broker:\n  users:\n"
        "    - {username: tank1, password_hash: \"$argon2id$abc\"}  # tank\n"
        "cloud: {url: https://c.example}\n"
    )  # fmt: skip
    assert redact(text) == text.replace('"$argon2id$abc"', f'"{REDACTED}"')


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_any_text_is_a_document_or_one_clear_refusal(text: str) -> None:
    try:
        data = parse_document(text, path=["body", "document"])
    except InvalidRequest as exc:
        path = exc.details["path"]
        assert path == ["body", "document"]
    else:
        assert isinstance(data, dict)
        assert probation_s(data) > 0
    assert isinstance(redact(text), str)


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_a_label_is_key_equals_value_or_refused(text: str) -> None:
    try:
        key, value = parse_label(text, path=["body", "label"])
    except InvalidRequest:
        return
    assert f"{key}={value}" == text


def test_probation_comes_from_the_fleet_section_within_bounds() -> None:
    assert probation_s({"fleet": {"probation": 12}}) == 12.0
    for odd in ({"fleet": {"probation": -3}}, {"fleet": {"probation": True}}, {"fleet": 5}, {}):
        assert probation_s(odd) == 60.0


def test_a_diff_names_both_versions() -> None:
    text = diff("a: 1\n", "a: 2\n", old_name="version 1", new_name="version 2")
    assert text.splitlines()[:2] == ["--- version 1", "+++ version 2"]
    assert "-a: 1" in text
    assert "+a: 2" in text
    assert diff("a: 1\n", "a: 1\n", old_name="x", new_name="y") == ""


events = st.fixed_dictionaries(
    {"type": st.sampled_from(["status", "config"])},
    optional={
        "seq": st.one_of(st.integers(), st.text(max_size=3)),
        "ts": st.integers(), "agent_version": st.text(max_size=5), "uptime_s": st.floats(),
        "digest": st.sampled_from(["a" * 64, "xyz"]), "outcome": st.text(max_size=12),
        "drivers": st.lists(st.dictionaries(st.sampled_from(["name", "state", "last_error"]),
                                            st.text(max_size=10)), max_size=3),
        "running_digest": st.just("b" * 64), "managed": st.sampled_from(["cloud", "nobody"]),
        "at": st.integers(), "problems": st.lists(st.dictionaries(st.text(max_size=5),
                                                                  scalars), max_size=2),
    },
)  # fmt: skip


@settings(max_examples=300)
@given(events)
def test_fleet_events_parse_or_name_the_bad_field(data: dict[str, Any]) -> None:
    try:
        parse_event(data)
    except InvalidBatch as exc:
        path = exc.details["path"]
        assert isinstance(path, list)


POLICY = HealthPolicy(backlog_age_s=300, disk_free_min_percent=5, clock_offset_max_s=5)


def _status(**extra: Any) -> StatusReport:
    base: dict[str, Any] = {"type": "status", "seq": 1, "ts": 1, "agent_version": "1",
                            "uptime_s": 1.0}  # fmt: skip
    return StatusReport(**(base | extra))


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"drivers": [{"name": "p1", "state": "backoff", "last_error": "refused"}]},
         "driver p1 is backoff: refused"),
        ({"drivers": [{"name": "p1", "state": "connecting", "last_error": "timeout"}]},
         "driver p1 is connecting: timeout"),
        ({"backlog_oldest_s": 301.0}, "backlog is 301 s old (limit 300 s)"),
        ({"disk_free_bytes": 4, "disk_total_bytes": 100}, "outbox disk nearly full (4.0% free)"),
        ({"outbox_bytes": 95, "outbox_quota_bytes": 100}, "outbox at 95% of its quota"),
        ({"clock_synchronized": False}, "clock not synchronized"),
        ({"clock_offset_s": -7.5}, "clock off by -7.5 s"),
    ],
)  # fmt: skip
def test_each_cause_of_degradation_is_named(extra: dict[str, Any], reason: str) -> None:
    health, reasons = assess(_status(**extra), POLICY)
    assert (health, [r.text for r in reasons]) == ("degraded", [reason])


def test_a_gateway_coming_up_is_healthy() -> None:
    status = _status(
        drivers=[{"name": "p1", "state": "connecting"}, {"name": "p2", "state": "connected"}],
        backlog_oldest_s=299.0, disk_free_bytes=6, disk_total_bytes=100, clock_offset_s=4.9,
        clock_synchronized=True,
    )  # fmt: skip
    assert assess(status, POLICY) == ("healthy", [])
