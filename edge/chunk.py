"""The edge's side of the chunk codec (`cloud.contract.chunk`, shared with the cloud): readings
in, readings out. The pipeline encodes its flushes with `encode`; `tagway buffer export` and the
tests read chunks back with `decode_readings`."""

from __future__ import annotations

from collections.abc import Sequence

from cloud.contract.chunk import (
    ChunkRow,
    decode,
    decode_plain,
    decode_records,
    decode_rows,
    encode,
    encode_records,
    timestamps,
)
from cloud.contract.errors import ChunkError
from protocols.reading import Quality, Reading

__all__ = [
    "ChunkError", "ChunkRow", "decode", "decode_plain", "decode_readings", "decode_records",
    "decode_rows", "encode", "encode_records", "timestamps",
]  # fmt: skip


def decode_readings(chunk: bytes) -> list[Reading]:
    """A telemetry chunk's readings, series by series; raise `ChunkError` if it is damaged."""
    out: list[Reading] = []
    for s in decode(chunk):
        values: Sequence[float | str | int] = s.values
        reasons = s.reasons or [None] * len(s.ts)
        out.extend(
            Reading(s.device, s.tag, ts, value, Quality.from_code(q), s.unit, s.simulated, why)
            for ts, value, q, why in zip(s.ts, values, s.qualities, reasons, strict=True)
        )
    return out
