"""The wire contract: round trips, limits and refusals, as pure bytes in and out."""

from __future__ import annotations

import gzip
import json

import msgpack
import pytest
import zstandard

from cloud.contract import (
    JSON,
    MSGPACK,
    AlarmRecord,
    Batch,
    InvalidBatch,
    Limits,
    PayloadTooLarge,
    SeriesColumns,
    UnsupportedEncoding,
    batch_to_dict,
    decode_batch,
    encode_batch,
)


def _batch(n: int = 5) -> Batch:
    return Batch(
        gateway_id="7",
        seq=3,
        created_at=1_700_000_000_000_000,
        series=[
            SeriesColumns(
                "pump1", "flow", list(range(1000, 1000 + n)), [1.5] * n, [0] * (n - 1) + [2], "m3/h"
            ),
            SeriesColumns("pump1", "mode", [1, 2], ["auto", "manual"]),
        ],
        alarms=[AlarmRecord(device="pump1", name="flow_high", ts=1000, tag="flow", value=9.0)],
        dropped={"telemetry": 12},
    )


@pytest.mark.parametrize("content_type", [JSON, MSGPACK, "application/x-msgpack"])
@pytest.mark.parametrize("encoding", ["identity", "zstd", "gzip"])
def test_round_trip_every_encoding(content_type: str, encoding: str) -> None:
    body = encode_batch(_batch(), content_type=content_type, content_encoding=encoding)
    decoded = decode_batch(body, content_type=content_type, content_encoding=encoding)
    assert decoded.gateway_id == "7"
    assert decoded.seq == 3
    flow, mode = decoded.series
    assert flow.ts.tolist() == [1000, 1001, 1002, 1003, 1004]  # type: ignore[union-attr]
    assert flow.values.tolist() == [1.5] * 5  # type: ignore[union-attr]
    assert flow.qualities.tolist() == [0, 0, 0, 0, 2]  # type: ignore[union-attr]
    assert flow.unit == "m3/h"
    assert mode.values == ("auto", "manual")
    assert mode.is_text
    assert decoded.alarms[0].value == 9.0
    assert decoded.alarms[0].state == "active"
    assert decoded.dropped == {"telemetry": 12}
    assert decoded.reading_count == 7


def test_bools_and_ints_become_numbers() -> None:
    data = batch_to_dict(Batch("1", 0, 0, [SeriesColumns("d", "t", [1, 2, 3], [True, 2, 3.5])]))
    decoded = decode_batch(json.dumps(data).encode(), content_type=JSON)
    assert decoded.series[0].values.tolist() == [1.0, 2.0, 3.5]  # type: ignore[union-attr]


def _raw(data: object, content_type: str = JSON) -> Batch:
    body = json.dumps(data).encode() if content_type == JSON else msgpack.packb(data)
    return decode_batch(body, content_type=content_type)


def _with_series(**fields: object) -> dict[str, object]:
    series = {"device": "d", "tag": "t", "ts": [1, 2], "values": [1.0, 2.0]} | fields
    return {"version": 1, "gateway_id": "1", "seq": 1, "created_at": 0, "series": [series]}


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"values": [1.0, float("nan")]}, ["series", 0, "values", 1]),
        ({"values": [float("inf"), 1.0]}, ["series", 0, "values", 0]),
        ({"ts": [1, 2.5]}, ["series", 0, "ts", 1]),
        ({"ts": [1, "2"]}, ["series", 0, "ts", 1]),
        ({"values": [1.0, "x"]}, ["series", 0, "values", 1]),
        ({"values": ["x", 1.0]}, ["series", 0, "values", 1]),
        ({"values": [1.0, None]}, ["series", 0, "values", 1]),
        ({"values": [1.0]}, ["series", 0, "values"]),
        ({"qualities": [0, 3]}, ["series", 0, "qualities", 1]),
        ({"device": ""}, ["series", 0, "device"]),
        ({"tag": 5}, ["series", 0, "tag"]),
        ({"colour": "red"}, ["series", 0, "colour"]),
    ],
)
def test_bad_fields_name_their_path(fields: dict[str, object], path: list[object]) -> None:
    with pytest.raises(InvalidBatch) as caught:
        _raw(_with_series(**fields))
    assert caught.value.details["path"] == path
    assert caught.value.status == 422


def test_nan_in_msgpack_is_refused_with_its_index() -> None:
    with pytest.raises(InvalidBatch) as caught:
        _raw(_with_series(values=[1.0, float("nan")]), MSGPACK)
    assert caught.value.details["path"] == ["series", 0, "values", 1]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"version": 2, "gateway_id": "1", "seq": 1, "created_at": 0}, ["version"]),
        ({"version": 1, "gateway_id": "1", "seq": -1, "created_at": 0}, ["seq"]),
        ({"version": 1, "gateway_id": "1", "seq": "1", "created_at": 0}, ["seq"]),
        ({"version": 1, "gateway_id": 1, "seq": 1, "created_at": 0}, ["gateway_id"]),
        ([1, 2], []),
    ],
)
def test_bad_envelope(data: object, path: list[object]) -> None:
    with pytest.raises(InvalidBatch) as caught:
        _raw(data)
    assert caught.value.details["path"] == path


def test_malformed_bodies() -> None:
    with pytest.raises(InvalidBatch, match="not valid JSON"):
        decode_batch(b"{not json", content_type=JSON)
    with pytest.raises(InvalidBatch, match="not valid msgpack"):
        decode_batch(b"\xc1\xc1", content_type=MSGPACK)
    with pytest.raises(InvalidBatch, match="not valid zstd"):
        decode_batch(b"garbage", content_type=JSON, content_encoding="zstd")
    with pytest.raises(InvalidBatch, match="not valid gzip"):
        decode_batch(b"garbage", content_type=JSON, content_encoding="gzip")


def test_unknown_encodings_are_415() -> None:
    with pytest.raises(UnsupportedEncoding):
        decode_batch(b"{}", content_type="text/plain")
    with pytest.raises(UnsupportedEncoding):
        decode_batch(b"{}", content_type=JSON, content_encoding="br")
    with pytest.raises(UnsupportedEncoding):
        decode_batch(b"{}", content_type=None)


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_zip_bomb_stops_at_the_cap(encoding: str) -> None:
    bomb_size = 512 * 1024 * 1024  # 512 MiB of zeros, a few hundred KiB compressed
    limits = Limits(max_decompressed_bytes=1024 * 1024)
    if encoding == "zstd":
        compressor = zstandard.ZstdCompressor(level=1).compressobj()
        chunk = b"\0" * (16 * 1024 * 1024)
        body = b"".join(compressor.compress(chunk) for _ in range(32)) + compressor.flush()
    else:
        body = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=1)
        bomb_size = 64 * 1024 * 1024
    assert len(body) < bomb_size // 100
    with pytest.raises(PayloadTooLarge) as caught:
        decode_batch(body, content_type=JSON, content_encoding=encoding, limits=limits)
    assert caught.value.status == 413


def test_limits_on_body_and_readings() -> None:
    body = encode_batch(_batch(50), content_type=JSON, content_encoding="identity")
    with pytest.raises(PayloadTooLarge):
        decode_batch(body, content_type=JSON, limits=Limits(max_body_bytes=100))
    with pytest.raises(PayloadTooLarge, match="readings exceed"):
        decode_batch(body, content_type=JSON, limits=Limits(max_readings=10))


def test_simulated_flag_round_trips_and_is_checked() -> None:
    batch = Batch("gw", 1, 0, series=[SeriesColumns("pump1", "flow", [1], [2.0], simulated=True)])
    body = encode_batch(batch, content_type=JSON, content_encoding="identity")
    assert decode_batch(body, content_type=JSON).series[0].simulated is True
    bad = body.replace(b'"simulated":true', b'"simulated":"yes"')
    with pytest.raises(InvalidBatch, match="simulated must be true or false"):
        decode_batch(bad, content_type=JSON)
