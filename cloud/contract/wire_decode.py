"""Bounded decoding: a body is measured while it is read, and refused before it is built.

A 2 KiB zstd body can expand to 64 MiB of msgpack holding 67 million elements. Decoding that in
full and only then counting would cost a replica seconds of CPU and hundreds of MiB. So:

- msgpack batches are read by `read_msgpack_batch` straight from the decompressor (`Inflating`:
  the decompressed body is never held whole, and reading stops at `max_decompressed_bytes`),
  following the contract's shape: maps and
  lists are entered by their headers, whose lengths are checked against the limits *before* any
  element is read, and every other position must be a scalar (the unpacker is built with
  ``max_array_len=0, max_map_len=0``, so a list or map where a number belongs is refused at its
  header byte). Nothing deeper than the contract, longer than a limit, or unknown is built.
- JSON text is measured by `json_shape` (nesting depth and number of values) without building
  it, with bytes operations and numpy at C speed, before `json.loads` builds anything.

Both raise `TooLarge` (a size over a limit: 413) or `Malformed` (the wrong shape: 422), each
with the path of the field; `cloud.contract` answers them as its own errors. This module imports
nothing of tagway, so the contract can use it.
"""

from __future__ import annotations

import io
import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgpack
import zstandard

Path = tuple[str | int, ...]
Reader = Callable[[msgpack.Unpacker, Path], Any]

BATCH_DEPTH: Final = 4
"""The contract's deepest nesting: batch map, series list, series map, column list."""
EVENT_DEPTH: Final = 12
"""How deep an event nests, from the batch (a shadow report: events, report, setpoints, device,
tag, setpoint; a command result's free-form ``result`` a few levels more)."""
EVENT_VALUES_PER_EVENT: Final = 200
"""Values per event on average across a batch (a shadow report may hold many setpoints)."""


class Malformed(Exception):
    """The body does not have the contract's shape at `path`."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class TooLarge(Exception):
    """A count at `path` passes its `limit`."""

    def __init__(self, message: str, *, limit: int, path: Path = ()) -> None:
        super().__init__(message)
        self.limit = limit
        self.path = path


class BatchLimits(Protocol):
    """The limits the reader enforces (`cloud.contract.Limits` has them)."""

    @property
    def max_readings(self) -> int: ...
    @property
    def max_series(self) -> int: ...
    @property
    def max_alarms(self) -> int: ...
    @property
    def max_name_length(self) -> int: ...
    @property
    def max_text_length(self) -> int: ...
    @property
    def max_dropped_lanes(self) -> int: ...
    @property
    def max_events(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Shape:
    """What `json_shape` measured: the deepest nesting and (an upper bound of) the values."""

    depth: int
    values: int


def json_shape(raw: bytes) -> Shape:
    """Nesting depth and value count of a JSON text, without building it.

    Strings are cut out first (escaped backslashes and quotes, then everything between quotes),
    so brackets and commas inside strings do not count. Malformed text gets some figure; the
    parser that runs next refuses it.
    """
    import numpy as np  # noqa: PLC0415 - the edge imports the contract and never decodes JSON

    bare = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(bare.split(b'"')[::2])
    codes = np.frombuffer(outside, dtype=np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    step = opens.astype(np.int32) - closes.astype(np.int32)
    depth = int(np.cumsum(step).max()) if step.size else 0
    values = int(np.count_nonzero(codes == ord(","))) + int(np.count_nonzero(opens)) + 1
    return Shape(depth=max(depth, 0), values=values)


def check_json_shape(
    raw: bytes, *, max_depth: int, max_values: int, path: Path = ("body",)
) -> None:
    """Refuse JSON nested deeper than `max_depth` (422) or holding over `max_values` (413)."""
    shape = json_shape(raw)
    if shape.depth > max_depth:
        raise Malformed(f"JSON nested {shape.depth} levels deep; at most {max_depth}", path=path)
    if shape.values > max_values:
        raise TooLarge(
            f"JSON holding about {shape.values} values; at most {max_values}", limit=max_values
        )


def batch_value_limit(limits: BatchLimits) -> int:
    """The most values a valid batch can hold (columns, series and alarm fields, lanes)."""
    events = EVENT_VALUES_PER_EVENT * limits.max_events
    return 3 * limits.max_readings + 8 * limits.max_series + 13 * limits.max_alarms + events + 64


# ----------------------------------------------------------------------------------- msgpack


class Inflating:
    """The decompressed bytes of a body as a file to read from, refused past `cap` bytes.

    Args:
        body: the body as posted.
        encoding: ``identity``, ``zstd`` or ``gzip`` (checked by the caller).
        cap: the most decompressed bytes allowed.
    """

    def __init__(self, body: bytes, encoding: str, cap: int) -> None:
        self._cap = cap
        self._read = 0
        self._gzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if encoding == "gzip" else None
        self._pending = body
        self._zstd = (
            zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
            if encoding == "zstd"
            else None
        )
        self._plain = io.BytesIO(body) if encoding == "identity" else None

    def read(self, n: int = -1) -> bytes:
        """Up to `n` decompressed bytes (b"" at the end)."""
        want = self._cap + 1 - self._read if n < 0 else min(n, self._cap + 1 - self._read)
        out = self._next(max(want, 1))
        self._read += len(out)
        if self._read > self._cap:
            raise TooLarge(
                f"decompressed body exceeds the limit of {self._cap} bytes", limit=self._cap
            )
        return out

    def _next(self, n: int) -> bytes:
        if self._plain is not None:
            return self._plain.read(n)
        if self._zstd is not None:
            try:
                return bytes(self._zstd.read(n))
            except zstandard.ZstdError as exc:
                raise Malformed(f"body is not valid zstd: {exc}", path=("body",)) from exc
        assert self._gzip is not None  # noqa: S101 - one of the three is set
        try:
            out = self._gzip.decompress(self._pending, n)
        except zlib.error as exc:
            raise Malformed(f"body is not valid gzip: {exc}", path=("body",)) from exc
        self._pending = self._gzip.unconsumed_tail
        if not out and not self._gzip.eof:
            raise Malformed("gzip body is truncated", path=("body",))
        return out


class _Budget:
    """Readings and column elements read so far, against the limits."""

    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self.readings = 0
        self.elements = 0

    def column(self, n: int, path: Path, *, timestamps: bool) -> None:
        self.elements += n
        if timestamps:
            self.readings += n
        if self.readings > self.limits.max_readings or self.elements > 3 * self.limits.max_readings:
            raise TooLarge(
                f"more than {self.limits.max_readings} readings in one batch",
                limit=self.limits.max_readings,
                path=path,
            )


def _scalar(u: msgpack.Unpacker, path: Path) -> Any:
    try:
        return u.unpack()
    except (ValueError, msgpack.UnpackException) as exc:
        raise Malformed(f"not valid msgpack here, or not a single value: {exc}", path=path) from exc


def _header(read: Callable[[], int], what: str, path: Path) -> int:
    try:
        return read()
    except (ValueError, msgpack.UnpackException) as exc:
        raise Malformed(f"not valid msgpack here, or not {what}", path=path) from exc


def _column(budget: _Budget, *, timestamps: bool = False) -> Reader:
    def read(u: msgpack.Unpacker, path: Path) -> list[Any]:
        n = _header(u.read_array_header, "a list", path)
        budget.column(n, path, timestamps=timestamps)
        try:
            items = list(itertools.islice(u, n))
        except (ValueError, msgpack.UnpackException) as exc:
            raise Malformed(f"a column holds only numbers or strings: {exc}", path=path) from exc
        if len(items) != n:
            raise Malformed("the body ends inside this list", path=path)
        return items

    return read


def _map(fields: dict[str, Reader], *, max_keys: int = 16) -> Reader:
    """A map with these known keys, each read by its reader; unknown keys are refused."""

    def read(u: msgpack.Unpacker, path: Path) -> dict[str, Any]:
        n = _header(u.read_map_header, "an object", path)
        if n > max_keys:
            raise Malformed(f"an object of {n} fields; at most {max_keys}", path=path)
        out: dict[str, Any] = {}
        for _ in range(n):
            key = _scalar(u, path)
            if not isinstance(key, str) or key not in fields:
                raise Malformed(f"unknown field {key!r}", path=(*path, str(key)[:50]))
            if key in out:
                raise Malformed(f"field {key!r} appears twice", path=(*path, key))
            out[key] = fields[key](u, (*path, key))
        return out

    return read


def _document(max_depth: int, budget: list[int]) -> Reader:
    """Any value (an event's free-form parts) nested at most `max_depth` deep, holding at most
    `budget[0]` values in all. The next value's kind is found by trying the headers, which
    consume nothing when they do not match."""

    def read(u: msgpack.Unpacker, path: Path) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise TooLarge("too many values in the events", limit=0, path=path)
        for header, kind in ((u.read_map_header, dict), (u.read_array_header, list)):
            try:
                n = header()
            except ValueError:
                continue
            except msgpack.UnpackException as exc:
                raise Malformed("the body ends inside this value", path=path) from exc
            if len(path) >= max_depth:
                raise Malformed(f"nested deeper than {max_depth} levels", path=path)
            if n > budget[0]:
                raise TooLarge("too many values in the events", limit=n, path=path)
            if kind is list:
                return [read(u, (*path, i)) for i in range(n)]
            out: dict[Any, Any] = {}
            for _ in range(n):
                key = _scalar(u, path)
                out[key] = read(u, (*path, str(key)[:50]))
            return out
        return _scalar(u, path)

    return read


def _scalar_map(max_keys: int) -> Reader:
    def read(u: msgpack.Unpacker, path: Path) -> dict[Any, Any]:
        n = _header(u.read_map_header, "an object", path)
        if n > max_keys:
            raise Malformed(f"an object of {n} fields; at most {max_keys}", path=path)
        out: dict[Any, Any] = {}
        for _ in range(n):
            key = _scalar(u, path)
            out[key] = _scalar(u, (*path, str(key)[:50]))
        return out

    return read


def _list(item: Reader, limit: int, what: str) -> Reader:
    def read(u: msgpack.Unpacker, path: Path) -> list[Any]:
        n = _header(u.read_array_header, "a list", path)
        if n > limit:
            raise TooLarge(f"{n} {what} exceed the limit of {limit}", limit=limit, path=path)
        return [item(u, (*path, i)) for i in range(n)]

    return read


def _batch_reader(limits: BatchLimits) -> Reader:
    budget = _Budget(limits)
    series = _map(
        {"device": _scalar, "tag": _scalar, "unit": _scalar, "simulated": _scalar,
         "ts": _column(budget, timestamps=True), "values": _column(budget),
         "qualities": _column(budget)}
    )  # fmt: skip
    alarm_fields = ("device", "tag", "name", "kind", "state", "ts", "severity", "message", "value",
                    "transition", "acknowledged_by", "comment")  # fmt: skip
    alarm = _map(dict.fromkeys(alarm_fields, _scalar))
    event = _document(EVENT_DEPTH, [EVENT_VALUES_PER_EVENT * max(limits.max_events, 1)])
    lanes = _scalar_map(limits.max_dropped_lanes)
    return _map(
        {"version": _scalar, "gateway_id": _scalar, "seq": _scalar, "created_at": _scalar,
         "series": _list(series, limits.max_series, "series"),
         "alarms": _list(alarm, limits.max_alarms, "alarms"),
         "dropped": lanes,
         "dropped_totals": _map({"life": _scalar, "lanes": lanes}),
         "events": _list(event, limits.max_events, "events")}
    )  # fmt: skip


def read_msgpack_batch(source: Inflating, limits: BatchLimits) -> dict[str, Any]:
    """The plain form of a msgpack batch, read within the limits (see the module docstring)."""
    longest = 4 * max(limits.max_text_length, limits.max_name_length)  # UTF-8: <= 4 bytes/char
    unpacker = msgpack.Unpacker(
        source, read_size=64 * 1024, max_buffer_size=longest + 64 * 1024, raw=False,
        strict_map_key=False, max_str_len=longest, max_bin_len=0, max_array_len=0,
        max_map_len=0, max_ext_len=0,
    )  # fmt: skip
    data: dict[str, Any] = _batch_reader(limits)(unpacker, ())
    if unpacker.read_bytes(1):
        raise Malformed("data after the end of the batch", path=("body",))
    return data
