"""Every status and asset_paths event the agent writes fits the cloud's decode budget of one
chunk (16 MiB decompressed), whatever the contract alone would admit: 5,000 paths of 1,100
four-byte characters, 5,000 drivers with 4,096-character errors."""

from __future__ import annotations

import random

import zstandard

from cloud.contract import (
    CHUNKS,
    AssetPaths,
    DriverStatus,
    LeasedChunk,
    Limits,
    StatusReport,
    decode_batch,
    encode_chunk_batch,
)
from cloud.contract.chunk import encode_records
from edge.fleet.status import MAX_EVENT_TEXT_BYTES, bounded_drivers, bounded_paths

T0 = 1_700_000_000_000_000


def _decoded(event: AssetPaths | StatusReport) -> tuple[int, object]:
    data = encode_records([], [event])
    raw = len(zstandard.ZstdDecompressor().decompress(data))
    body = encode_chunk_batch(gateway_id="7", seq=1, created_at=T0, dropped={},
                              chunks=[LeasedChunk("event", 1, data)])  # fmt: skip
    return raw, decode_batch(body, content_type=CHUNKS).events[0]


def test_the_widest_asset_paths_stay_inside_the_budget() -> None:
    wide = "\U0001d538"  # 4 bytes of UTF-8
    paths = {f"{i:05d}" + wide * 195: "/".join([f"{i:05d}" + wide * 200] * 5)[:1_100]
             for i in range(5_000)}  # fmt: skip
    kept = bounded_paths(paths)
    assert 2_000 < len(kept) < 5_000
    assert list(kept) == sorted(paths)[: len(kept)]  # the first by name, whole
    raw, event = _decoded(AssetPaths(type="asset_paths", seq=1, at=T0, devices=kept))
    assert MAX_EVENT_TEXT_BYTES - 6_000 < raw < Limits().max_chunk_decompressed_bytes
    assert event.devices == kept  # type: ignore[attr-defined]
    ascii_paths = {f"d{i:05d}".ljust(200, "x"): "a/" * 549 + "z" for i in range(5_000)}
    assert bounded_paths(ascii_paths) == ascii_paths  # plain names and paths: all of them


def test_a_status_of_5000_failing_drivers_stays_inside_the_budget() -> None:
    rng = random.Random(5)
    drivers = [DriverStatus(name=f"plc{i:04d}" + "\u00e9" * 190, protocol="modbus",
                            state="backoff", last_error="".join(rng.choices("abcdefgh", k=4_000)))
               for i in range(5_000)]  # fmt: skip
    kept = bounded_drivers(drivers)
    assert [d.name for d in kept] == [d.name for d in drivers]
    assert all(0 < len(d.last_error or "") < 4_000 for d in kept)
    status = StatusReport(type="status", seq=1, ts=T0, agent_version="1", uptime_s=1.0,
                          drivers=kept)  # fmt: skip
    raw, event = _decoded(status)
    assert raw < Limits().max_chunk_decompressed_bytes
    assert event == status
    few = drivers[:10]
    assert bounded_drivers(few) == few  # errors cut only when the whole would not fit
    assert len(bounded_drivers(drivers * 2)) == 5_000
