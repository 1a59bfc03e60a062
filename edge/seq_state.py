"""The uplink's own durable state: the next batch `seq` and the drop counts already reported.

`seq` must never repeat for a gateway, even if this file is lost: the cloud would take a new batch
for a replay and store nothing. So the next seq is at least the wall clock in microseconds, and
at least one more than the last one used. The file is replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class SeqState:
    """Next sequence number and cumulative drops already sent to the cloud, per lane."""

    path: Path
    last_seq: int = 0
    reported_dropped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> SeqState:
        """Load `path`; a missing or unreadable file starts fresh (the clock keeps seq safe)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                path, int(data["last_seq"]), {str(k): int(v) for k, v in data["dropped"].items()}
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls(path)

    def next_seq(self) -> int:
        """Reserve and persist the next seq before it is used."""
        self.last_seq = max(self.last_seq + 1, time.time_ns() // 1_000)
        self.save()
        return self.last_seq

    def save(self) -> None:
        """Write atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps({"last_seq": self.last_seq, "dropped": self.reported_dropped})
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
