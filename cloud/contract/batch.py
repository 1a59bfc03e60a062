"""The uplink wire contract: the batch a gateway posts to `POST /v1/ingest`.

Both sides import this module (the edge to encode, the cloud to decode), so it imports nothing
of tagway and holds no I/O: bytes in, a `Batch` out, and back.

A batch (version 1) is a map::

    {"version": 1, "gateway_id": "17", "seq": 42, "created_at": <µs>,
     "series": [{"device": "pump1", "tag": "flow", "unit": "m3/h",
                 "ts": [<µs>, ...], "values": [12.5, ...], "qualities": [0, ...]}],
     "alarms": [{"device": "pump1", "tag": "flow", "name": "flow_high", "kind": "alarm",
                 "state": "active", "ts": <µs>, "severity": 2, "message": "...", "value": 99.1}],
     "dropped": {"telemetry": 0}}

- `seq` is per gateway and increases monotonically; the cloud stores a batch once per
  (gateway, seq), so a retry is harmless.
- Columns are parallel lists: `ts` (int µs since the epoch, UTC), `values` (all numbers and
  bools, or all strings, per series), `qualities` (0 good, 1 uncertain, 2 bad; optional, all good
  when omitted). Bools travel as numbers 0/1 once stored.
- NaN and ±inf are refused (422, naming the series and the index): the cloud's aggregates and
  JSON answers have no honest way to carry them, and a gateway that produces them has a bug
  (a bad reading is expressed by its quality, not by its value).
- `dropped_totals` (``{"life": "<id>", "lanes": {"telemetry": 6888}}``) reports the readings the
  gateway dropped under its outbox quota: running totals per lane since the outbox `life` began.
  The cloud keeps the largest total it has seen per (gateway, life, lane), so a report sent twice
  (a replay under a new seq after kill -9) counts once. `dropped` is the older form, a delta
  since the previous batch, still accepted from gateways in the field (a replay of it does count
  twice: that is why totals replaced it). Counts are at most `MAX_COUNT`.

Encodings, by Content-Type: `application/json`, and msgpack (`application/x-msgpack` or
`application/vnd.tagway.batch+msgpack`) for gateways. Content-Encoding: identity, `zstd`, `gzip`.
The `Limits` are enforced while decoding (`cloud.wire_decode`): the compressed body size, the
decompressed size (the decompressor stops at the cap, so a zip bomb fails after reading at most
the cap), the number of readings, series and alarms, the nesting depth and the length of names
and strings, each checked before the part it bounds is built. Strings hold no NUL and no lone
surrogate (neither can be stored); severities fit a 32-bit integer.

Errors (all `ContractError`, each with an HTTP status, a stable code and details):

    ContractError
    ├── PayloadTooLarge        413: body, decompressed size or reading count over the limit
    ├── UnsupportedEncoding    415: unknown Content-Type or Content-Encoding
    └── InvalidBatch           422: malformed or wrong-typed; `details["path"]` names the field
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Self, TypeAlias

import msgpack
import zstandard
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from cloud.contract.errors import (
    InvalidBatch,
    Path,
    PayloadTooLarge,
    UnsupportedEncoding,
)
from cloud.contract.fleet import AssetPaths, ConfigReport, StatusReport
from cloud.contract.wire import Micros, Wire, WireName, WireText
from cloud.contract.wire_decode import (
    EVENT_DEPTH,
    Inflating,
    Malformed,
    TooLarge,
    batch_value_limit,
    check_json_shape,
    read_msgpack_batch,
)

BATCH_VERSION: Final = 1
JSON: Final = "application/json"
MSGPACK: Final = "application/vnd.tagway.batch+msgpack"
MSGPACK_TYPES: Final = frozenset({"application/x-msgpack", MSGPACK, "application/msgpack"})
CHUNKS: Final = "application/vnd.tagway.chunks+msgpack"
"""Batch format 2 (`cloud.contract.chunked`): a header and the gateway's outbox chunks."""
ENCODINGS: Final = frozenset({"identity", "zstd", "gzip"})
QUALITY_CODES: Final = (0, 1, 2)
MAX_COUNT: Final = 2**48
"""The largest drop count a batch may report (far beyond any real outbox; keeps sums in int64)."""


class Limits(BaseModel):
    """The stated limits of one batch: the cloud enforces them, the edge sizes batches by them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = 8 * 1024 * 1024
    max_decompressed_bytes: int = 64 * 1024 * 1024
    max_readings: int = 100_000
    max_series: int = 10_000
    max_alarms: int = 10_000
    max_name_length: int = 200
    max_text_length: int = 4_096
    max_dropped_lanes: int = 16
    max_events: int = 1_000
    # One chunk of a chunk batch (format 2) may decompress to at most
    #   min(max_chunk_decompressed_bytes, 4 KiB + max(max_chunk_ratio x its compressed size,
    #       max_chunk_bytes_per_reading x the readings it declares))
    # (alarm chunks: max_chunk_bytes_per_record per declared record; event chunks: the contract's
    # largest valid event per declared event, `chunked.largest_event_bytes`, which is past the
    # cap: one asset_paths event of 5,000 devices is 6.5 MB at a ratio of 220).
    # Measured on the codec: simulated plant data 12 B/reading at a ratio of 1.8; a constant
    # series 8 B/reading at 240; one reading per series with 200-character names 212 B/reading
    # at 92; random 4,096-character texts 4.1 KiB/reading at 2.2. Only long texts that also
    # compress over 64 times (the same 4 KiB text 5,000 times: ratio 10,000) are refused.
    max_chunk_ratio: int = 64
    max_chunk_bytes_per_reading: int = 1_024
    max_chunk_bytes_per_record: int = 65_536
    max_chunk_decompressed_bytes: int = 16 * 1024 * 1024


DEFAULT_LIMITS: Final = Limits()

if TYPE_CHECKING:  # numpy is imported where batches are decoded: the edge only encodes them
    import numpy as np
    import numpy.typing as npt

    IntArray: TypeAlias = npt.NDArray[np.int64]
    FloatArray: TypeAlias = npt.NDArray[np.float64]
    QualityArray: TypeAlias = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class SeriesColumns:
    """The readings of one (device, tag) series as parallel columns.

    On the decoded side `ts` is an int64 array, `values` a float64 array (numeric series) or a
    tuple of str (text series), `qualities` an int8 array. The edge may build it from lists.
    """

    device: str
    tag: str
    ts: Sequence[int] | IntArray
    values: Sequence[float | int | bool | str] | FloatArray
    qualities: Sequence[int] | QualityArray | None = None
    unit: str | None = None
    simulated: bool = False
    """True when the series comes from a simulated device; every API shows it."""

    @property
    def is_text(self) -> bool:
        """True when the values are strings."""
        return len(self.values) > 0 and isinstance(self.values[0], str)

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """An alarm state change or an event raised on the gateway.

    `state` is the alarm's state after the change: ``active`` (condition present, not
    acknowledged), ``acknowledged`` (present, acknowledged), ``cleared`` (gone, not yet
    acknowledged), ``normal`` (gone and acknowledged); ``event`` for events. `transition` says
    what happened (``raised``, ``cleared``, ``acked``); gateways before 0.2 omit it.
    `acknowledged_by` and `comment` come with an ``acked`` transition: who acknowledged, from
    where (``cloud key 12``, ``local uid 1000``), and what they wrote.
    """

    device: str
    name: str
    ts: int
    kind: str = "alarm"  # "alarm" (has a state) or "event" (a one-off occurrence)
    state: str = "active"
    tag: str | None = None
    severity: str = "medium"  # low | medium | high | critical
    message: str = ""
    value: float | None = None
    transition: str | None = None
    acknowledged_by: str | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class DroppedTotals:
    """Readings dropped under the outbox quota since the outbox `life` began, per lane."""

    life: str
    lanes: Mapping[str, int] = field(default_factory=dict)


ALARM_KINDS: Final = frozenset({"alarm", "event"})
ALARM_STATES: Final = frozenset({"active", "acknowledged", "cleared", "normal", "event"})
ALARM_TRANSITIONS: Final = frozenset({"raised", "cleared", "acked"})
SEVERITIES: Final = ("low", "medium", "high", "critical")
"""The gateway's severity words, lowest first; the cloud answers them everywhere."""
_LEGACY_SEVERITY: Final = {1: "low", 2: "medium", 3: "high", 4: "critical"}  # gateways < 0.2


@dataclass(frozen=True, slots=True)
class Batch:
    """One uplink batch: the unit of idempotency, keyed by (gateway_id, seq)."""

    gateway_id: str
    seq: int
    created_at: int
    series: Sequence[SeriesColumns] = ()
    alarms: Sequence[AlarmRecord] = ()
    dropped: Mapping[str, int] = field(default_factory=dict)
    version: int = BATCH_VERSION
    events: Sequence[GatewayEvent] = ()
    """Command results, write records and shadow reports (see `GatewayEvent`)."""
    ignored_events: int = 0
    """Events of a type this cloud does not know (a newer gateway): skipped, counted."""
    dropped_totals: DroppedTotals | None = None

    @property
    def reading_count(self) -> int:
        """The number of readings across all series."""
        return sum(len(s) for s in self.series)


# ---------------------------------------------------------------------------------- encoding


def _column(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)  # numpy or a sequence


def batch_to_dict(batch: Batch) -> dict[str, Any]:
    """The batch as plain data (lists, dicts, numbers, strings), ready for JSON or msgpack."""
    series = []
    for s in batch.series:
        item: dict[str, Any] = {"device": s.device, "tag": s.tag, "ts": _column(s.ts)}
        item["values"] = _column(s.values)
        if s.qualities is not None:
            item["qualities"] = _column(s.qualities)
        if s.unit is not None:
            item["unit"] = s.unit
        if s.simulated:
            item["simulated"] = True
        series.append(item)
    out = {
        "version": batch.version,
        "gateway_id": batch.gateway_id,
        "seq": batch.seq,
        "created_at": batch.created_at,
        "series": series,
        "alarms": [alarm_to_dict(a) for a in batch.alarms],
        "dropped": dict(batch.dropped),
    }
    if batch.events:
        out["events"] = [event_to_dict(e) for e in batch.events]
    if batch.dropped_totals is not None:
        totals = batch.dropped_totals
        out["dropped_totals"] = {"life": totals.life, "lanes": dict(totals.lanes)}
    return out


def alarm_to_dict(a: AlarmRecord) -> dict[str, Any]:
    """An alarm record in the contract's plain form (optional fields only when set)."""
    out: dict[str, Any] = {
        "device": a.device, "tag": a.tag, "name": a.name, "kind": a.kind, "state": a.state,
        "ts": a.ts, "severity": a.severity, "message": a.message, "value": a.value,
    }  # fmt: skip
    for key in ("transition", "acknowledged_by", "comment"):
        if getattr(a, key) is not None:
            out[key] = getattr(a, key)
    return out


def encode_batch(
    batch: Batch, *, content_type: str = MSGPACK, content_encoding: str = "zstd", level: int = 3
) -> bytes:
    """Encode a batch for `POST /v1/ingest`; send the same Content-Type and Content-Encoding."""
    return encode_data(
        batch_to_dict(batch), content_type=content_type, content_encoding=content_encoding,
        level=level,
    )  # fmt: skip


def encode_data(
    data: Mapping[str, Any],
    *,
    content_type: str = MSGPACK,
    content_encoding: str = "zstd",
    level: int = 3,
) -> bytes:
    """Encode a batch already in plain form (the shape `batch_to_dict` gives).

    For senders that build the plain form directly: a gateway with ten thousand series of one or
    two readings each would spend most of its uplink time building per-series objects.
    """
    if content_type == JSON:
        raw = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    elif content_type in MSGPACK_TYPES:
        raw = msgpack.packb(data, use_bin_type=True)
    else:
        raise UnsupportedEncoding(f"unknown content type {content_type!r}")
    if content_encoding == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(raw)
    if content_encoding == "gzip":
        return gzip.compress(raw, compresslevel=min(max(level, 1), 9))
    if content_encoding == "identity":
        return raw
    raise UnsupportedEncoding(f"unknown content encoding {content_encoding!r}")


# ---------------------------------------------------------------------------------- decoding


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header (parameters dropped, lower-cased)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decompress(
    body: bytes, content_encoding: str | None, *, limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Undo the Content-Encoding, stopping as soon as the output would pass the limit."""
    encoding = _encoding(body, content_encoding, limits)
    cap = limits.max_decompressed_bytes
    if encoding == "identity":
        out = body
    elif encoding == "zstd":
        out = _unzstd(body, cap)
    else:
        out = _gunzip(body, cap)
    if len(out) > cap:
        raise _too_large("decompressed body", len(out), cap)
    return out


def _encoding(body: bytes, content_encoding: str | None, limits: Limits) -> str:
    """The Content-Encoding if the contract knows it (415 if not), the body within its limit."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ENCODINGS:
        raise UnsupportedEncoding(
            f"unknown Content-Encoding {encoding!r}; expected one of {sorted(ENCODINGS)}",
            details={"content_encoding": encoding},
        )
    if len(body) > limits.max_body_bytes:
        raise _too_large("body", len(body), limits.max_body_bytes)
    return encoding


def _too_large(what: str, size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{what} exceeds the limit of {limit} bytes",
        details={"limit": limit, "size_at_least": size},
    )


def _unzstd(body: bytes, cap: int) -> bytes:
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(body), read_across_frames=True
        )
        with reader:
            out = reader.read(cap + 1)
            if len(out) > cap:
                raise _too_large("decompressed body", len(out), cap)
            return bytes(out)
    except zstandard.ZstdError as exc:
        raise InvalidBatch(f"body is not valid zstd: {exc}", path=("body",)) from exc


def _gunzip(body: bytes, cap: int) -> bytes:
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decoder.decompress(body, cap + 1)
    except zlib.error as exc:
        raise InvalidBatch(f"body is not valid gzip: {exc}", path=("body",)) from exc
    if len(out) > cap:
        raise _too_large("decompressed body", len(out), cap)
    if not decoder.eof:
        raise InvalidBatch("gzip body is truncated", path=("body",))
    if decoder.unused_data:
        raise InvalidBatch("data after the first gzip member is not supported", path=("body",))
    return out


def check_content_type(content_type: str | None) -> str:
    """The media type if the contract knows it; `UnsupportedEncoding` (415) otherwise."""
    kind = media_type(content_type)
    if kind != JSON and kind not in MSGPACK_TYPES and kind != CHUNKS:
        raise UnsupportedEncoding(
            f"unknown Content-Type {kind or '(none)'!r}; expected {JSON} or {MSGPACK}",
            details={"content_type": kind},
        )
    return kind


def parse_payload(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Any:
    """Decompress and parse a body into plain data within the limits (`cloud.wire_decode`): a
    size over a limit is a 413, a syntax or shape error a 422 naming the field."""
    kind = check_content_type(content_type)
    try:
        if kind == JSON:
            raw = decompress(body, content_encoding, limits=limits)
            check_json_shape(raw, max_depth=EVENT_DEPTH + 1, max_values=batch_value_limit(limits))
            try:
                return json.loads(raw)  # NaN/inf parse here and are refused by path later
            except (ValueError, RecursionError) as exc:
                raise InvalidBatch(f"body is not valid JSON: {exc}", path=("body",)) from exc
        source = Inflating(
            body, _encoding(body, content_encoding, limits), limits.max_decompressed_bytes
        )
        return read_msgpack_batch(source, limits)
    except TooLarge as exc:
        raise PayloadTooLarge(
            str(exc), details={"limit": exc.limit, "path": list(exc.path)}
        ) from exc
    except Malformed as exc:
        raise InvalidBatch(str(exc), path=exc.path) from exc


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the contract")


def decode_batch(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Batch:
    """Decompress, parse and validate a posted body into a columnar `Batch`.

    Columns are validated as arrays (numpy), not reading by reading, so a 5,000-reading batch
    decodes in well under a millisecond of validation work.
    """
    check_content_type(content_type)  # before any decompression work
    return batch_from_data(
        parse_payload(body, content_type, content_encoding, limits), limits=limits
    )


def batch_from_data(data: Any, *, limits: Limits = DEFAULT_LIMITS) -> Batch:
    """Validate parsed plain data (as JSON or msgpack give it) into a `Batch`."""
    top = _mapping(data, ())
    version = _int(top.get("version"), ("version",))
    if version != BATCH_VERSION:
        raise InvalidBatch(
            f"unsupported batch version {version}; expected {BATCH_VERSION}", path=("version",)
        )
    gateway_id = _name(top.get("gateway_id"), ("gateway_id",), limits)
    seq = _int(top.get("seq"), ("seq",))
    if seq < 0:
        raise InvalidBatch("seq must be >= 0", path=("seq",))
    created_at = _int(top.get("created_at"), ("created_at",))
    series_data = _list(top.get("series", []), ("series",))
    if len(series_data) > limits.max_series:
        raise PayloadTooLarge(f"{len(series_data)} series exceed the limit of {limits.max_series}")
    total = sum(
        len(s["ts"]) for s in series_data if isinstance(s, dict) and isinstance(s.get("ts"), list)
    )
    if total > limits.max_readings:
        raise PayloadTooLarge(
            f"{total} readings exceed the limit of {limits.max_readings}",
            details={"limit": limits.max_readings, "readings": total},
        )
    series = tuple(_series(item, ("series", i), limits) for i, item in enumerate(series_data))
    alarms_data = _list(top.get("alarms", []), ("alarms",))
    if len(alarms_data) > limits.max_alarms:
        raise PayloadTooLarge(f"{len(alarms_data)} alarms exceed the limit of {limits.max_alarms}")
    alarms = tuple(_alarm(item, ("alarms", i), limits) for i, item in enumerate(alarms_data))
    dropped = _dropped(top.get("dropped", {}), ("dropped",), limits)
    totals = top.get("dropped_totals")
    dropped_totals = None if totals is None else _dropped_totals(totals, limits)
    events, ignored = _events(top.get("events", []), limits)
    unknown = set(top) - _BATCH_FIELDS
    if unknown:
        first = sorted(map(str, unknown))[0]
        raise InvalidBatch(f"unknown field {first!r}", path=(first,))
    return Batch(
        gateway_id, seq, created_at, series, alarms, dropped, version, events, ignored,
        dropped_totals=dropped_totals,
    )  # fmt: skip


_BATCH_FIELDS: Final = frozenset(
    {"version", "gateway_id", "seq", "created_at", "series", "alarms", "dropped", "events",
     "dropped_totals"}
)  # fmt: skip


def _series(data: Any, path: Path, limits: Limits) -> SeriesColumns:
    item = _mapping(data, path)
    unknown = set(item) - {"device", "tag", "unit", "ts", "values", "qualities", "simulated"}
    if unknown:
        raise InvalidBatch(
            f"unknown field {sorted(unknown)[0]!r}", path=(*path, sorted(unknown)[0])
        )
    device = _name(item.get("device"), (*path, "device"), limits)
    tag = _name(item.get("tag"), (*path, "tag"), limits)
    unit = item.get("unit")
    if unit is not None:
        unit = _name(unit, (*path, "unit"), limits)
    ts = _int_column(item.get("ts"), (*path, "ts"))
    values = _values_column(item.get("values"), (*path, "values"), len(ts), limits)
    qualities = _quality_column(item.get("qualities"), (*path, "qualities"), len(ts))
    simulated = item.get("simulated", False)
    if not isinstance(simulated, bool):
        raise InvalidBatch("simulated must be true or false", path=(*path, "simulated"))
    return SeriesColumns(device, tag, ts, values, qualities, unit, simulated)


def _int_column(data: Any, path: Path) -> IntArray:
    import numpy as np  # noqa: PLC0415 - see the top

    items = _list(data, path)
    if not items:
        return np.empty(0, dtype=np.int64)
    array = _array(items)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        bad = next((i for i, v in enumerate(items) if type(v) is not int), 0)
        raise InvalidBatch(
            f"expected integer microseconds, got {_shown(items[bad])}", path=(*path, bad)
        )
    if array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
        raise InvalidBatch("timestamp out of the int64 range", path=(*path, int(array.argmax())))
    return array.astype(np.int64, copy=False)


def _array(items: list[Any]) -> npt.NDArray[Any]:
    """A numpy array of `items`, or an object array when they are ragged or mixed (which the
    callers refuse, naming the first bad item)."""
    import numpy as np  # noqa: PLC0415 - see the top

    try:
        return np.asarray(items)
    except (ValueError, TypeError, OverflowError):  # ragged: "inhomogeneous shape"
        return np.asarray([None], dtype=object)  # refused by every caller


def _values_column(
    data: Any, path: Path, length: int, limits: Limits
) -> FloatArray | tuple[str, ...]:
    import numpy as np  # noqa: PLC0415 - see the top

    items = _list(data, path)
    if len(items) != length:
        raise InvalidBatch(f"{len(items)} values for {length} timestamps", path=path)
    if items and isinstance(items[0], str):
        for i, v in enumerate(items):
            if not isinstance(v, str):
                raise InvalidBatch(
                    f"a text series holds only strings, got {_shown(v)}", path=(*path, i)
                )
            if len(v) > limits.max_text_length or not storable(v):
                raise InvalidBatch(
                    f"text longer than {limits.max_text_length}, or holding NUL or a lone"
                    " surrogate",
                    path=(*path, i),
                )
        return tuple(items)
    array = _array(items) if items else np.empty(0, dtype=np.float64)
    if array.dtype.kind not in "iufb" or array.ndim != 1:
        bad = next((i for i, v in enumerate(items) if type(v) not in (int, float, bool)), 0)
        raise InvalidBatch(
            f"expected a number or bool, got {_shown(items[bad])}", path=(*path, bad)
        )
    if array.dtype.kind == "f" and type(items[0]) is int and all(type(v) is int for v in items):
        array = _unsigned(items, array)  # numpy makes floats of integers past int64
    if array.dtype.kind in "iu" and items and (array.max() > 2**53 or array.min() < -(2**53)):
        # Integers past float64's exactness stay integers (int64, or uint64 when they need it).
        exact: FloatArray = array
        return exact
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidBatch(
            f"value {values[bad]!r} is not finite (NaN/inf are refused)", path=(*path, bad)
        )
    return values


def _unsigned(items: list[int], otherwise: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """`items` as uint64 when they all fit it, else `otherwise` (floats, or refused later)."""
    import numpy as np  # noqa: PLC0415 - see the top

    if min(items) >= 0 and max(items) < 2**64:
        return np.asarray(items, dtype=np.uint64)
    return otherwise


def _quality_column(data: Any, path: Path, length: int) -> QualityArray:
    import numpy as np  # noqa: PLC0415 - see the top

    if data is None:
        return np.zeros(length, dtype=np.int8)
    items = _list(data, path)
    if len(items) != length:
        raise InvalidBatch(f"{len(items)} qualities for {length} timestamps", path=path)
    if not items:
        return np.zeros(0, dtype=np.int8)
    array = _array(items)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        bad = next((i for i, v in enumerate(items) if type(v) is not int), 0)
        raise InvalidBatch(
            f"quality must be 0, 1 or 2, got {_shown(items[bad])}", path=(*path, bad)
        )
    out_of_range = (array < 0) | (array > 2)
    if out_of_range.any():
        bad = int(np.flatnonzero(out_of_range)[0])
        raise InvalidBatch(
            f"quality must be 0, 1 or 2, got {_shown(items[bad])}", path=(*path, bad)
        )
    return array.astype(np.int8)


def _alarm(data: Any, path: Path, limits: Limits) -> AlarmRecord:
    item = _mapping(data, path)
    known = {"device", "tag", "name", "kind", "state", "ts", "severity", "message", "value",
             "transition", "acknowledged_by", "comment"}  # fmt: skip
    unknown = set(item) - known
    if unknown:
        raise InvalidBatch(
            f"unknown field {sorted(unknown)[0]!r}", path=(*path, sorted(unknown)[0])
        )
    kind = item.get("kind", "alarm")
    if not isinstance(kind, str) or kind not in ALARM_KINDS:
        raise InvalidBatch(f"kind must be one of {sorted(ALARM_KINDS)}", path=(*path, "kind"))
    state = item.get("state", "active" if kind == "alarm" else "event")
    if not isinstance(state, str) or state not in ALARM_STATES:
        raise InvalidBatch(f"state must be one of {sorted(ALARM_STATES)}", path=(*path, "state"))
    tag = item.get("tag")
    message = item.get("message", "")
    if (
        not isinstance(message, str)
        or len(message) > limits.max_text_length
        or not storable(message)
    ):
        raise InvalidBatch(
            f"message must be a string of at most {limits.max_text_length} characters without"
            " NUL or lone surrogates",
            path=(*path, "message"),
        )
    value = item.get("value")
    if value is not None:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise InvalidBatch("value must be a finite number or null", path=(*path, "value"))
        value = float(value)
    transition = item.get("transition")
    if transition is not None and transition not in ALARM_TRANSITIONS:
        raise InvalidBatch(
            f"transition must be one of {sorted(ALARM_TRANSITIONS)}", path=(*path, "transition")
        )
    by, comment = item.get("acknowledged_by"), item.get("comment")
    return AlarmRecord(
        device=_name(item.get("device"), (*path, "device"), limits),
        name=_name(item.get("name"), (*path, "name"), limits),
        ts=_int(item.get("ts"), (*path, "ts")),
        kind=kind,
        state=state,
        tag=None if tag is None else _name(tag, (*path, "tag"), limits),
        severity=_severity(item.get("severity", "medium"), (*path, "severity")),
        message=message,
        value=value,
        transition=transition,
        acknowledged_by=None if by is None else _name(by, (*path, "acknowledged_by"), limits),
        comment=None if comment is None else _text(comment, (*path, "comment"), limits),
    )


def _severity(data: Any, path: Path) -> str:
    """A severity word; the numbers 1-4 of gateways before 0.2 are read as the same words."""
    if isinstance(data, str) and data in SEVERITIES:
        return data
    if type(data) is int and data in _LEGACY_SEVERITY:
        return _LEGACY_SEVERITY[data]
    raise InvalidBatch(f"severity must be one of {list(SEVERITIES)}", path=path)


def _text(data: Any, path: Path, limits: Limits) -> str:
    if not isinstance(data, str) or len(data) > limits.max_text_length or not storable(data):
        raise InvalidBatch(
            f"expected a string of at most {limits.max_text_length} characters without NUL or"
            " lone surrogates",
            path=path,
        )
    return data


def _dropped(data: Any, path: Path, limits: Limits) -> dict[str, int]:
    items = _mapping(data, path)
    if len(items) > limits.max_dropped_lanes:
        raise InvalidBatch(f"more than {limits.max_dropped_lanes} lanes", path=path)
    out: dict[str, int] = {}
    for lane, count in items.items():
        where: Path = (*path, str(lane)[:50])
        name = _name(lane, where, limits)
        out[name] = _int(count, where, low=0, high=MAX_COUNT + 1)
    return out


def _dropped_totals(data: Any, limits: Limits) -> DroppedTotals:
    path: Path = ("dropped_totals",)
    item = _mapping(data, path)
    unknown = set(item) - {"life", "lanes"}
    if unknown:
        first = sorted(map(str, unknown))[0]
        raise InvalidBatch(f"unknown field {first!r}", path=(*path, first))
    life = _name(item.get("life"), (*path, "life"), limits)
    return DroppedTotals(life, _dropped(item.get("lanes", {}), (*path, "lanes"), limits))


def _mapping(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidBatch(f"expected an object, got {type(data).__name__}", path=path)
    return data


def batch_digest(batch: Batch) -> bytes:
    """SHA-256 over what a batch says (its readings, alarms and drop reports; not its encoding
    nor `created_at`): two posts of one (gateway, seq) must agree on it."""
    import numpy as np  # noqa: PLC0415 - see the top

    h = hashlib.sha256(b"tagway-batch-1")
    for s in batch.series:
        h.update(json.dumps([s.device, s.tag, s.unit, s.simulated, len(s)]).encode())
        h.update(np.asarray(s.ts, dtype=np.int64).tobytes())
        if s.is_text:
            h.update(json.dumps(list(s.values)).encode())
        else:
            h.update(np.asarray(s.values, dtype=np.float64).tobytes())
        qualities = np.zeros(len(s), np.int8) if s.qualities is None else s.qualities
        h.update(np.asarray(qualities, dtype=np.int8).tobytes())
    alarms = [[a.device, a.tag, a.name, a.kind, a.state, a.ts, a.severity, a.message, a.value]
              for a in batch.alarms]  # fmt: skip
    totals = batch.dropped_totals
    tail = [alarms, sorted(batch.dropped.items()),
            None if totals is None else [totals.life, sorted(totals.lanes.items())]]  # fmt: skip
    h.update(json.dumps(tail).encode())
    return h.digest()


def _list(data: Any, path: Path) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidBatch(f"expected a list, got {type(data).__name__}", path=path)
    return data


def _int(data: Any, path: Path, *, low: int = -(2**63), high: int = 2**63) -> int:
    """An int in [low, high)."""
    if type(data) is not int:
        raise InvalidBatch(f"expected an integer, got {_shown(data)}", path=path)
    if not low <= data < high:
        raise InvalidBatch(f"{data} is out of range [{low}, {high - 1}]", path=path)
    return data


def _shown(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 60 else text[:57] + "..."


def storable(text: str) -> bool:
    """True unless `text` holds NUL or a lone surrogate, which no database column can store."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(data: Any, path: Path, limits: Limits) -> str:
    if not isinstance(data, str) or not data or len(data) > limits.max_name_length:
        raise InvalidBatch(
            f"expected a non-empty string of at most {limits.max_name_length} characters",
            path=path,
        )
    if not storable(data):
        raise InvalidBatch("strings may not hold NUL characters or lone surrogates", path=path)
    return data


# ------------------------------------------------------------------------------------ two-way
#
# What travels between the cloud and a gateway besides telemetry. Cloud to gateway, on the
# channel the gateway holds open (`GET /v1/gateway/channel`, server-sent events): a `ChannelHello`
# when it connects, the `DesiredState` (the shadow's desired setpoints) on connect and on every
# change, and each pending `ChannelCommand`. Gateway to cloud, inside batches (`Batch.events`,
# so they travel through the outbox like alarms): a `CommandResult` per finished command, a
# `WriteRecord` per setpoint write whatever asked for it, and a `ShadowReport` of the gateway's
# facts. All are pydantic models validated strictly: each side treats the other's messages as
# hostile until parsed.

COMMAND_KINDS: Final = ("write", "ack_alarm", "reload_config", "requeue_quarantine", "ping")
COMMAND_OUTCOMES: Final = ("succeeded", "failed", "expired", "unknown")
MAX_RESULT_BYTES: Final = 16_384
MAX_SETPOINTS: Final = 10_000

SetpointValue = (
    bool
    | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | Annotated[str, Field(max_length=4_096, pattern=r"^[^\x00]*$")]
)
"""A value to write: a bool, an integer, a finite float or a string."""


class WriteArgs(Wire):
    """Write `value` to a tag of a device (through the tag's limits on the gateway)."""

    device: WireName
    tag: WireName
    value: SetpointValue


class AckAlarmArgs(Wire):
    """Acknowledge the gateway's alarm `name`."""

    name: WireName
    comment: WireText | None = None


class NoArgs(Wire):
    """A command without arguments."""


class WriteCommand(Wire):
    """``write``: a setpoint; the result carries the old value and the value read back."""

    kind: Literal["write"]
    args: WriteArgs


class AckAlarmCommand(Wire):
    """``ack_alarm``: acknowledge an alarm on the gateway."""

    kind: Literal["ack_alarm"]
    args: AckAlarmArgs


class ReloadConfigCommand(Wire):
    """``reload_config``: read the gateway's config file again (as SIGHUP does)."""

    kind: Literal["reload_config"]
    args: NoArgs = NoArgs()


class RequeueQuarantineCommand(Wire):
    """``requeue_quarantine``: give quarantined outbox chunks another try."""

    kind: Literal["requeue_quarantine"]
    args: NoArgs = NoArgs()


class PingCommand(Wire):
    """``ping``: answer with the agent's version and uptime (a round-trip check)."""

    kind: Literal["ping"]
    args: NoArgs = NoArgs()


CommandSpec = Annotated[
    WriteCommand | AckAlarmCommand | ReloadConfigCommand | RequeueQuarantineCommand | PingCommand,
    Field(discriminator="kind"),
]


class ChannelHello(Wire):
    """The channel's first event: who the cloud thinks is connected, and its clock."""

    gateway_id: int
    server_time: Micros
    keepalive_s: float


class ChannelCommand(Wire):
    """A command delivered to the gateway.

    `expires_in_s` is the time left when the cloud sent it: the gateway measures the deadline
    on its own monotonic clock from arrival, so a wrong gateway clock cannot run a stale command.
    """

    id: int = Field(ge=1)
    command: CommandSpec
    created_at: Micros
    created_by: WireName
    expires_at: Micros
    expires_in_s: float = Field(ge=0)


class DesiredSetpoint(Wire):
    """One desired setpoint. `version` changes each time the cloud sets it; `set_at` is when
    (cloud clock); past `expires_at` it is no longer applied."""

    value: SetpointValue
    expires_at: Micros | None = None
    version: int = Field(ge=1)
    set_at: Micros
    set_by: WireName


Setpoints = dict[WireName, dict[WireName, DesiredSetpoint]]


class DesiredState(Wire):
    """The shadow's desired document as the gateway receives it."""

    version: int = Field(ge=0)
    setpoints: Setpoints = Field(default_factory=dict)
    server_time: Micros

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if sum(len(tags) for tags in self.setpoints.values()) > MAX_SETPOINTS:
            raise ValueError(f"more than {MAX_SETPOINTS} setpoints")
        return self


class CommandResult(Wire):
    """What became of a command on the gateway; sent once, applied by the cloud once."""

    type: Literal["command_result"]
    command_id: int = Field(ge=1)
    state: Literal["succeeded", "failed", "expired", "unknown"]
    result: dict[str, JsonValue] = Field(default_factory=dict)
    error: WireText | None = None
    started_at: Micros | None = None
    finished_at: Micros

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if len(json.dumps(self.result)) > MAX_RESULT_BYTES:
            raise ValueError(f"result larger than {MAX_RESULT_BYTES} bytes of JSON")
        return self


class WriteRecord(Wire):
    """One setpoint write on the gateway, wherever it came from (the gateway's audit row)."""

    type: Literal["write"]
    id: int = Field(ge=1, description="the gateway's audit id: unique per gateway")
    ts: Micros
    device: WireName
    tag: WireName
    value: SetpointValue
    old: SetpointValue | None = None
    read_back: SetpointValue | None = None
    outcome: Literal["written", "refused", "failed", "unknown"]
    reason: WireText | None = None
    who: WireName
    source: WireName
    command_id: int | None = None


class ReportedSetpoint(Wire):
    """The current value of a writable tag, as the gateway last read it."""

    value: SetpointValue | None = None
    ts: Micros | None = None
    quality: Literal["good", "uncertain", "bad"] = "good"


class AppliedSetpoint(Wire):
    """What the gateway did with one desired setpoint version."""

    version: int = Field(ge=1)
    outcome: Literal["applied", "refused", "failed", "expired", "superseded"]
    reason: WireText | None = None
    at: Micros


class ShadowReport(Wire):
    """The gateway's facts for the shadow's `reported` document. `version` counts up on the
    gateway, so a late copy never replaces a newer one."""

    type: Literal["reported"]
    version: int = Field(ge=1)
    desired_version: int = Field(ge=0)
    agent_version: WireName
    config_version: WireName | None = None
    setpoints: dict[WireName, dict[WireName, ReportedSetpoint]] = Field(default_factory=dict)
    applied: dict[WireName, dict[WireName, AppliedSetpoint]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        for section in (self.setpoints, self.applied):
            if sum(len(tags) for tags in section.values()) > MAX_SETPOINTS:
                raise ValueError(f"more than {MAX_SETPOINTS} setpoints")
        return self


AnyEvent: TypeAlias = (
    CommandResult | WriteRecord | ShadowReport | ConfigReport | StatusReport | AssetPaths
)
GatewayEvent = Annotated[AnyEvent, Field(discriminator="type")]
EVENT_TYPES: Final = frozenset(
    {"command_result", "write", "reported", "config", "status", "asset_paths"}
)
_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(GatewayEvent)


def event_to_dict(event: AnyEvent) -> dict[str, Any]:
    """A gateway event in the contract's plain form."""
    return event.model_dump(mode="json", exclude_none=True)


def parse_event(data: Any) -> AnyEvent:
    """Validate one gateway event (strictly); `InvalidBatch` names the bad field."""
    try:
        return _EVENT.validate_python(data, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidBatch(first["msg"], path=tuple(first["loc"])) from exc


def _events(data: Any, limits: Limits) -> tuple[tuple[Any, ...], int]:
    items = _list(data, ("events",))
    if len(items) > limits.max_events:
        raise PayloadTooLarge(f"{len(items)} events exceed the limit of {limits.max_events}")
    events, ignored = [], 0
    for i, item in enumerate(items):
        kind = _mapping(item, ("events", i)).get("type")
        if kind not in EVENT_TYPES:
            ignored += 1  # a newer gateway's event: its telemetry must not be refused for it
            continue
        try:
            events.append(parse_event(item))
        except InvalidBatch as exc:
            raise InvalidBatch(exc.message, path=("events", i, *exc.path)) from exc
    return tuple(events), ignored


# The chunk batch format (`cloud.contract.chunked`) validates the same header and alarm fields.
header_int = _int
header_name = _name
alarm_from_data = _alarm
dropped_from_data = _dropped
dropped_totals_from_data = _dropped_totals
events_from_data = _events
