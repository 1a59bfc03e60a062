"""The TUI's pure parts: rates from counters, bounded histories, the SSE parser, the filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.tui.client import AgentUnavailable, DiscoveryFile, SseParser
from cli.tui.model import (
    AlarmsEvent,
    RateMeter,
    ReadingsEvent,
    TagHistory,
    format_age,
    matches,
)
from edge.api_contract import TagValue


def reading(ts: int, value: float | str, quality: str = "good") -> TagValue:
    return TagValue(device="pump1", tag="flow", ts=ts, value=value, quality=quality, unit="m3/h")


def test_rates_come_from_counter_deltas_and_a_restart_gives_no_negative_rate() -> None:
    meter = RateMeter()
    meter.sample(10.0, {"pump1": 100})
    assert meter.rate("pump1") is None  # one sample is not a rate
    meter.sample(12.0, {"pump1": 300})
    assert meter.rate("pump1") == 100.0
    meter.sample(13.0, {"pump1": 5})  # the driver restarted: counters from 0
    assert meter.rate("pump1") is None
    meter.sample(14.0, {"pump1": 55})
    assert meter.total(["pump1", "unknown"]) == 50.0


def test_history_is_ordered_deduplicated_bounded_and_numeric() -> None:
    history = TagHistory(points=3)
    history.add([reading(2, 2.0), reading(1, 1.0), reading(2, 2.0), reading(3, 3.0)])
    assert history.values("pump1.flow") == [1.0, 2.0, 3.0]
    history.add([reading(4, 4.0), reading(0, 0.0)])  # the newest stays, too old is ignored
    assert history.values("pump1.flow") == [2.0, 3.0, 4.0]
    history.add([reading(5, 9.0, quality="bad"), reading(6, "text")])
    assert history.values("pump1.flow") == [2.0, 3.0, 4.0]


def test_sse_events_are_parsed_and_comments_skipped() -> None:
    parser = SseParser()
    item = {"device": "pump1", "tag": "flow", "ts": 1, "value": 4.5, "quality": "good"}
    change = {"rule": "r", "transition": "raised", "ts": 2}
    lines = [
        ": connected", "", "event: reading", f"data: {json.dumps([item])}", "",
        ": keepalive lost=0", "", "event: alarm", f"data: {json.dumps([change])}", "",
    ]  # fmt: skip
    events = [e for line in lines for e in parser.feed(line)]
    assert isinstance(events[0], ReadingsEvent)
    assert events[0].readings[0].value == 4.5
    assert isinstance(events[1], AlarmsEvent)
    assert events[1].changes[0].transition == "raised"
    assert len(events) == 2


def test_filter_words_all_match_device_tag_or_unit() -> None:
    flow = reading(1, 1.0)
    assert matches(flow, "pump1 flow")
    assert matches(flow, "FLOW m3")
    assert not matches(flow, "pump2 flow")


def test_ages_read_like_a_clock() -> None:
    assert [format_age(s) for s in (0.42, 12, 185, 7800, None)] == [
        "0.4s", "12s", "3m05s", "2h10m", "-"]  # fmt: skip


async def test_a_missing_or_half_written_discovery_file_means_not_running(tmp_path: Path) -> None:
    path = tmp_path / "local_api.json"
    with pytest.raises(AgentUnavailable, match="no "):
        await DiscoveryFile(path).locate()
    path.write_text('{"ur')
    with pytest.raises(AgentUnavailable, match="unreadable"):
        await DiscoveryFile(path).locate()
    path.write_text('{"url": "http://127.0.0.1:4242/"}')
    assert (await DiscoveryFile(path).locate()).url == "http://127.0.0.1:4242"
