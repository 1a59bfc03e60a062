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
- `dropped` counts readings the gateway dropped under its outbox quota since its previous
  batch, per lane (a delta, not a running total), so drops are visible in the cloud instead of
  silently lost. The cloud adds them up per gateway and lane and per tenant and day.

Encodings, by Content-Type: `application/json`, and msgpack (`application/x-msgpack` or
`application/vnd.tagway.batch+msgpack`) for gateways. Content-Encoding: identity, `zstd`, `gzip`.
The `Limits` are enforced while decoding: the compressed body size, the decompressed size (the
decompressor stops at the cap, so a zip bomb fails after reading at most the cap), the number of
readings, series and alarms, and the length of names and strings.

Errors (all `ContractError`, each with an HTTP status, a stable code and details):

    ContractError
    ├── PayloadTooLarge        413: body, decompressed size or reading count over the limit
    ├── UnsupportedEncoding    415: unknown Content-Type or Content-Encoding
    └── InvalidBatch           422: malformed or wrong-typed; `details["path"]` names the field
"""

from __future__ import annotations

import gzip
import io
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import msgpack
import zstandard
from pydantic import BaseModel, ConfigDict

BATCH_VERSION: Final = 1
JSON: Final = "application/json"
MSGPACK: Final = "application/vnd.tagway.batch+msgpack"
MSGPACK_TYPES: Final = frozenset({"application/x-msgpack", MSGPACK, "application/msgpack"})
ENCODINGS: Final = frozenset({"identity", "zstd", "gzip"})
QUALITY_CODES: Final = (0, 1, 2)

Path = tuple[str | int, ...]


class ContractError(Exception):
    """Root of the wire-contract errors.

    Args:
        message: what was wrong, for people.
        details: machine-readable context (`path` for 422s, `limit` for 413s).
    """

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class PayloadTooLarge(ContractError):
    """The body, its decompressed form or its reading count exceeds a stated limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(ContractError):
    """The Content-Type or Content-Encoding is not one the contract knows."""

    status = 415
    code = "unsupported_media_type"


class InvalidBatch(ContractError):
    """The batch is malformed or a field has the wrong type; `details["path"]` names the field."""

    status = 422
    code = "invalid_batch"

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message, details={"path": list(path)})
        self.path = path


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
    """An alarm state change or an event raised on the gateway."""

    device: str
    name: str
    ts: int
    kind: str = "alarm"  # "alarm" (has a state) or "event" (a one-off occurrence)
    state: str = "active"  # active | acknowledged | cleared (alarms); "event" for events
    tag: str | None = None
    severity: int = 1
    message: str = ""
    value: float | None = None


ALARM_KINDS: Final = frozenset({"alarm", "event"})
ALARM_STATES: Final = frozenset({"active", "acknowledged", "cleared", "event"})


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
    alarms = [
        {
            "device": a.device,
            "tag": a.tag,
            "name": a.name,
            "kind": a.kind,
            "state": a.state,
            "ts": a.ts,
            "severity": a.severity,
            "message": a.message,
            "value": a.value,
        }
        for a in batch.alarms
    ]
    return {
        "version": batch.version,
        "gateway_id": batch.gateway_id,
        "seq": batch.seq,
        "created_at": batch.created_at,
        "series": series,
        "alarms": alarms,
        "dropped": dict(batch.dropped),
    }


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
    encoding = (content_encoding or "identity").strip().lower()
    cap = limits.max_decompressed_bytes
    if encoding not in ENCODINGS:
        raise UnsupportedEncoding(
            f"unknown Content-Encoding {encoding!r}; expected one of {sorted(ENCODINGS)}",
            details={"content_encoding": encoding},
        )
    if len(body) > limits.max_body_bytes:
        raise _too_large("body", len(body), limits.max_body_bytes)
    if encoding == "identity":
        out = body
    elif encoding == "zstd":
        out = _unzstd(body, cap)
    else:
        out = _gunzip(body, cap)
    if len(out) > cap:
        raise _too_large("decompressed body", len(out), cap)
    return out


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
    if kind != JSON and kind not in MSGPACK_TYPES:
        raise UnsupportedEncoding(
            f"unknown Content-Type {kind or '(none)'!r}; expected {JSON} or {MSGPACK}",
            details={"content_type": kind},
        )
    return kind


def parse_payload(raw: bytes, content_type: str | None) -> Any:
    """Parse JSON or msgpack bytes into plain data; a syntax error is a 422 on `body`."""
    kind = check_content_type(content_type)
    if kind == JSON:
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise InvalidBatch(f"body is not valid JSON: {exc}", path=("body",)) from exc
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise InvalidBatch(f"body is not valid msgpack: {exc}", path=("body",)) from exc


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
    raw = decompress(body, content_encoding, limits=limits)
    return batch_from_data(parse_payload(raw, content_type), limits=limits)


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
    dropped = _dropped(top.get("dropped", {}), limits)
    unknown = set(top) - {
        "version",
        "gateway_id",
        "seq",
        "created_at",
        "series",
        "alarms",
        "dropped",
    }
    if unknown:
        raise InvalidBatch(f"unknown field {sorted(unknown)[0]!r}", path=(sorted(unknown)[0],))
    return Batch(gateway_id, seq, created_at, series, alarms, dropped, version)


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
    array = np.asarray(items)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        bad = next((i for i, v in enumerate(items) if type(v) is not int), 0)
        raise InvalidBatch(f"expected integer microseconds, got {items[bad]!r}", path=(*path, bad))
    if array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
        raise InvalidBatch("timestamp out of the int64 range", path=(*path, int(array.argmax())))
    return array.astype(np.int64, copy=False)


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
                raise InvalidBatch(f"a text series holds only strings, got {v!r}", path=(*path, i))
            if len(v) > limits.max_text_length or "\x00" in v:
                raise InvalidBatch(
                    f"text longer than {limits.max_text_length} or holding NUL", path=(*path, i)
                )
        return tuple(items)
    array = np.asarray(items) if items else np.empty(0, dtype=np.float64)
    if array.dtype.kind not in "iufb" or array.ndim != 1:
        bad = next((i for i, v in enumerate(items) if type(v) not in (int, float, bool)), 0)
        raise InvalidBatch(f"expected a number or bool, got {items[bad]!r}", path=(*path, bad))
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidBatch(
            f"value {values[bad]!r} is not finite (NaN/inf are refused)", path=(*path, bad)
        )
    return values


def _quality_column(data: Any, path: Path, length: int) -> QualityArray:
    import numpy as np  # noqa: PLC0415 - see the top

    if data is None:
        return np.zeros(length, dtype=np.int8)
    items = _list(data, path)
    if len(items) != length:
        raise InvalidBatch(f"{len(items)} qualities for {length} timestamps", path=path)
    if not items:
        return np.zeros(0, dtype=np.int8)
    array = np.asarray(items)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        bad = next((i for i, v in enumerate(items) if type(v) is not int), 0)
        raise InvalidBatch(f"quality must be 0, 1 or 2, got {items[bad]!r}", path=(*path, bad))
    out_of_range = (array < 0) | (array > 2)
    if out_of_range.any():
        bad = int(np.flatnonzero(out_of_range)[0])
        raise InvalidBatch(f"quality must be 0, 1 or 2, got {items[bad]!r}", path=(*path, bad))
    return array.astype(np.int8)


def _alarm(data: Any, path: Path, limits: Limits) -> AlarmRecord:
    item = _mapping(data, path)
    known = {"device", "tag", "name", "kind", "state", "ts", "severity", "message", "value"}
    unknown = set(item) - known
    if unknown:
        raise InvalidBatch(
            f"unknown field {sorted(unknown)[0]!r}", path=(*path, sorted(unknown)[0])
        )
    kind = item.get("kind", "alarm")
    if kind not in ALARM_KINDS:
        raise InvalidBatch(f"kind must be one of {sorted(ALARM_KINDS)}", path=(*path, "kind"))
    state = item.get("state", "active" if kind == "alarm" else "event")
    if state not in ALARM_STATES:
        raise InvalidBatch(f"state must be one of {sorted(ALARM_STATES)}", path=(*path, "state"))
    tag = item.get("tag")
    message = item.get("message", "")
    if not isinstance(message, str) or len(message) > limits.max_text_length or "\x00" in message:
        raise InvalidBatch("message must be a string of bounded length", path=(*path, "message"))
    value = item.get("value")
    if value is not None:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise InvalidBatch("value must be a finite number or null", path=(*path, "value"))
        value = float(value)
    return AlarmRecord(
        device=_name(item.get("device"), (*path, "device"), limits),
        name=_name(item.get("name"), (*path, "name"), limits),
        ts=_int(item.get("ts"), (*path, "ts")),
        kind=kind,
        state=state,
        tag=None if tag is None else _name(tag, (*path, "tag"), limits),
        severity=_int(item.get("severity", 1), (*path, "severity")),
        message=message,
        value=value,
    )


def _dropped(data: Any, limits: Limits) -> dict[str, int]:
    items = _mapping(data, ("dropped",))
    if len(items) > limits.max_dropped_lanes:
        raise InvalidBatch("too many dropped lanes", path=("dropped",))
    out: dict[str, int] = {}
    for lane, count in items.items():
        path: Path = ("dropped", lane)
        number = _int(count, path)
        if number < 0:
            raise InvalidBatch("a dropped count is never negative", path=path)
        out[_name(lane, path, limits)] = number
    return out


def _mapping(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidBatch(f"expected an object, got {type(data).__name__}", path=path)
    return data


def _list(data: Any, path: Path) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidBatch(f"expected a list, got {type(data).__name__}", path=path)
    return data


def _int(data: Any, path: Path) -> int:
    if type(data) is not int or not -(2**63) <= data < 2**63:
        raise InvalidBatch(f"expected an integer, got {data!r}", path=path)
    return data


def _name(data: Any, path: Path, limits: Limits) -> str:
    if not isinstance(data, str) or not data or len(data) > limits.max_name_length:
        raise InvalidBatch(
            f"expected a non-empty string of at most {limits.max_name_length} characters",
            path=path,
        )
    if "\x00" in data:
        raise InvalidBatch("strings may not contain NUL characters", path=path)
    return data


def check_time_window(batch: Batch, *, now_us: int, max_future_us: int, max_age_us: int) -> None:
    """Refuse readings from the far future or the distant past (clock faults), naming the first.

    Late and out-of-order data inside the window is accepted.
    """
    import numpy as np  # noqa: PLC0415 - see the top

    newest, oldest = now_us + max_future_us, now_us - max_age_us
    for i, s in enumerate(batch.series):
        ts = np.asarray(s.ts, dtype=np.int64)
        bad = np.flatnonzero((ts > newest) | (ts < oldest))
        if bad.size:
            j = int(bad[0])
            where = "future" if ts[j] > newest else "past"
            raise InvalidBatch(
                f"timestamp {int(ts[j])} of {s.device}/{s.tag} is too far in the {where}",
                path=("series", i, "ts", j),
            )
    for i, a in enumerate(batch.alarms):
        if not oldest <= a.ts <= newest:
            raise InvalidBatch(f"alarm timestamp {a.ts} is out of range", path=("alarms", i, "ts"))
