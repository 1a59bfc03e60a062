"""Batch format 2: a small header and the gateway's outbox chunks, as they are on its disk.

The uplink leases chunks and posts them without decoding them: the chunk codec
(`cloud.contract.chunk`) is the one definition of a reading on the wire, shared by both sides. A
chunk batch is a msgpack map, posted as `application/vnd.tagway.chunks+msgpack` with
Content-Encoding identity (the chunks are zstd already; compressing them again costs CPU for
nothing)::

    {"version": 2, "gateway_id": "17", "seq": 42, "created_at": <µs>,
     "dropped": {"telemetry": 0},
     "chunks": [{"lane": "telemetry", "readings": 5000, "data": <bin: a telemetry chunk>},
                {"lane": "alarm", "readings": 2, "data": <bin: a record chunk>}]}

A record chunk (alarm and event lanes) holds alarm records and, from 0.2, gateway events
(command results, write records, shadow reports)::

    {"v": 1, "records": [<AlarmRecord as plain data>, ...], "events": [<GatewayEvent>, ...]}

`seq`, `created_at`, `dropped` and `dropped_totals` mean what they mean in format 1 (see
`cloud.contract.batch`), which the cloud still accepts from gateways in the field:
`decode_batch` tells the two apart by Content-Type, before reading a byte. Both end as the same
`Batch`, through the same `Limits`: the chunks share one decompressed-size budget (each
decompressor stops at what is left of it), and the readings, distinct series, alarms and events
of all chunks are counted across the batch, checked before a chunk's columns are built. Telemetry
columns are read with numpy straight from their bytes.

Each chunk also has a budget of its own, from its compressed size and the readings (records) it
declares (`chunk_budget`): a few KiB of zstd cannot make the decode thread inflate the whole
batch budget before the 413 (`chunk_too_expansive`). An event chunk declaring one event may
inflate to the absolute cap: one valid event can be that large.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Final

import msgpack

from cloud.contract import chunk
from cloud.contract.batch import (
    CHUNKS,
    DEFAULT_LIMITS,
    AlarmRecord,
    AnyEvent,
    Batch,
    DroppedTotals,
    Limits,
    SeriesColumns,
    alarm_from_data,
    decompress,
    dropped_from_data,
    dropped_totals_from_data,
    events_from_data,
    header_int,
    header_name,
    media_type,
    storable,
)
from cloud.contract.batch import decode_batch as decode_plain_batch
from cloud.contract.errors import (
    ChunkError,
    ChunkTooExpansive,
    InvalidBatch,
    Path,
    PayloadTooLarge,
)
from cloud.contract.fleet import MAX_ASSET_DEVICES, MAX_STATUS_DRIVERS

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

CHUNKS_VERSION: Final = 2
LANES: Final = frozenset({"alarm", "event", "telemetry"})
_HEADER: Final = frozenset(
    {"version", "gateway_id", "seq", "created_at", "dropped", "dropped_totals", "chunks"}
)
_CHUNK_FIELDS: Final = frozenset({"lane", "readings", "data"})
_CHUNK_BASE_BYTES: Final = 4_096  # a chunk's header and series table before any reading


@dataclass(frozen=True, slots=True)
class LeasedChunk:
    """One chunk as the uplink posts it: its lane, its reading count and its payload."""

    lane: str
    readings: int
    data: bytes


def encode_chunk_batch(
    *,
    gateway_id: str,
    seq: int,
    created_at: int,
    dropped: dict[str, int],
    chunks: Sequence[LeasedChunk],
    dropped_totals: DroppedTotals | None = None,
) -> bytes:
    """The body of a chunk batch (post it with Content-Type `CHUNKS`, no Content-Encoding)."""
    header: dict[str, Any] = {
        "version": CHUNKS_VERSION, "gateway_id": gateway_id, "seq": seq,
        "created_at": created_at, "dropped": dropped,
        "chunks": [{"lane": c.lane, "readings": c.readings, "data": c.data} for c in chunks],
    }  # fmt: skip
    if dropped_totals is not None:
        header["dropped_totals"] = {"life": dropped_totals.life,
                                    "lanes": dict(dropped_totals.lanes)}  # fmt: skip
    body: bytes = msgpack.packb(header, use_bin_type=True)
    return body


def decode_batch(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Batch:
    """Decode a posted body of either format into a `Batch` (format by Content-Type)."""
    if media_type(content_type) != CHUNKS:
        return decode_plain_batch(
            body, content_type=content_type, content_encoding=content_encoding, limits=limits
        )
    raw = decompress(body, content_encoding, limits=limits)
    try:
        # Chunk payloads are bytes; nothing else in the header may be long.
        top = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, max_map_len=len(_HEADER),
            max_array_len=limits.max_series + limits.max_alarms,
            max_str_len=limits.max_name_length, max_bin_len=len(raw),
            ext_hook=_refuse_ext,
        )  # fmt: skip
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise InvalidBatch(f"body is not valid msgpack: {exc}", path=("body",)) from exc
    return batch_from_chunks(top, limits=limits, budget=limits.max_decompressed_bytes - len(raw))


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the contract")


def batch_from_chunks(top: Any, *, limits: Limits = DEFAULT_LIMITS, budget: int) -> Batch:
    """Validate an unpacked chunk batch into a `Batch`; `budget` is the decompressed bytes its
    chunks may still take."""
    if not isinstance(top, dict):
        raise InvalidBatch(f"expected an object, got {type(top).__name__}", path=())
    unknown = sorted(set(top) - _HEADER)
    if unknown:
        raise InvalidBatch(f"unknown field {unknown[0]!r}", path=(unknown[0],))
    version = header_int(top.get("version"), ("version",))
    if version != CHUNKS_VERSION:
        raise InvalidBatch(f"a chunk batch is version {CHUNKS_VERSION}, not {version}",
                           path=("version",))  # fmt: skip
    seq = header_int(top.get("seq"), ("seq",))
    if seq < 0:
        raise InvalidBatch("seq must be >= 0", path=("seq",))
    items = top.get("chunks")
    if not isinstance(items, list):
        raise InvalidBatch("expected a list of chunks", path=("chunks",))
    reader = _ChunkReader(limits, budget)
    for i, item in enumerate(items):
        reader.read(item, ("chunks", i))
    return Batch(
        gateway_id=header_name(top.get("gateway_id"), ("gateway_id",), limits), seq=seq,
        created_at=header_int(top.get("created_at"), ("created_at",)),
        series=tuple(reader.series), alarms=tuple(reader.alarms),
        dropped=dropped_from_data(top.get("dropped", {}), ("dropped",), limits),
        version=CHUNKS_VERSION, events=tuple(reader.events), ignored_events=reader.ignored_events,
        dropped_totals=None if top.get("dropped_totals") is None
        else dropped_totals_from_data(top["dropped_totals"], limits),
    )  # fmt: skip


class _ChunkReader:
    """Reads a batch's chunks one by one against the batch-wide limits."""

    def __init__(self, limits: Limits, budget: int) -> None:
        self.limits = limits
        self.budget = budget
        self.series: list[SeriesColumns] = []
        self.alarms: list[AlarmRecord] = []
        self.readings = 0
        self.names: set[tuple[str, str]] = set()
        self.events: list[AnyEvent] = []
        self.ignored_events = 0

    def read(self, item: Any, path: Path) -> None:
        if not isinstance(item, dict) or set(item) != _CHUNK_FIELDS:
            raise InvalidBatch("a chunk is {lane, readings, data}", path=path)
        lane, data = item["lane"], item["data"]
        if lane not in LANES:
            raise InvalidBatch(f"lane must be one of {sorted(LANES)}", path=(*path, "lane"))
        if not isinstance(data, bytes):
            raise InvalidBatch("chunk data must be bytes", path=(*path, "data"))
        declared = item["readings"]
        if type(declared) is not int or declared < 0:
            raise InvalidBatch("readings must be an integer >= 0", path=(*path, "readings"))
        own = chunk_budget(len(data), declared, self.limits, lane=lane)
        try:
            if lane == "telemetry":
                self._telemetry(data, path, own)
            else:
                self._records(data, path, own)
        except ChunkTooExpansive as exc:
            exc.details["path"] = list(path)
            raise
        except ChunkError as exc:
            raise ChunkError(f"{'.'.join(map(str, path))}: {exc.message}", path=path) from exc

    def _bounds(self, own: int, *, max_series: int, max_readings: int) -> chunk.Bounds:
        """The chunk's bounds: the smaller of its own budget and what is left of the batch's,
        and `ChunkTooExpansive` past its own (`PayloadTooLarge` past the batch's)."""
        left = max(self.budget, 0)
        too_large = ChunkTooExpansive if own < left else PayloadTooLarge
        return chunk.Bounds(max_bytes=min(own, left), max_series=max_series,
                            max_readings=max_readings, max_text=self.limits.max_text_length,
                            too_large=too_large)  # fmt: skip

    def _telemetry(self, data: bytes, path: Path, own: int) -> None:
        limits = self.limits
        left = limits.max_readings - self.readings
        # A series split over several chunks is one entry per chunk: entries are bounded by the
        # readings, the distinct series by `max_series`.
        unpacked = chunk.unpack(data, self._bounds(own, max_series=left, max_readings=left))
        self.budget -= unpacked.size
        self.readings += unpacked.readings
        self.names.update(zip(unpacked.table.device, unpacked.table.tag, strict=True))
        if len(self.names) > limits.max_series:
            raise PayloadTooLarge(
                f"over {limits.max_series} series in one batch",
                details={"limit": limits.max_series},
            )
        self.series.extend(_series(unpacked, path, limits))

    def _records(self, data: bytes, path: Path, own: int) -> None:
        limits = self.limits
        left = limits.max_alarms - len(self.alarms) + limits.max_events - len(self.events)
        records = chunk.unpack_records(data, self._bounds(own, max_series=1, max_readings=left))
        self.budget -= records.size
        for j, record in enumerate(records.alarms):
            self.alarms.append(alarm_from_data(record, (*path, "records", j), limits))
        if len(self.alarms) > limits.max_alarms:
            raise PayloadTooLarge(f"over {limits.max_alarms} alarms in one batch")
        if records.events:
            events, ignored = events_from_data(records.events, limits)
            self.events.extend(events)
            self.ignored_events += ignored
        if len(self.events) > limits.max_events:
            raise PayloadTooLarge(f"over {limits.max_events} events in one batch")


def largest_event_bytes() -> int:
    """An upper bound of the msgpack size of the largest gateway event the contract admits: an
    `AssetPaths` of `MAX_ASSET_DEVICES` devices (a 200-character name, a 1,100-character path) or
    a `StatusReport` of `MAX_STATUS_DRIVERS` drivers (a 200-character name and protocol, a
    4,096-character error), every character 4 bytes of UTF-8, each string 5 bytes of header and
    64 bytes of keys and small fields per entry. The status report's bound (about 90 MB) is past
    `max_chunk_decompressed_bytes`: one event may need the whole absolute cap."""
    string = 5
    asset = MAX_ASSET_DEVICES * (2 * string + 4 * (200 + 1_100))
    driver = 64 + 3 * string + 4 * (200 + 200 + 4_096)
    status = MAX_STATUS_DRIVERS * driver + 64 * 1024  # the config part, figures and keys
    return max(asset, status)


def chunk_budget(compressed: int, declared: int, limits: Limits, *, lane: str = "telemetry") -> int:
    """The most bytes one chunk may decompress to: a few KiB, plus the larger of
    `max_chunk_ratio` times its compressed size and a size per reading (record) it declares:
    `max_chunk_bytes_per_reading` for telemetry, `max_chunk_bytes_per_record` for alarm records
    (an `AlarmRecord` is at most about 40 KiB), and the contract's largest valid event
    (`largest_event_bytes`) for event records; never over `max_chunk_decompressed_bytes`.
    Either term alone covers every telemetry and alarm chunk a gateway writes (see `Limits`),
    and the size term every event chunk (one event of 5,000 asset paths compresses far better
    than 64 times, so the ratio term alone would refuse it). A bomb declares few readings or is
    large on the wire and pays for it there; an event chunk declaring one event is the exception:
    it may inflate to the absolute cap, a quarter of the batch's budget."""
    declared = min(declared, limits.max_readings + limits.max_alarms + limits.max_events)
    per = {"telemetry": limits.max_chunk_bytes_per_reading,
           "alarm": limits.max_chunk_bytes_per_record}.get(lane)  # fmt: skip
    if per is None:  # the event lane
        per = max(limits.max_chunk_bytes_per_record, largest_event_bytes())
    wide = max(limits.max_chunk_ratio * compressed, per * declared)
    return min(limits.max_chunk_decompressed_bytes, _CHUNK_BASE_BYTES + wide)


def _series(u: chunk.Unpacked, path: Path, limits: Limits) -> list[SeriesColumns]:
    """Cut an unpacked chunk's columns into validated series (numpy views, no copies)."""
    import numpy as np  # noqa: PLC0415 - the edge imports this module, and never decodes

    n, table = u.readings, u.table
    stamps = _stamps(np, u, path)
    narrow = _floats(np, u.narrow, 4, (*path, "num")).astype(np.float64)
    wide = _floats(np, u.wide, 8, (*path, "num8"))
    codes = (np.frombuffer(u.qualities, dtype=np.int8) if u.qualities is not None
             else np.zeros(n, dtype=np.int8))  # fmt: skip
    if codes.size != n or ((codes < 0) | (codes > 2)).any():
        raise ChunkError("quality codes are not one of 0, 1, 2 per reading", path=(*path, "q"))
    out: list[SeriesColumns] = []
    at = narrow_at = wide_at = text_at = 0
    exact = dict(zip(table.exact, accumulate((table.count[i] for i in table.exact), initial=0),
                     strict=False))  # fmt: skip  # accumulate yields one start too many
    for sid, count in enumerate(table.count):
        where = (*path, "series", sid)
        values: npt.NDArray[np.float64] | tuple[str, ...]
        if sid in table.text:
            values = tuple(u.texts[text_at : text_at + count])
            text_at += count
            if not all(len(v) <= limits.max_text_length and storable(v) for v in values):
                raise InvalidBatch(f"text longer than {limits.max_text_length}, or holding NUL "
                                   "or a lone surrogate", path=where)  # fmt: skip
        elif sid in table.wide:
            values, wide_at = wide[wide_at : wide_at + count], wide_at + count
        else:
            values, narrow_at = narrow[narrow_at : narrow_at + count], narrow_at + count
        if sid in exact:  # the same values, exactly (integers past float64's exactness)
            values = _exact(np, u.ints[exact[sid] : exact[sid] + count], where)
        unit = table.unit[sid]
        out.append(SeriesColumns(
            header_name(table.device[sid], (*where, "device"), limits),
            header_name(table.tag[sid], (*where, "tag"), limits),
            stamps[at : at + count], values, codes[at : at + count],
            None if unit is None else header_name(unit, (*where, "unit"), limits),
            table.simulated[sid],
        ))  # fmt: skip
        at += count
    if (narrow_at, wide_at, text_at) != (narrow.size, wide.size, len(u.texts)) or any(
        len(s.values) != len(s.ts) for s in out
    ):
        raise ChunkError("chunk columns do not add up: the chunk is damaged", path=path)
    return out


def _exact(np: Any, ints: list[int], path: Path) -> Any:
    """One series' exact integers as an int64 array, or uint64 when they need it."""
    if min(ints) >= -(2**63) and max(ints) < 2**63:
        return np.asarray(ints, dtype=np.int64)
    if min(ints) >= 0:
        return np.asarray(ints, dtype=np.uint64)
    raise ChunkError("a series mixes negative integers with integers past int64", path=path)


def _stamps(np: Any, u: chunk.Unpacked, path: Path) -> npt.NDArray[np.int64]:
    if len(u.ts) != u.readings * u.ts_width:
        raise ChunkError("chunk timestamps do not add up: the chunk is damaged", path=path)
    offsets = np.frombuffer(u.ts, dtype="<i4" if u.ts_width == 4 else "<i8").astype(np.int64)
    if u.deltas:
        offsets = np.cumsum(offsets)
    stamps: npt.NDArray[np.int64] = offsets + np.int64(u.t0)
    return stamps


def _floats(np: Any, data: bytes, width: int, path: Path) -> npt.NDArray[np.float64]:
    """A byte-shuffled little-endian float column, refused if any value is not finite."""
    if len(data) % width:
        raise ChunkError("a chunk value column does not add up: the chunk is damaged", path=path)
    planes = np.frombuffer(data, dtype=np.uint8).reshape(width, -1)
    values = np.ascontiguousarray(planes.T).view("<f4" if width == 4 else "<f8").ravel()
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidBatch(f"value {values[bad]!r} is not finite (NaN/inf are refused)",
                           path=(*path, bad))  # fmt: skip
    out: npt.NDArray[np.float64] = values
    return out
