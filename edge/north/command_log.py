"""The Sparkplug DCMDs the edge node has acted on, so a command delivered twice runs once.

Recorded before the write is attempted (as the cloud's commands are): a digest of the device
and the command's bytes, the last 512 of them, in a small file replaced atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class CommandLog:
    """Digests of the last DCMDs acted on, kept in a small file (replaced atomically)."""

    _KEEP = 512

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            self._keys = [str(k) for k in loaded][-self._KEEP :]
        except (OSError, ValueError, TypeError):
            self._keys = []

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys = [*self._keys[-(self._KEEP - 1) :], key]
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(self._keys, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self._path)
