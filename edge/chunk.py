"""Chunks: the encoded unit the pipeline commits to the outbox and the uplink sends.

A chunk holds the readings of one flush, grouped by series into columns, packed with msgpack and
compressed with zstd. Columns compress far better than rows: the timestamps of one poll are
equal, qualities are almost always 0, and values of one tag move slowly. Timestamps are stored as
offsets from the chunk's first timestamp; numeric values as float32 when every value of the chunk
survives the round trip exactly (Modbus float32 registers and small integers do), float64
otherwise, byte-shuffled so zstd sees the slowly changing high bytes together.

Format version 1 (msgpack map, then zstd)::

    {"v": 1, "t0": <µs>,
     "series": {"device": [...], "tag": [...], "unit": [...], "sim": [...],
                "count": [...], "text": [indexes of series holding strings]},
     "ts": <int32/int64 offsets, little-endian bytes>, "tsw": 4|8,
     "num": <shuffled float bytes>, "numw": 4|8, "txt": [str, ...],
     "q": <int8 bytes> | None}

Readings appear series by series, in the order the series first appeared in the flush.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import numpy as np
import numpy.typing as npt
import zstandard

from protocols.reading import Quality, Reading

FORMAT_VERSION: Final = 1
_Q = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
_ZSTD_LEVEL: Final = 3  # measured: levels above 3 cost much more CPU for little gain here


class ChunkError(ValueError):
    """A chunk cannot be decoded (unknown version or damaged); the message says which."""


@dataclass(frozen=True, slots=True)
class ChunkSeries:
    """The decoded readings of one series in one chunk."""

    device: str
    tag: str
    unit: str | None
    simulated: bool
    ts: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64] | list[str]
    qualities: npt.NDArray[np.int8]


def encode(readings: list[Reading]) -> bytes:
    """Encode one flush of readings into a compressed chunk.

    Written for throughput: the readings are transposed into columns with `zip(*readings)` (C
    speed, since `Reading` is a tuple), grouped by series with a stable numpy sort, and only the
    rare text values take a per-reading Python path.
    """
    if not readings:
        raise ValueError("a chunk needs at least one reading")
    devices, tags, stamps, values, qualities, units, simulated, _ = zip(*readings, strict=True)
    # Each reading gets the position where its series first appeared (setdefault keeps the
    # first); np.unique then numbers the series densely, in order of first appearance.
    index: dict[tuple[str, str], int] = {}
    first_seen = np.fromiter(
        map(index.setdefault, zip(devices, tags, strict=True), itertools.count()),
        dtype=np.int64,
        count=len(readings),
    )
    _, firsts, sids = np.unique(first_seen, return_index=True, return_inverse=True)
    sids = sids.astype(np.int64)
    order = np.argsort(sids, kind="stable")
    counts = np.bincount(sids)
    ts = np.asarray(stamps, dtype=np.int64)[order]
    t0 = int(ts.min())
    offsets = ts - t0
    narrow = bool(offsets.max() < 2**31)
    value_types = set(map(type, values))
    text_series: set[int] = set()
    if str in value_types:
        text_series = {int(sids[i]) for i, v in enumerate(values) if isinstance(v, str)}
    first = firsts.tolist()
    series = {
        "device": [devices[i] for i in first], "tag": [tags[i] for i in first],
        "unit": [units[i] for i in first], "sim": [simulated[i] for i in first],
        "count": counts.tolist(), "text": sorted(text_series),
    }  # fmt: skip
    ordered_values = [values[i] for i in order.tolist()] if text_series else None
    numbers, texts = _value_columns(values, order, sids, text_series, ordered_values)
    # NaN and ±inf are not values: a device that sends them is not measuring. They become bad
    # readings (value 0, reason lost in the chunk) so the cloud, which refuses non-finite
    # values, never refuses a whole batch for one sensor.
    not_finite = ~np.isfinite(numbers)
    codes_ordered: npt.NDArray[np.int8] | None = None
    if qualities.count(Quality.GOOD) != len(qualities):
        codes = np.fromiter(map(_Q.__getitem__, qualities), dtype=np.int8, count=len(qualities))
        codes_ordered = codes[order]
    if not_finite.any():
        numbers = np.where(not_finite, 0.0, numbers)
        if codes_ordered is None:
            codes_ordered = np.zeros(len(readings), dtype=np.int8)
        codes_ordered[_numeric_positions(sids[order], text_series)[not_finite]] = 2
    num_bytes, width = _shuffle(numbers)
    quality_bytes = codes_ordered.tobytes() if codes_ordered is not None else None
    payload: dict[str, Any] = {
        "v": FORMAT_VERSION, "t0": t0, "series": series,
        "ts": offsets.astype("<i4" if narrow else "<i8").tobytes(), "tsw": 4 if narrow else 8,
        "num": num_bytes, "numw": width, "txt": texts, "q": quality_bytes,
    }  # fmt: skip
    raw: bytes = msgpack.packb(payload, use_bin_type=True)
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)


def _numeric_positions(
    ordered_sids: npt.NDArray[np.int64], text_series: set[int]
) -> npt.NDArray[np.int64]:
    """Positions (in series order) of the readings that hold numbers, in numeric-column order."""
    if not text_series:
        return np.arange(len(ordered_sids), dtype=np.int64)
    is_text = np.isin(ordered_sids, np.fromiter(text_series, dtype=np.int64))
    return np.flatnonzero(~is_text).astype(np.int64)


def _value_columns(
    values: tuple[Any, ...],
    order: npt.NDArray[np.int64],
    sids: npt.NDArray[np.int64],
    text_series: set[int],
    ordered_values: list[Any] | None,
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """The numeric column (series order, text series left out) and the text column."""
    if not text_series:
        return np.asarray(values, dtype=np.float64)[order], []
    assert ordered_values is not None  # noqa: S101 - computed together with text_series
    ordered_sids = sids[order].tolist()
    numbers = [float(v) for v, s in zip(ordered_values, ordered_sids, strict=True)
               if s not in text_series]  # fmt: skip
    texts = [str(v) for v, s in zip(ordered_values, ordered_sids, strict=True) if s in text_series]
    return np.asarray(numbers, dtype=np.float64), texts


def decode(chunk: bytes) -> list[ChunkSeries]:
    """Decode a chunk into its series; raise `ChunkError` if it is damaged or unknown."""
    try:
        data = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(chunk), raw=False)
        if data["v"] != FORMAT_VERSION:
            raise ChunkError(f"chunk format version {data['v']} is not supported")
        offsets = np.frombuffer(data["ts"], dtype="<i4" if data["tsw"] == 4 else "<i8")
        ts = offsets.astype(np.int64) + int(data["t0"])
        numbers = _unshuffle(data["num"], int(data["numw"]))
        qualities = (
            np.frombuffer(data["q"], dtype=np.int8)
            if data["q"] is not None
            else np.zeros(len(ts), dtype=np.int8)
        )
        return _split(data, ts, numbers, qualities)
    except (KeyError, TypeError, ValueError, zstandard.ZstdError, msgpack.UnpackException) as exc:
        if isinstance(exc, ChunkError):
            raise
        raise ChunkError(f"chunk cannot be decoded: {exc}") from exc


def decode_plain(chunk: bytes) -> list[dict[str, Any]]:
    """Decode a telemetry chunk straight into the wire contract's series dicts (plain lists).

    The uplink's fast path: each column becomes one Python list, and series are list slices;
    no per-series numpy arrays (a gateway sends thousands of one-reading series per batch).
    """
    try:
        data = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(chunk), raw=False)
        if data["v"] != FORMAT_VERSION:
            raise ChunkError(f"chunk format version {data['v']} is not supported")
        offsets = np.frombuffer(data["ts"], dtype="<i4" if data["tsw"] == 4 else "<i8")
        stamps: list[int] = (offsets.astype(np.int64) + int(data["t0"])).tolist()
        numbers: list[float] = _unshuffle(data["num"], int(data["numw"])).tolist()
        codes: list[int] | None = list(data["q"]) if data["q"] is not None else None
        table, texts = data["series"], data["txt"]
        text = set(table["text"])
        rows = zip(table["device"], table["tag"], table["unit"], table["sim"], table["count"],
                   strict=True)  # fmt: skip
    except (KeyError, TypeError, ValueError, zstandard.ZstdError, msgpack.UnpackException) as exc:
        if isinstance(exc, ChunkError):
            raise
        raise ChunkError(f"chunk cannot be decoded: {exc}") from exc
    out: list[dict[str, Any]] = []
    at = num_at = txt_at = 0
    for sid, (device, tag, unit, simulated, count) in enumerate(rows):
        item: dict[str, Any] = {"device": device, "tag": tag, "ts": stamps[at : at + count]}
        if sid in text:
            item["values"] = texts[txt_at : txt_at + count]
            txt_at += count
        else:
            item["values"] = numbers[num_at : num_at + count]
            num_at += count
        if codes is not None and any(codes[at : at + count]):
            item["qualities"] = codes[at : at + count]
        if unit is not None:
            item["unit"] = unit
        if simulated:
            item["simulated"] = True
        out.append(item)
        at += count
    return out


def decode_readings(chunk: bytes) -> list[Reading]:
    """Decode a chunk back into readings (for export and tests; the uplink uses `decode`)."""
    out: list[Reading] = []
    for s in decode(chunk):
        values: list[Any] = s.values if isinstance(s.values, list) else s.values.tolist()
        for ts, value, q in zip(s.ts.tolist(), values, s.qualities.tolist(), strict=True):
            quality = Quality.from_code(q)
            out.append(Reading(s.device, s.tag, ts, value, quality, s.unit, s.simulated))
    return out


def _split(
    data: dict[str, Any],
    ts: npt.NDArray[np.int64],
    numbers: npt.NDArray[np.float64],
    qualities: npt.NDArray[np.int8],
) -> list[ChunkSeries]:
    out: list[ChunkSeries] = []
    at = num_at = txt_at = 0
    table = data["series"]
    text = set(table["text"])
    rows = zip(table["device"], table["tag"], table["unit"], table["sim"], table["count"],
               strict=True)  # fmt: skip
    for sid, (device, tag, unit, simulated, count) in enumerate(rows):
        is_text = sid in text
        values: npt.NDArray[np.float64] | list[str]
        if is_text:
            values = list(data["txt"][txt_at : txt_at + count])
            txt_at += count
        else:
            values = numbers[num_at : num_at + count]
            num_at += count
        out.append(
            ChunkSeries(
                device, tag, unit, bool(simulated), ts[at : at + count], values,
                qualities[at : at + count],
            )
        )  # fmt: skip
        at += count
    if at != len(ts) or num_at != len(numbers) or len(qualities) != len(ts):
        raise ChunkError("chunk columns do not add up: the chunk is damaged")
    return out


def _shuffle(values: npt.NDArray[np.float64]) -> tuple[bytes, int]:
    """Narrow to float32 when exact, then group bytes by significance (a byte shuffle)."""
    if len(values) == 0:
        return b"", 8
    with np.errstate(over="ignore"):  # values beyond float32's range simply stay float64
        narrow = values.astype(np.float32)
    if np.array_equal(narrow.astype(np.float64), values, equal_nan=True):
        column: npt.NDArray[Any] = narrow.astype("<f4")
    else:
        column = values.astype("<f8")
    width = column.dtype.itemsize
    planes = column.view(np.uint8).reshape(-1, width).T
    return np.ascontiguousarray(planes).tobytes(), width


def _unshuffle(data: bytes, width: int) -> npt.NDArray[np.float64]:
    if not data:
        return np.zeros(0, dtype=np.float64)
    planes = np.frombuffer(data, dtype=np.uint8).reshape(width, -1)
    column = np.ascontiguousarray(planes.T).view("<f4" if width == 4 else "<f8").ravel()
    return column.astype(np.float64)


def encode_records(records: list[dict[str, Any]]) -> bytes:
    """Encode alarm or event records (contract-shaped dicts) into a chunk for those lanes."""
    if not records:
        raise ValueError("a chunk needs at least one record")
    payload = {"v": FORMAT_VERSION, "records": records}
    raw: bytes = msgpack.packb(payload, use_bin_type=True)
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)


def decode_records(chunk: bytes) -> list[dict[str, Any]]:
    """Decode an alarm or event chunk; raise `ChunkError` if it is damaged or unknown."""
    try:
        data = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(chunk), raw=False)
        if data["v"] != FORMAT_VERSION:
            raise ChunkError(f"chunk format version {data['v']} is not supported")
        records: list[dict[str, Any]] = data["records"]
    except (KeyError, TypeError, ValueError, zstandard.ZstdError, msgpack.UnpackException) as exc:
        if isinstance(exc, ChunkError):
            raise
        raise ChunkError(f"record chunk cannot be decoded: {exc}") from exc
    return records
