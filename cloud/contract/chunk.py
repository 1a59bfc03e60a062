"""Chunks: the encoded unit the pipeline commits to the outbox and the uplink posts as it is.

The one definition of readings on the wire: the gateway encodes, and the cloud decodes (with
`unpack` and numpy, in `cloud.contract.chunked`) the same bytes. Nothing here knows tagway's
types: a reading is a `Row` tuple (`protocols.reading.Reading` is one), an alarm an `AlarmRecord`.

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

import dataclasses
import functools
import io
import math
import os
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, compress, count, groupby, repeat
from operator import itemgetter
from typing import Any, Final

import msgpack
import zstandard

from cloud.contract.batch import AlarmRecord, AnyEvent, alarm_to_dict, event_to_dict
from cloud.contract.errors import ChunkError, PayloadTooLarge
from cloud.contract.exact import check_exact, exact_column, exact_series, reasons_of, why_column

FORMAT_VERSION: Final = 2  # telemetry chunks
RECORDS_VERSION: Final = 1  # alarm and event chunks (unchanged since 0.1.0)
_READABLE_VERSIONS: Final = frozenset({1, 2})
_Q: Final = {"good": 0, "uncertain": 1, "bad": 2}  # a StrEnum member finds its word's code
_BAD: Final = 2
_ZSTD_LEVEL: Final = 3  # measured: levels above 3 cost much more CPU for little gain here
_SWAP: Final = sys.byteorder != "little"  # the format is little-endian
Row = tuple[str, str, int, float | int | bool | str, str, str | None, bool, str | None]
"""One reading as the codec takes it: device, tag, ts (µs), value, quality word (good, uncertain,
bad), unit, simulated, reason (not stored). `protocols.reading.Reading` is one."""

# Fields of a `Row`, fetched at C speed.
_SERIES, _DEVICE, _TAG, _TS = itemgetter(0, 1), itemgetter(0), itemgetter(1), itemgetter(2)
_VALUE, _QUALITY, _UNIT, _SIMULATED = itemgetter(3), itemgetter(4), itemgetter(5), itemgetter(6)
_REASON = itemgetter(7)


@dataclass(frozen=True, slots=True)
class ChunkSeries:
    """The decoded readings of one series in one chunk."""

    device: str
    tag: str
    unit: str | None
    simulated: bool
    ts: list[int]
    values: list[float] | list[str] | list[int]
    qualities: list[int]
    reasons: list[str | None] | None = None
    """Why each reading is not good, where the gateway said (None: no reasons in the chunk)."""


def encode(readings: Sequence[Row]) -> bytes:
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
    rows: Sequence[Row] = readings
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
    if qualities.count("good") != len(qualities):
        codes = bytearray(map(_Q.__getitem__, qualities))
    numbers, texts, numeric_sids, codes = _value_columns(values, ordered_sids, text_series, codes)
    narrow, wide, wide_series = _split_widths(numbers, numeric_sids)
    series = {
        "device": _runs(map(_DEVICE, firsts)), "tag": _tag_column(firsts),
        "unit": _runs(map(_UNIT, firsts)), "sim": _runs(map(_SIMULATED, firsts)),
        "count": counts, "text": _deltas(sorted(text_series)), "wide": _deltas(wide_series),
    }  # fmt: skip
    payload: dict[str, Any] = {
        "v": FORMAT_VERSION, "t0": t0, "series": series,
        "ts": _pack("i" if narrow_ts else "q", _deltas(offsets)), "tsw": 4 if narrow_ts else 8,
        "num": _shuffle(_pack("f", narrow), 4), "num8": _shuffle(_pack("d", wide), 8),
        "txt": texts, "q": bytes(codes) if codes is not None else None,
    }  # fmt: skip
    exact = exact_series(values, counts, text_series)
    if exact:  # integers past float64's exactness (see `cloud.contract.exact`)
        series["int"] = _deltas(exact)
        payload["int"] = exact_column(values, counts, exact)
    why = why_column(list(map(_REASON, rows)))
    if why is not None:
        payload["why"] = why
    try:
        raw: bytes = msgpack.packb(payload, use_bin_type=True)
    except UnicodeEncodeError:  # a name with a lone surrogate (a JSON key can hold one)
        series.update(device=_runs(map(_storable, map(_DEVICE, firsts))),
                      tag=_tag_column(firsts, _storable),
                      unit=_runs(map(_storable, map(_UNIT, firsts))))  # fmt: skip
        raw = msgpack.packb(payload, use_bin_type=True)
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)


def _storable(name: str | None) -> str | None:
    """A name that UTF-8 can carry: a lone surrogate shows as its escape (``\\ud800``)."""
    return None if name is None else name.encode("utf-8", "backslashreplace").decode("utf-8")


def _value_columns(
    values: list[Any], sids: Sequence[int], text_series: set[int], codes: bytearray | None
) -> tuple[list[float], list[str], Sequence[int], bytearray | None]:
    """The numeric column (series order, text series left out), the text column, the series id
    of each numeric value, and the quality codes with non-finite numbers marked bad.

    NaN and ±inf are not values: a device that sends them is not measuring. They become bad
    readings (value 0, reason lost in the chunk) so the cloud, which refuses non-finite values,
    never refuses a whole batch for one sensor. So does any value the chunk cannot carry (an
    integer past float64's range, a string with a lone surrogate): whatever a flush holds, it
    encodes. The pipeline marks such values bad with the reason before they get here
    (`edge.pipeline.encodable`); this is the codec keeping its own promise.
    """
    positions: list[int] | None = None  # position of each number among all readings
    numeric_sids: Sequence[int] = sids
    if text_series:
        is_text = [sid in text_series for sid in sids]
        texts, unstorable = _texts(compress(values, is_text))
        if unstorable:
            codes = codes if codes is not None else bytearray(len(values))
            for at in compress(compress(range(len(values)), is_text), unstorable):
                codes[at] = _BAD
        is_number = [not flag for flag in is_text]
        numbers = _floats(compress(values, is_number))
        numeric_sids = list(compress(sids, is_number))
        positions = list(compress(range(len(values)), is_number))
    else:
        texts, numbers = [], _floats(values)
    if not all(map(math.isfinite, numbers)):
        if codes is None:
            codes = bytearray(len(values))
        for at, number in enumerate(numbers):
            if not math.isfinite(number):
                numbers[at] = 0.0
                codes[positions[at] if positions is not None else at] = _BAD
    return numbers, texts, numeric_sids, codes


def _floats(values: Iterable[Any]) -> list[float]:
    """The numbers as floats; what has no float (an integer past float64's range, a value of
    an unknown type) becomes NaN, which the caller turns into a bad reading."""
    values = list(values)
    try:
        return list(map(float, values))
    except (OverflowError, TypeError, ValueError):  # rare: one value per reading, in Python
        return [_float(v) for v in values]


def _float(value: Any) -> float:
    try:
        return float(value)
    except (OverflowError, TypeError, ValueError):
        return math.nan


def _texts(values: Iterable[Any]) -> tuple[list[str], list[bool]]:
    """The text column, and which of its values cannot travel (a lone surrogate has no UTF-8,
    an integer of thousands of digits no `str`): those become empty and bad."""
    texts: list[str] = []
    unstorable: list[bool] = []
    for value in values:
        try:
            text = value if type(value) is str else str(value)
            if not text.isascii():
                text.encode("utf-8")
        except (UnicodeEncodeError, ValueError):
            text = ""
            unstorable.append(True)
        else:
            unstorable.append(False)
        texts.append(text)
    return texts, unstorable if any(unstorable) else []


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


def _tag_column(firsts: Sequence[Row], fix: Callable[[str], Any] | None = None) -> list[int | str]:
    """The tag names of a chunk's series, front-coded device by device: each device's run starts
    afresh (its first name whole), so a run is the same list in every flush that holds that
    device's poll, and is computed once (100,000 series would otherwise cost 100,000 prefix
    comparisons per second). The decoder reads one list either way."""
    out: list[int | str] = []
    for _, run in groupby(firsts, key=_DEVICE):
        names = tuple(map(_TAG, run))
        out += _front_code(names if fix is None else tuple(map(fix, names)))
    return out


@functools.lru_cache(maxsize=512)  # a gateway's flushes repeat its devices' tag sequences
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


def _expand(runs: list[list[Any]], total: int, what: str) -> list[Any]:
    """Undo `_runs`, refusing runs that do not add up to `total` before building anything."""
    if not all(isinstance(run, list) and len(run) == 2 and type(run[1]) is int and run[1] > 0
               for run in runs) or sum(run[1] for run in runs) != total:  # fmt: skip
        raise ChunkError(f"chunk {what} column does not add up: the chunk is damaged")
    return [value for value, repeat in runs for _ in range(repeat)]


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
class SeriesTable:
    """The per-series header of a telemetry chunk: one entry per series, in chunk order."""

    device: list[str]
    tag: list[str]
    unit: list[str | None]
    simulated: list[bool]
    count: list[int]
    text: set[int]  # ids of series holding strings
    wide: set[int]  # ids of numeric series stored as float64
    exact: list[int] = dataclasses.field(default_factory=list)
    """Ids of numeric series whose exact integers are in `Unpacked.ints` (ascending)."""


@dataclass(frozen=True, slots=True)
class Unpacked:
    """A telemetry chunk unpacked but not yet decoded: the series table in Python, the value
    columns still as the little-endian bytes they travel as (the cloud reads them with numpy,
    the edge with `array`)."""

    t0: int
    table: SeriesTable
    ts: bytes  # offsets from t0, `ts_width` bytes each (delta-coded when `deltas`)
    ts_width: int
    deltas: bool
    narrow: bytes  # float32 column, byte-shuffled
    wide: bytes  # float64 column, byte-shuffled
    texts: list[str]
    qualities: bytes | None  # one int8 code per reading; None: all good
    size: int  # decompressed bytes
    ints: list[int] = dataclasses.field(default_factory=list)
    """The exact values of the `table.exact` series, series after series."""
    why: Any = None
    """The readings' reasons as the chunk holds them (see `cloud.contract.exact.reasons_of`)."""

    @property
    def readings(self) -> int:
        """Readings in the chunk."""
        return sum(self.table.count)


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one chunk may hold when it comes from outside (the cloud decoding a batch).

    Args:
        max_bytes: decompressed size; the decompressor stops there.
        max_series: series in the chunk.
        max_readings: readings in the chunk.
        max_text: characters of one string.
        too_large: what is raised past `max_bytes` (the caller's own kind of 413).
    """

    max_bytes: int
    max_series: int
    max_readings: int
    max_text: int
    too_large: type[PayloadTooLarge] = PayloadTooLarge


_TRUSTED: Final = Bounds(max_bytes=1 << 30, max_series=1 << 24, max_readings=1 << 28,
                         max_text=1 << 24)  # fmt: skip
"""An outbox's own chunks: written by this codec, read back by the same gateway."""


def unpack(chunk: bytes, bounds: Bounds = _TRUSTED) -> Unpacked:
    """Decompress and unpack a telemetry chunk within `bounds`; raise `ChunkError` (or
    `PayloadTooLarge` past a bound) before building anything larger than the bounds allow."""
    data, size = _unpacked_map(chunk, bounds)
    try:
        version = data["v"]
        if version not in _READABLE_VERSIONS:
            raise ChunkError(f"chunk format version {version} is not supported")
        table = _table(data["series"], version, bounds)
        t0 = data["t0"]
        if type(t0) is not int:
            raise ChunkError("chunk t0 is not an integer: the chunk is damaged")
        if version == 1:  # one width for every numeric series
            width = int(data["numw"])
            narrow, wide = (data["num"], b"") if width == 4 else (b"", data["num"])
            if width == 8:
                table = dataclasses.replace(table, wide=set(range(len(table.count))) - table.text)
        else:
            narrow, wide = data["num"], data["num8"]
        texts = data["txt"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ChunkError("chunk text column is not a list of strings: the chunk is damaged")
        ints = check_exact(data.get("int", []), sum(table.count[i] for i in table.exact))
        unpacked = Unpacked(t0, table, data["ts"], 4 if data["tsw"] == 4 else 8, version >= 2,
                            narrow, wide, texts, data["q"], size, ints,
                            data.get("why"))  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ChunkError):
            raise
        raise ChunkError(f"chunk cannot be decoded: {exc!r}") from exc
    if not all(isinstance(b, bytes) for b in (unpacked.ts, unpacked.narrow, unpacked.wide)) or (
        unpacked.qualities is not None and not isinstance(unpacked.qualities, bytes)
    ):
        raise ChunkError("chunk columns are not bytes: the chunk is damaged")
    return unpacked


def _unpacked_map(
    chunk: bytes, bounds: Bounds, *, max_map_len: int = 16
) -> tuple[dict[str, Any], int]:
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(chunk), read_across_frames=True
        )
        with reader:
            raw = reader.read(bounds.max_bytes + 1)
    except zstandard.ZstdError as exc:
        raise ChunkError(f"chunk is not valid zstd: {exc}") from exc
    if len(raw) > bounds.max_bytes:
        raise bounds.too_large(
            f"a chunk decompresses past the limit of {bounds.max_bytes} bytes",
            details={"limit": bounds.max_bytes},
        )
    # Every list in a chunk holds at most one entry per reading, or two per series (front-coded
    # tag names): nothing longer is built, whatever a header claims.
    longest = max(bounds.max_readings, 2 * bounds.max_series)
    try:
        data = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, max_array_len=longest, max_map_len=max_map_len,
            max_str_len=bounds.max_text, max_bin_len=bounds.max_bytes,
            ext_hook=_refuse_ext,
        )  # fmt: skip
    except ValueError as exc:
        if "exceeds max_" in str(exc):  # msgpack's own words for a bound we set above
            raise PayloadTooLarge(
                f"a chunk holds more readings or series than this batch may: {exc}"
            ) from exc
        raise ChunkError(f"chunk is not valid msgpack: {exc}") from exc
    except (TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise ChunkError(f"chunk is not valid msgpack: {exc}") from exc
    if not isinstance(data, dict):
        raise ChunkError("chunk is not a map: the chunk is damaged")
    return data, len(raw)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the chunk format")


def _table(series: dict[str, Any], version: int, bounds: Bounds) -> SeriesTable:
    counts = series["count"]
    if not all(type(c) is int and c > 0 for c in counts):
        raise ChunkError("chunk series counts are not positive integers: the chunk is damaged")
    if len(counts) > bounds.max_series:
        raise PayloadTooLarge(f"a chunk holds {len(counts)} series; at most {bounds.max_series}")
    if sum(counts) > bounds.max_readings:
        raise PayloadTooLarge(
            f"a chunk holds {sum(counts)} readings; at most {bounds.max_readings}",
            details={"limit": bounds.max_readings},
        )
    text, tags = series["text"], series["tag"]
    wide = series["wide"] if version >= 2 else []  # version 1: one width for the whole chunk
    if version >= 2:  # delta-coded id lists, front-coded tag names, run-length columns
        text, wide, tags = list(accumulate(text)), list(accumulate(wide)), _front_decode(tags)
        device, unit, sim = (_expand(series[n], len(counts), n) for n in ("device", "unit", "sim"))
    else:
        device, unit, sim = series["device"], series["unit"], series["sim"]
    if not len(device) == len(unit) == len(sim) == len(tags) == len(counts):
        raise ChunkError("chunk series columns differ in length: the chunk is damaged")
    exact = list(accumulate(series.get("int", []))) if version >= 2 else []
    if not all(type(i) is int and 0 <= i < len(counts) and i not in text for i in exact) or (
        exact != sorted(set(exact))
    ):
        raise ChunkError("chunk exact integer series are not numeric series: the chunk is damaged")
    return SeriesTable(device, tags, unit, [bool(s) for s in sim], counts, set(text), set(wide),
                       exact)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Columns:
    """A decoded chunk's columns as Python lists, before they are cut into series."""

    table: SeriesTable
    stamps: list[int]
    narrow: list[float]
    wide: list[float]
    texts: list[str]
    codes: list[int] | None
    ints: list[int]
    reasons: list[str | None] | None


def _columns(chunk: bytes) -> _Columns:
    u = unpack(chunk)
    try:
        offsets = _unpack("i" if u.ts_width == 4 else "q", u.ts)
        if u.deltas:
            offsets = list(accumulate(offsets))
        stamps = list(map(u.t0.__add__, offsets))
        narrow = _unpack("f", _unshuffle(u.narrow, 4))
        wide = _unpack("d", _unshuffle(u.wide, 8))
    except ValueError as exc:
        raise ChunkError(f"chunk columns cannot be read: {exc}") from exc
    codes = list(u.qualities) if u.qualities is not None else None
    reasons = reasons_of(u.why, len(stamps))
    return _Columns(u.table, stamps, narrow, wide, u.texts, codes, u.ints, reasons)


ChunkRow = tuple[str, str, int, float | int | str, int, str | None]
"""One reading as `decode_rows` gives it: device, tag, ts (µs), value, quality code (0 good,
1 uncertain, 2 bad), unit."""


def decode_rows(chunk: bytes) -> list[ChunkRow]:
    """A telemetry chunk's readings as flat tuples, series after series: the cheapest way to walk
    every reading (the Sparkplug publisher's path; no per-reading objects or dicts)."""
    cols = _columns(chunk)
    table = cols.table
    exact = dict(
        zip(table.exact, accumulate((table.count[i] for i in table.exact), initial=0), strict=False)
    )
    codes = cols.codes
    total = len(cols.stamps)
    if not table.text and not table.exact and (not table.wide or not cols.narrow):
        # One numeric column for every series (the usual chunk): columns zipped at C speed.
        column = cols.wide if table.wide else cols.narrow
        if sum(table.count) != total or len(column) != total:
            raise ChunkError("chunk columns do not add up: the chunk is damaged")
        expand = chain.from_iterable
        return list(zip(expand(map(repeat, table.device, table.count)),
                        expand(map(repeat, table.tag, table.count)), cols.stamps, column,
                        codes if codes is not None else repeat(0, total),
                        expand(map(repeat, table.unit, table.count)), strict=False))  # fmt: skip
    out: list[ChunkRow] = []
    at = narrow_at = wide_at = txt_at = 0
    try:
        for sid, (device, tag, unit, n) in enumerate(
            zip(table.device, table.tag, table.unit, table.count, strict=True)
        ):
            values: list[Any]
            if sid in table.text:
                values, txt_at = cols.texts[txt_at : txt_at + n], txt_at + n
            elif sid in table.wide:
                values, wide_at = cols.wide[wide_at : wide_at + n], wide_at + n
            else:
                values, narrow_at = cols.narrow[narrow_at : narrow_at + n], narrow_at + n
            if sid in exact:
                values = cols.ints[exact[sid] : exact[sid] + n]
            quality = codes[at : at + n] if codes is not None else repeat(0, n)
            out.extend(zip(repeat(device, n), repeat(tag, n), cols.stamps[at : at + n],
                           values, quality, repeat(unit, n), strict=False))  # fmt: skip
            at += n
    except (TypeError, ValueError) as exc:
        raise ChunkError(f"chunk cannot be decoded: {exc}") from exc
    if at != len(cols.stamps) or len(out) != at:
        raise ChunkError("chunk columns do not add up: the chunk is damaged")
    return out


def timestamps(chunk: bytes) -> list[int]:
    """The readings' timestamps only (the uplink samples them for its latency figures)."""
    u = unpack(chunk)
    offsets = _unpack("i" if u.ts_width == 4 else "q", u.ts)
    if u.deltas:
        offsets = list(accumulate(offsets))
    return list(map(u.t0.__add__, offsets))


def decode(chunk: bytes) -> list[ChunkSeries]:
    """Decode a chunk into its series; raise `ChunkError` if it is damaged or unknown."""
    return [
        ChunkSeries(
            item["device"], item["tag"], item.get("unit"), bool(item.get("simulated")),
            item["ts"], item["values"], item.get("qualities") or [0] * len(item["ts"]),
            item.get("reasons"),
        )
        for item in decode_plain(chunk)
    ]  # fmt: skip


def decode_plain(chunk: bytes) -> list[dict[str, Any]]:
    """Decode a telemetry chunk straight into the wire contract's series dicts (plain lists).

    The uplink's fast path: each column becomes one Python list, and series are list slices.
    """
    cols = _columns(chunk)
    table, codes, reasons = cols.table, cols.codes, cols.reasons
    text = table.text
    exact = dict(
        zip(table.exact, accumulate((table.count[i] for i in table.exact), initial=0), strict=False)
    )  # series id -> where its values start in `ints`
    try:
        rows = zip(table.device, table.unit, table.simulated, table.tag, table.count,
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
            elif sid in table.wide:
                item["values"] = cols.wide[wide_at : wide_at + count]
                wide_at += count
            else:
                item["values"] = cols.narrow[narrow_at : narrow_at + count]
                narrow_at += count
            if sid in exact:
                item["values"] = cols.ints[exact[sid] : exact[sid] + count]
            if codes is not None and any(codes[at : at + count]):
                item["qualities"] = codes[at : at + count]
            if reasons is not None and any(reasons[at : at + count]):
                item["reasons"] = reasons[at : at + count]
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


@dataclass(frozen=True, slots=True)
class Records:
    """A record chunk unpacked: alarm records and gateway events as plain maps (the batch
    reader validates them), and its decompressed size."""

    alarms: list[Any]
    events: list[Any]
    size: int


def encode_records(
    records: Sequence[AlarmRecord],
    events: Sequence[AnyEvent] = (),
) -> bytes:
    """Encode alarm records (`AlarmRecord`) and gateway events (command results, write records,
    shadow, config and status reports) into a chunk for the alarm or event lane."""
    if not records and not events:
        raise ValueError("a chunk needs at least one record")
    payload: dict[str, Any] = {"v": RECORDS_VERSION,
                               "records": [alarm_to_dict(r) for r in records]}  # fmt: skip
    if events:  # absent from the chunks of gateways before 0.2; readers take it as empty
        payload["events"] = [event_to_dict(e) for e in events]
    raw: bytes = msgpack.packb(payload, use_bin_type=True)
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)


def decode_records(chunk: bytes) -> list[dict[str, Any]]:
    """Decode one of this gateway's alarm or event chunks into its alarm records (plain maps)."""
    return unpack_records(chunk, _TRUSTED).alarms


def unpack_records(chunk: bytes, bounds: Bounds) -> Records:
    """An alarm or event chunk unpacked; `ChunkError` if it is damaged or unknown,
    `PayloadTooLarge` past `bounds` (`max_readings` bounds its records and events together)."""
    # Gateway events hold maps keyed by names (a status document's fields, a shadow report's
    # devices): as many keys as records may be, not the 16 of a telemetry chunk's header.
    data, size = _unpacked_map(chunk, bounds, max_map_len=max(16, bounds.max_readings))
    version, alarms, events = data.get("v"), data.get("records"), data.get("events", [])
    if version != RECORDS_VERSION:
        raise ChunkError(f"record chunk format version {version!r} is not supported")
    if not isinstance(alarms, list) or not isinstance(events, list):
        raise ChunkError("record chunk holds no list of records: the chunk is damaged")
    if len(alarms) + len(events) > bounds.max_readings:
        raise PayloadTooLarge(f"a chunk holds {len(alarms) + len(events)} records; at most "
                              f"{bounds.max_readings}")  # fmt: skip
    return Records(alarms, events, size)
