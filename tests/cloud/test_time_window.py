"""A device with a clock far off costs only its own readings: the cloud refuses them one by one,
stores the rest of the batch, and says what it refused (on every backend)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cloud.contract import (
    CHUNKS,
    JSON,
    AlarmRecord,
    Batch,
    LeasedChunk,
    SeriesColumns,
    encode_batch,
    encode_chunk_batch,
    refuse_out_of_window,
)
from cloud.contract import chunk as codec
from tests.cloud.conftest import Cloud, make_batch, now_us
from tests.cloud.test_api_ingest import _stored

Y2000 = 946_684_800_000_000  # a PLC whose clock reset to 2000-01-01
SECONDS_AS_MS = 1_764_000_000 * 1_000  # epoch seconds read as milliseconds: January 1970
DAY = 86_400_000_000


def _mixed_chunk_body(gateway_id: int, seq: int, now: int) -> bytes:
    """One chunk, as a gateway's outbox holds it: two good devices, and one whose clock is off
    (two readings from 2000, one from 1970, one a day ahead), plus one good reading of it."""
    rows = [("pump1", "flow", now - i * 1_000_000, 10.0 + i, "good", "m3/h", False, None)
            for i in range(5)]  # fmt: skip
    rows += [("tank1", "level", now - i * 1_000_000, 70.0 + i, "good", "%", False, None)
             for i in range(5)]  # fmt: skip
    rows += [
        ("plc7", "temp", Y2000, 21.5, "good", "degC", False, None),
        ("plc7", "temp", Y2000 + 1_000_000, 21.6, "good", "degC", False, None),
        ("plc7", "temp", SECONDS_AS_MS, 21.7, "good", "degC", False, None),
        ("plc7", "temp", now + DAY, 21.8, "good", "degC", False, None),
        ("plc7", "temp", now, 21.9, "good", "degC", False, None),
    ]
    data = codec.encode(rows)
    return encode_chunk_batch(gateway_id=str(gateway_id), seq=seq, created_at=now, dropped={},
                              chunks=[LeasedChunk("telemetry", len(rows), data)])  # fmt: skip


def _by_series(answer: dict[str, Any]) -> dict[tuple[str, str, str], int]:
    return {(s["device"], s["tag"], s["reason"]): s["count"] for s in answer["refused_series"]}


async def test_a_wrong_clock_refuses_its_readings_not_the_chunk(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    body = _mixed_chunk_body(gw[0], 1, now_us())
    r = await cloud.post(gw[1], body, content_type=CHUNKS, content_encoding="identity")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["readings"], answer["stored"], answer["refused"]) == (15, 11, 4)
    assert _by_series(answer) == {
        ("plc7", "temp", "too far in the past"): 3,
        ("plc7", "temp", "too far in the future"): 1,
    }
    first = {s["reason"]: s["first_ts"] for s in answer["refused_series"]}
    assert first["too far in the past"] == Y2000
    stored = await _stored(cloud, tenant)
    assert stored["counts"] == {("pump1", "flow"): 5, ("tank1", "level"): 5, ("plc7", "temp"): 1}
    assert stored["readings"] == 11

    # The gateway retries after a lost answer: the same batch, no conflict, the same refusals.
    again = await cloud.post(gw[1], body, content_type=CHUNKS, content_encoding="identity")
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert _by_series(again.json()) == _by_series(answer)
    assert (await _stored(cloud, tenant))["readings"] == 11


async def test_an_old_gateways_batch_is_stored_without_its_far_off_readings(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    good = json.loads(
        encode_batch(make_batch(gw[0], 1), content_type=JSON, content_encoding="identity")
    )
    good["series"][1]["ts"][-1] -= 10**18  # one reading of pump1/pressure from before 1970
    good["alarms"] = [{"device": "pump1", "tag": "flow", "name": "hi", "kind": "alarm",
                       "state": "active", "ts": SECONDS_AS_MS, "severity": "high",
                       "message": "", "value": 1.0}]  # fmt: skip
    r = await cloud.post(gw[1], json.dumps(good).encode(), content_type=JSON,
                         content_encoding="identity")  # fmt: skip
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["stored"], answer["refused"], answer["refused_alarms"]) == (19, 1, 1)
    assert _by_series(answer) == {("pump1", "pressure", "too far in the past"): 1}
    stored = await _stored(cloud, tenant)
    assert stored["counts"] == {("pump1", "flow"): 10, ("pump1", "pressure"): 9}


def test_the_window_keeps_text_and_qualities_of_the_readings_inside() -> None:
    now = 10**15
    series = [
        SeriesColumns("d", "mode", np.array([now, 0, now + 1]), ("A", "B", "C"), np.array([0, 1, 2],
                      dtype=np.int8)),
        SeriesColumns("d", "t", np.array([0, 1]), np.array([1.0, 2.0])),
    ]  # fmt: skip
    alarm = AlarmRecord(device="d", name="x", ts=now)
    inside, refusals = refuse_out_of_window(
        Batch("1", 1, now, series, [alarm]), now_us=now, max_future_us=10, max_age_us=10**12
    )
    (mode,) = inside.series
    assert (mode.tag, list(mode.ts), list(mode.values)) == ("mode", [now, now + 1], ["A", "C"])
    assert mode.qualities is not None
    assert list(mode.qualities) == [0, 2]
    assert inside.alarms == (alarm,)
    assert (refusals.readings, refusals.alarms) == (3, 0)
