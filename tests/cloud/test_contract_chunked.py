"""Batch format 2 (a header and the gateway's outbox chunks): what goes in comes out, the same as
format 1 would carry it, within the same limits; damaged or hostile chunks are a 4xx, never
anything else. And the real API stores both formats."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.contract import (
    CHUNKS,
    MSGPACK,
    AlarmRecord,
    Batch,
    CommandResult,
    ContractError,
    InvalidBatch,
    LeasedChunk,
    Limits,
    PayloadTooLarge,
    SeriesColumns,
    batch_to_dict,
    decode_batch,
    encode_batch,
    encode_chunk_batch,
)
from cloud.contract.chunk import encode, encode_records
from protocols.reading import Quality, Reading
from tests.cloud.conftest import Cloud, now_us

T0 = 1_795_000_000_000_000
QUALITIES = list(Quality)


@st.composite
def flushes(draw: st.DrawFn) -> list[list[Reading]]:
    """One to three flushes of readings; each series keeps one kind of value (numbers or text)."""
    names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                    max_size=12)  # fmt: skip
    series = draw(st.lists(st.tuples(names, names, st.booleans()), min_size=1, max_size=5,
                           unique_by=lambda s: (s[0], s[1])))  # fmt: skip
    numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64),
                        st.integers(-(2**31), 2**31), st.booleans())  # fmt: skip
    out = []
    for _ in range(draw(st.integers(1, 3))):
        flush = []
        for device, tag, text in series:
            for _ in range(draw(st.integers(0, 4))):
                value = draw(names if text else numbers)
                ts = draw(st.integers(T0 - 10**12, T0 + 10**12))
                flush.append(Reading(device, tag, ts, value, draw(st.sampled_from(QUALITIES))))
        if flush:
            out.append(flush)
    return out or [[Reading("d", "t", T0, 1.0)]]


def as_rows(batch: Batch) -> list[tuple[str, str, int, Any, int]]:
    """The batch's readings, in order: (device, tag, ts, value, quality code)."""
    rows = []
    for s in batch.series:
        qualities = s.qualities if s.qualities is not None else [0] * len(s)
        for ts, value, q in zip(s.ts, s.values, qualities, strict=True):
            rows.append((s.device, s.tag, int(ts), value if isinstance(value, str)
                         else float(value), int(q)))  # fmt: skip
    return rows


def chunk_body(flushes: list[list[Reading]], alarms: Sequence[AlarmRecord] = ()) -> bytes:
    chunks = [LeasedChunk("telemetry", len(f), encode(f)) for f in flushes]
    if alarms:
        chunks.insert(0, LeasedChunk("alarm", len(alarms), encode_records(alarms)))
        done = CommandResult(type="command_result", command_id=9, state="succeeded",
                             finished_at=T0)  # fmt: skip
        chunks.insert(1, LeasedChunk("event", 1, encode_records([], [done])))
    return encode_chunk_batch(gateway_id="7", seq=3, created_at=T0, dropped={"telemetry": 2},
                              chunks=chunks)  # fmt: skip


def expected(flushes: list[list[Reading]]) -> list[tuple[str, str, int, Any, int]]:
    """What the codec promises: each flush series by series, each series in arrival order;
    text series carry text, numbers float64 (float32 where exact), qualities as codes."""
    codes = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
    out = []
    for flush in flushes:
        order = list(dict.fromkeys((r.device, r.tag) for r in flush))
        for key in order:
            for r in (r for r in flush if (r.device, r.tag) == key):
                value = r.value if isinstance(r.value, str) else float(r.value)
                out.append((r.device, r.tag, r.ts, value, codes[r.quality]))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flushes())
def test_what_the_gateway_commits_is_what_the_cloud_decodes(batches: list[list[Reading]]) -> None:
    alarm = AlarmRecord(device="pump1", name="flow_high", ts=T0, tag="flow", severity="high",
                        message="flow above 10", value=12.5, transition="raised")  # fmt: skip
    batch = decode_batch(chunk_body(batches, [alarm]), content_type=CHUNKS)
    assert (batch.gateway_id, batch.seq, batch.created_at, batch.version) == ("7", 3, T0, 2)
    assert dict(batch.dropped) == {"telemetry": 2}
    assert list(batch.alarms) == [alarm]
    assert [(e.type, e.command_id) for e in batch.events] == [("command_result", 9)]
    assert as_rows(batch) == expected(batches)
    # The same readings in format 1 decode to the same rows: one Batch, whatever the format.
    plain = encode_batch(dataclasses.replace(batch, version=1))
    again = decode_batch(plain, content_type=MSGPACK, content_encoding="zstd")
    assert as_rows(again) == as_rows(batch)


def valid_chunk() -> bytes:
    return encode([Reading("pump1", f"t{i}", T0 + i, float(i)) for i in range(50)])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_damaged_chunk_is_a_4xx_never_a_crash(data: st.DataObject) -> None:
    payload = bytearray(valid_chunk())
    raw = bytearray(zstandard.ZstdDecompressor().decompress(bytes(payload)))
    target = data.draw(st.sampled_from(["compressed", "raw", "garbage"]))
    if target == "garbage":
        damaged = data.draw(st.binary(max_size=300))
    else:
        buffer = payload if target == "compressed" else raw
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(buffer) - 1))
            buffer[at] = data.draw(st.integers(0, 255))
        damaged = bytes(payload) if target == "compressed" else zstandard.ZstdCompressor().compress(
            bytes(raw))  # fmt: skip
    lane = data.draw(st.sampled_from(["telemetry", "alarm"]))
    body = encode_chunk_batch(gateway_id="7", seq=1, created_at=T0, dropped={},
                              chunks=[LeasedChunk(lane, 50, damaged)])  # fmt: skip
    with contextlib.suppress(ContractError):  # a 413/415/422; anything else fails the test
        decode_batch(body, content_type=CHUNKS)


def test_limits_hold_across_the_chunks_of_a_batch() -> None:
    flush = [Reading("pump1", f"t{i}", T0, float(i)) for i in range(60)]
    body = chunk_body([flush, flush])
    decode_batch(body, content_type=CHUNKS, limits=Limits(max_readings=120, max_series=60))
    with pytest.raises(PayloadTooLarge, match="readings"):
        decode_batch(body, content_type=CHUNKS, limits=Limits(max_readings=119))
    wider = [Reading("pump2", f"t{i}", T0, float(i)) for i in range(60)]
    with pytest.raises(PayloadTooLarge, match="series"):
        decode_batch(chunk_body([flush, wider]), content_type=CHUNKS,
                     limits=Limits(max_series=100))  # fmt: skip
    with pytest.raises(PayloadTooLarge, match="decompresses past"):
        decode_batch(body, content_type=CHUNKS, limits=Limits(max_decompressed_bytes=2_000))


def test_a_non_finite_value_in_a_chunk_is_refused_with_its_place() -> None:
    from cloud.contract import chunk  # noqa: PLC0415

    raw = zstandard.ZstdDecompressor().decompress(chunk.encode([Reading("p", "t", T0, 1.0)]))
    # One float32 value: its shuffled column is its four little-endian bytes.
    forged = raw.replace(np.float32(1.0).tobytes(), np.float32("nan").tobytes())
    assert forged != raw
    body = encode_chunk_batch(gateway_id="7", seq=1, created_at=T0, dropped={}, chunks=[
        LeasedChunk("telemetry", 1, zstandard.ZstdCompressor().compress(forged))])  # fmt: skip
    with pytest.raises(InvalidBatch, match="not finite") as refused:
        decode_batch(body, content_type=CHUNKS)
    assert refused.value.path[:2] == ("chunks", 0)


@pytest.mark.integration
async def test_the_api_stores_both_formats(cloud: Cloud) -> None:
    tenant = await cloud.tenant("plant-a")
    gateway_id, token = await cloud.gateway(tenant)
    now = now_us()
    old = Batch(str(gateway_id), 1, now, [SeriesColumns("pump1", "flow", [now - 2, now - 1],
                                                        [1.0, 2.0])])  # fmt: skip
    assert (await cloud.post(token, encode_batch(old))).status_code == 200
    readings = [Reading("pump1", "flow", now, 3.0), Reading("pump1", "mode", now, "AUTO")]
    later = [Reading("pump1", "flow", now + 1, 4.0)]  # the same series in a second chunk
    body = encode_chunk_batch(gateway_id=str(gateway_id), seq=2, created_at=now, dropped={},
                              chunks=[LeasedChunk("telemetry", 2, encode(readings)),
                                      LeasedChunk("telemetry", 1, encode(later))])  # fmt: skip
    answer = await cloud.post(token, body, content_type=CHUNKS, content_encoding="identity")
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 3
    again = await cloud.post(token, body, content_type=CHUNKS, content_encoding="identity")
    assert again.json()["duplicate"] is True
    series = {(s["device"], s["tag"]): s["id"]
              for s in (await cloud.get(tenant.admin, "/v1/series")).json()}  # fmt: skip
    points = (await cloud.get(tenant.admin, f"/v1/series/{series['pump1', 'flow']}/raw",
                              start=0, end=now + 2)).json()["points"]  # fmt: skip
    assert [p["value"] for p in points] == [1.0, 2.0, 3.0, 4.0]
    assert batch_to_dict(old)["version"] == 1
