"""The Sparkplug topic namespace."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.sparkplug.topic import (
    BadTopic,
    MessageType,
    StateTopic,
    Topic,
    check_id,
    parse_topic,
)


def test_node_and_device_topics_parse_and_print_back() -> None:
    node = parse_topic("spBv1.0/plant1/NBIRTH/gw1")
    device = parse_topic("spBv1.0/plant1/DDATA/gw1/pump 1")
    assert node == Topic("plant1", MessageType.NBIRTH, "gw1")
    assert device == Topic("plant1", MessageType.DDATA, "gw1", "pump 1")
    assert str(device) == "spBv1.0/plant1/DDATA/gw1/pump 1"
    assert parse_topic("spBv1.0/STATE/scada") == StateTopic("scada")
    assert str(StateTopic("scada")) == "spBv1.0/STATE/scada"


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("spAv1.0/g/NDATA/n", "not in the spBv1.0 namespace"),
        ("spBv1.0/g/NDATA", "has 3 levels"),
        ("spBv1.0/g/XDATA/n", "'XDATA' is not a Sparkplug message type"),
        ("spBv1.0/g/NDATA/n/d", "NDATA takes no device level"),
        ("spBv1.0/g/DDATA/n", "DDATA takes a device level"),
        ("spBv1.0//NDATA/n", "empty level"),
        ("spBv1.0/STATE/", "bad host id"),
    ],
)
def test_bad_topics_say_why(topic: str, reason: str) -> None:
    parsed = parse_topic(topic)
    assert isinstance(parsed, BadTopic)
    assert reason in parsed.reason


@given(st.text(max_size=60))
def test_any_string_parses_or_says_why(topic: str) -> None:
    parsed = parse_topic(topic)
    if isinstance(parsed, Topic):
        assert str(parsed) == topic


def test_ids_refuse_topic_separators_and_wildcards() -> None:
    assert check_id("line 2", field="group") == "line 2"
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(ValueError, match="group"):
            check_id(bad, field="group")
