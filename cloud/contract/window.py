"""The time window: readings from a clock far off are refused one by one, never a whole batch.

A device whose clock reset to 2000, or that sends seconds where milliseconds are meant, stamps
its readings decades away. The cloud stores the rest of the batch and refuses only those
readings (and alarm records), listing them in the ingest answer (additive fields of
`IngestResult`, so gateways that do not read them keep working)::

    {"duplicate": false, "seq": 42, "readings": 10, "stored": 8, "received_at": ...,
     "refused": 2, "refused_alarms": 0,
     "refused_series": [{"device": "plc7", "tag": "temp", "reason": "too far in the past",
                         "count": 2, "first_ts": 946684800000000}]}

`refused_series` holds one entry per (series, reason), at most `MAX_REFUSED_SERIES` of them
(`refused` always counts them all). The gateway keeps them in its outbox (`refused` table) and
counts them per reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING, Any, Final

from cloud.contract.batch import Batch, SeriesColumns

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

TOO_OLD: Final = "too far in the past"
TOO_NEW: Final = "too far in the future"
REASONS: Final = (TOO_OLD, TOO_NEW)
MAX_REFUSED_SERIES: Final = 100
"""Entries of `refused_series` in one answer; past it, only the total says how many."""


@dataclass(frozen=True, slots=True)
class RefusedSeries:
    """Readings of one series refused for one reason: how many, and the first one's time."""

    device: str
    tag: str
    reason: str
    count: int
    first_ts: int


@dataclass(frozen=True, slots=True)
class Refusals:
    """What the time window took out of one batch."""

    series: tuple[RefusedSeries, ...] = ()
    alarms: int = 0

    @property
    def readings(self) -> int:
        """Readings refused, across all series."""
        return sum(s.count for s in self.series)

    def answer(self) -> dict[str, Any]:
        """The additive fields of the ingest answer."""
        listed = [dataclasses.asdict(s) for s in self.series[:MAX_REFUSED_SERIES]]
        return {"refused": self.readings, "refused_alarms": self.alarms, "refused_series": listed}


def refuse_out_of_window(
    batch: Batch, *, now_us: int, max_future_us: int, max_age_us: int
) -> tuple[Batch, Refusals]:
    """The batch without its readings and alarms from the far future or the distant past, and
    what was taken out. Late and out-of-order data inside the window is kept."""
    import numpy as np  # noqa: PLC0415 - the edge imports this module, and never decodes

    newest, oldest = now_us + max_future_us, now_us - max_age_us
    kept: list[SeriesColumns] = []
    refused: list[RefusedSeries] = []
    for s in batch.series:
        ts = np.asarray(s.ts, dtype=np.int64)
        old, new = ts < oldest, ts > newest
        out = old | new
        if not out.any():
            kept.append(s)
            continue
        for mask, reason in ((old, TOO_OLD), (new, TOO_NEW)):
            if mask.any():
                first = int(ts[mask][0])
                refused.append(RefusedSeries(s.device, s.tag, reason, int(mask.sum()), first))
        if not out.all():
            kept.append(_only(s, ts, ~out))
    alarms = [a for a in batch.alarms if oldest <= a.ts <= newest]
    if not refused and len(alarms) == len(batch.alarms):
        return batch, Refusals()
    inside = dataclasses.replace(batch, series=tuple(kept), alarms=tuple(alarms))
    return inside, Refusals(tuple(refused), len(batch.alarms) - len(alarms))


def _only(
    s: SeriesColumns, ts: npt.NDArray[np.int64], keep: npt.NDArray[np.bool_]
) -> SeriesColumns:
    import numpy as np  # noqa: PLC0415 - see above

    values: Any = (
        tuple(compress(s.values, keep.tolist())) if s.is_text else np.asarray(s.values)[keep]
    )
    qualities = None if s.qualities is None else np.asarray(s.qualities, dtype=np.int8)[keep]
    return dataclasses.replace(s, ts=ts[keep], values=values, qualities=qualities)


def refusals_from_answer(answer: Any) -> list[RefusedSeries]:
    """The refused series an ingest answer lists; entries that are not well formed are skipped
    (the answer crossed a network, and an old cloud sends none)."""
    items = answer.get("refused_series") if isinstance(answer, dict) else None
    if not isinstance(items, list):
        return []
    out: list[RefusedSeries] = []
    for item in items[:MAX_REFUSED_SERIES]:
        entry = _refused(item)
        if entry is not None:
            out.append(entry)
    return out


def _refused(item: Any) -> RefusedSeries | None:
    if not isinstance(item, dict):
        return None
    device, tag, reason = item.get("device"), item.get("tag"), item.get("reason")
    count, first = item.get("count"), item.get("first_ts")
    if not (isinstance(device, str) and isinstance(tag, str) and isinstance(reason, str)):
        return None
    if type(count) is not int or type(first) is not int or count <= 0:
        return None
    return RefusedSeries(device, tag, reason, count, first)


def refused_counts(refused: Sequence[RefusedSeries]) -> dict[str, int]:
    """Readings per reason."""
    counts: dict[str, int] = {}
    for s in refused:
        counts[s.reason] = counts.get(s.reason, 0) + s.count
    return counts
