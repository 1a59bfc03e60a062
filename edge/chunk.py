"""Chunks: the encoded unit the pipeline commits to the outbox and the uplink sends.

A chunk holds the readings of one flush, grouped by series into columns, packed with msgpack and
compressed with zstd. Columns compress far better than rows: the timestamps of one poll are
equal, qualities are almost always 0, and values of one tag move slowly. Timestamps are stored as
offsets from the chunk's first timestamp. Numeric values are stored per series as float32 when
every value of that series survives the round trip exactly (Modbus float32 registers, PLC REALs
and small integers do), float64 otherwise; each column is byte-shuffled so zstd sees the slowly
changing high bytes together.

Format version 2 (msgpack map, then zstd)::

    {"v": 2, "t0": <µs>,
     "series": {"device": [[name, repeat], ...], "tag": [shared, suffix, ...],
                "unit": [[unit, repeat], ...], "sim": [[bool, repeat], ...], "count": [...],
                "text": [ids of series holding strings, delta-coded],
                "wide": [ids of numeric series stored as float64, delta-coded]},
     "ts": <int32/int64 offsets from t0, delta-coded, little-endian bytes>, "tsw": 4|8,
     "num": <shuffled float32 bytes>, "num8": <shuffled float64 bytes>, "txt": [str, ...],
     "q": <int8 bytes> | None}

Version 1 (written by 0.1.0) had one numeric column, "num", of width "numw" for every series;
chunks of both versions decode, so an outbox written by the previous release still drains.
Readings appear series by series, in the order the series first appeared in the flush.

The codec is plain Python over `array` and byte slicing (both run in C): it keeps numpy, and
its memory, out of a gateway that runs no models.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress, count, groupby, repeat
from operator import itemgetter
from typing import Any, Final

import msgpack
import zstandard

from edge.errors import EdgeError
from protocols.reading import Quality, Reading

FORMAT_VERSION: Final = 2  # telemetry chunks
RECORDS_VERSION: Final = 1  # alarm and event chunks (unchanged since 0.1.0)
_READABLE_VERSIONS: Final = frozenset({1, 2})
_Q = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
_BAD: Final = 2
_ZSTD_LEVEL: Final = 3  # measured: levels above 3 cost much more CPU for little gain here
_SWAP: Final = sys.byteorder != "little"  # the format is little-endian
# Fields of a `Reading` (a tuple), fetched at C speed.
_SERIES, _DEVICE, _TAG, _TS = itemgetter(0, 1), itemgetter(0), itemgetter(1), itemgetter(2)
_VALUE, _QUALITY, _UNIT, _SIMULATED = itemgetter(3), itemgetter(4), itemgetter(5), itemgetter(6)


class ChunkError(EdgeError, ValueError):
    """A chunk cannot be decoded (unknown version or damaged); the message says which."""


@dataclass(frozen=True, slots=True)
class ChunkSeries:
    """The decoded readings of one series in one chunk."""

    device: str
    tag: str
    unit: str | None
    simulated: bool
    ts: list[int]
    values: list[float] | list[str]
    qualities: list[int]


def encode(readings: list[Reading]) -> bytes:
    """Encode one flush of readings into a compressed chunk.

    Written for throughput: every step is one C-level pass over the flush (`map` with
    `itemgetter`, `dict.fromkeys`, `sorted`), the grouping sort is skipped when the flush is
    already in series order, and only the rare text values take a per-reading Python path.
    """
    if not readings:
        raise ValueError("a chunk needs at least one reading")
    keys = list(map(_SERIES, readings))
    # Series ids, dense and in order of first appearance.
    index = dict(zip(dict.fromkeys(keys), count()))
    rows: list[Reading] | tuple[Reading, ...] = readings
    if len(index) == len(keys):  # one reading per series: a flush shorter than the poll interval
        counts = [1] * len(keys)
        ordered_sids: list[int] | range = range(len(keys))
    else:
        sids = list(map(index.__getitem__, keys))
        if any(map(int.__gt__, sids, sids[1:])):  # group by series, keeping time order within
            rows = itemgetter(*sorted(range(len(sids)), key=sids.__getitem__))(readings)
            ordered_sids = sorted(sids)
        else:
            ordered_sids = sids
        tally = Counter(sids)
        counts = [tally[sid] for sid in range(len(index))]
    firsts = itemgetter(*accumulate(counts[:-1], initial=0))(rows) if len(counts) > 1 else rows[:1]
    stamps = list(map(_TS, rows))
    values = list(map(_VALUE, rows))
    qualities = list(map(_QUALITY, rows))
    t0 = min(stamps)
    offsets = list(map(t0.__rsub__, stamps))  # each in [0, 2**63)
    narrow_ts = max(offsets) < 2**31
    text_series: set[int] = set()
    if str in set(map(type, values)):
        text_series = set(compress(ordered_sids, map(isinstance, values, repeat(str))))
    codes: bytearray | None = None
    if qualities.count(Quality.GOOD) != len(qualities):
        codes = bytearray(map(_Q.__getitem__, qualities))
    numbers, texts, numeric_sids, codes = _value_columns(values, ordered_sids, text_series, codes)
    narrow, wide, wide_series = _split_widths(numbers, numeric_sids)
    series = {
        "device": _runs(map(_DEVICE, firsts)), "tag": _front_code(tuple(map(_TAG, firsts))),
        "unit": _runs(map(_UNIT, firsts)), "sim": _runs(map(_SIMULATED, firsts)),
        "count": counts, "text": _deltas(sorted(text_series)), "wide": _deltas(wide_series),
    }  # fmt: skip
    payload: dict[str, Any] = {
        "v": FORMAT_VERSION, "t0": t0, "series": series,
        "ts": _pack("i" if narrow_ts else "q", _deltas(offsets)), "tsw": 4 if narrow_ts else 8,
        "num": _shuffle(_pack("f", narrow), 4), "num8": _shuffle(_pack("d", wide), 8),
        "txt": texts, "q": bytes(codes) if codes is not None else None,
    }  # fmt: skip
    raw: bytes = msgpack.packb(payload, use_bin_type=True)
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)


def _value_columns(
    values: list[Any], sids: Sequence[int], text_series: set[int], codes: bytearray | None
) -> tuple[list[float], list[str], Sequence[int], bytearray | None]:
    """The numeric column (series order, text series left out), the text column, the series id
    of each numeric value, and the quality codes with non-finite numbers marked bad.

    NaN and ±inf are not values: a device that sends them is not measuring. They become bad
    readings (value 0, reason lost in the chunk) so the cloud, which refuses non-finite values,
    never refuses a whole batch for one sensor.
    """
    positions: list[int] | None = None  # position of each number among all readings
    numeric_sids: Sequence[int] = sids
    if text_series:
        is_text = [sid in text_series for sid in sids]
        texts = [str(v) for v in compress(values, is_text)]
        is_number = [not flag for flag in is_text]
        numbers = list(map(float, compress(values, is_number)))
        numeric_sids = list(compress(sids, is_number))
        positions = list(compress(range(len(values)), is_number))
    else:
        texts, numbers = [], list(map(float, values))
    if not all(map(math.isfinite, numbers)):
        if codes is None:
            codes = bytearray(len(values))
        for at, number in enumerate(numbers):
            if not math.isfinite(number):
                numbers[at] = 0.0
                codes[positions[at] if positions is not None else at] = _BAD
    return numbers, texts, numeric_sids, codes


def _split_widths(
    numbers: list[float], numeric_sids: Sequence[int]
) -> tuple[list[float], list[float], list[int]]:
    """Split the numeric column into float32-exact series and the rest (float64)."""
    narrowed = array("f", numbers).tolist()  # beyond float32's range a value becomes ±inf
    if narrowed == numbers:  # the common case: every series narrows
        return numbers, [], []
    inexact = map(float.__ne__, narrowed, numbers)
    wide_series = set(compress(numeric_sids, inexact))
    is_wide = [sid in wide_series for sid in numeric_sids]
    narrow = list(compress(numbers, [not flag for flag in is_wide]))
    return narrow, list(compress(numbers, is_wide)), sorted(wide_series)


def _runs(column: Iterable[Any]) -> list[list[Any]]:
    """[[value, repeat], ...]: a chunk's series come device by device, so these columns repeat."""
    return [[value, len(list(repeats))] for value, repeats in groupby(column)]


def _deltas(items: list[int]) -> list[int]:
    """Each item minus the one before (the first as is): small, repetitive numbers for zstd."""
    return items[:1] + list(map(int.__sub__, items[1:], items))


@functools.lru_cache(maxsize=64)  # a gateway's flushes repeat the same few tag sequences
def _front_code(names: tuple[str, ...]) -> list[int | str]:
    """[shared, suffix, ...]: each name as the length of the prefix it shares with the previous
    name and the rest (``aux_0001`` after ``aux_0000`` is ``7, "1"``). The list is shared
    between calls: read it, never change it."""
    out: list[int | str] = []
    previous = ""
    for name in names:
        shared = len(os.path.commonprefix((previous, name)))  # noqa: RUF071 - characters, not paths
        out += (shared, name[shared:])
        previous = name
    return out


def _front_decode(coded: list[Any]) -> list[str]:
    names: list[str] = []
    previous = ""
    for shared, rest in zip(coded[::2], coded[1::2], strict=True):
        previous = previous[:shared] + rest
        names.append(previous)
    return names


def _expand(runs: list[list[Any]]) -> list[Any]:
    return [value for value, repeat in runs for _ in range(repeat)]


def _columns_of(table: dict[str, Any], runs: bool) -> tuple[list[Any], list[Any], list[Any]]:
    """The device, unit and sim columns of a series table, one entry per series."""
    names = ("device", "unit", "sim")
    return tuple(_expand(table[n]) if runs else table[n] for n in names)  # type: ignore[return-value]


def _pack(code: str, items: list[float] | list[int]) -> bytes:
    column = array(code, items)
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def _unpack(code: str, data: bytes) -> list[Any]:
    column = array(code)
    column.frombytes(data)
    if _SWAP:
        column.byteswap()
    return column.tolist()


def _shuffle(data: bytes, width: int) -> bytes:
    """Group the bytes of fixed-width items by significance (a byte shuffle)."""
    return b"".join(data[i::width] for i in range(width))


def _unshuffle(data: bytes, width: int) -> bytes:
    if len(data) % width:
        raise ChunkError("chunk columns do not add up: the chunk is damaged")
    out = bytearray(len(data))
    plane = len(data) // width
    for i in range(width):
        out[i::width] = data[i * plane : (i + 1) * plane]
    return bytes(out)


@dataclass(frozen=True, slots=True)
class _Columns:
    """A decoded chunk's columns, before they are cut into series."""

    table: dict[str, Any]
    stamps: list[int]
    narrow: list[float]
    wide: list[float]
    wide_series: set[int]
    texts: list[str]
    codes: list[int] | None
    runs: bool  # device, unit and sim are run-length encoded (version 2)


def _columns(chunk: bytes) -> _Columns:
    try:
        data = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(chunk), raw=False)
        version = data["v"]
        if version not in _READABLE_VERSIONS:
            raise ChunkError(f"chunk format version {version} is not supported")
        t0 = int(data["t0"])
        offsets = _unpack("i" if data["tsw"] == 4 else "q", data["ts"])
        table = dict(data["series"])
        if version >= 2:  # delta-coded offsets and id lists, front-coded tag names
            offsets = list(accumulate(offsets))
            table["tag"] = _front_decode(table["tag"])
            table["text"] = list(accumulate(table["text"]))
            table["wide"] = list(accumulate(table["wide"]))
        stamps = list(map(t0.__add__, offsets))
        if version == 1:  # one width for every numeric series
            width = int(data["numw"])
            numbers = _unpack("f" if width == 4 else "d", _unshuffle(data["num"], width))
            narrow, wide = (numbers, []) if width == 4 else ([], numbers)
            numeric = set(range(len(table["count"]))) - set(table["text"])
            wide_series = set() if width == 4 else numeric
        else:
            narrow = _unpack("f", _unshuffle(data["num"], 4))
            wide = _unpack("d", _unshuffle(data["num8"], 8))
            wide_series = set(table["wide"])
        codes = list(data["q"]) if data["q"] is not None else None
        texts = list(data["txt"])
        return _Columns(table, stamps, narrow, wide, wide_series, texts, codes, version >= 2)
    except (KeyError, TypeError, ValueError, zstandard.ZstdError, msgpack.UnpackException) as exc:
        if isinstance(exc, ChunkError):
            raise
        raise ChunkError(f"chunk cannot be decoded: {exc}") from exc


def decode(chunk: bytes) -> list[ChunkSeries]:
    """Decode a chunk into its series; raise `ChunkError` if it is damaged or unknown."""
    return [
        ChunkSeries(
            item["device"], item["tag"], item.get("unit"), bool(item.get("simulated")),
            item["ts"], item["values"], item.get("qualities") or [0] * len(item["ts"]),
        )
        for item in decode_plain(chunk)
    ]  # fmt: skip


def decode_plain(chunk: bytes) -> list[dict[str, Any]]:
    """Decode a telemetry chunk straight into the wire contract's series dicts (plain lists).

    The uplink's fast path: each column becomes one Python list, and series are list slices.
    """
    cols = _columns(chunk)
    table, codes = cols.table, cols.codes
    text = set(table["text"])
    try:
        rows = zip(*_columns_of(table, cols.runs), table["tag"], table["count"],
                   strict=True)  # fmt: skip
        out: list[dict[str, Any]] = []
        at = narrow_at = wide_at = txt_at = 0
        for sid, (device, unit, simulated, tag, count) in enumerate(rows):
            item: dict[str, Any] = {
                "device": device,
                "tag": tag,
                "ts": cols.stamps[at : at + count],
            }
            if sid in text:
                item["values"] = cols.texts[txt_at : txt_at + count]
                txt_at += count
            elif sid in cols.wide_series:
                item["values"] = cols.wide[wide_at : wide_at + count]
                wide_at += count
            else:
                item["values"] = cols.narrow[narrow_at : narrow_at + count]
                narrow_at += count
            if codes is not None and any(codes[at : at + count]):
                item["qualities"] = codes[at : at + count]
            if unit is not None:
                item["unit"] = unit
            if simulated:
                item["simulated"] = True
            out.append(item)
            at += count
    except (TypeError, ValueError) as exc:
        raise ChunkError(f"chunk cannot be decoded: {exc}") from exc
    if (
        at != len(cols.stamps) or narrow_at != len(cols.narrow) or wide_at != len(cols.wide)
        or txt_at != len(cols.texts) or (codes is not None and len(codes) != at)
    ):  # fmt: skip
        raise ChunkError("chunk columns do not add up: the chunk is damaged")
    return out


def decode_readings(chunk: bytes) -> list[Reading]:
    """Decode a chunk back into readings (for export and tests; the uplink uses `decode_plain`)."""
    out: list[Reading] = []
    for s in decode(chunk):
        values: list[Any] = s.values
        for ts, value, q in zip(s.ts, values, s.qualities, strict=True):
            out.append(
                Reading(s.device, s.tag, ts, value, Quality.from_code(q), s.unit, s.simulated)
            )
    return out


def encode_records(records: list[dict[str, Any]]) -> bytes:
    """Encode alarm or event records (contract-shaped dicts) into a chunk for those lanes."""
    if not records:
        raise ValueError("a chunk needs at least one record")
    payload = {"v": RECORDS_VERSION, "records": records}
    raw: bytes = msgpack.packb(payload, use_bin_type=True)
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)


def decode_records(chunk: bytes) -> list[dict[str, Any]]:
    """Decode an alarm or event chunk; raise `ChunkError` if it is damaged or unknown."""
    try:
        data = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(chunk), raw=False)
        if data["v"] != RECORDS_VERSION:
            raise ChunkError(f"chunk format version {data['v']} is not supported")
        records: list[dict[str, Any]] = data["records"]
    except (KeyError, TypeError, ValueError, zstandard.ZstdError, msgpack.UnpackException) as exc:
        if isinstance(exc, ChunkError):
            raise
        raise ChunkError(f"record chunk cannot be decoded: {exc}") from exc
    return records
