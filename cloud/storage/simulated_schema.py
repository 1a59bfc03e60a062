"""The simulated-data migration (both backends): ``series.simulated``.

A series is simulated when the newest batch that carried it said so (the gateway marks the
readings of its simulated devices); a device is simulated when any of its series is. The cloud
shows both in every answer that carries them, and such answers send ``X-Data-Source:
simulation``. Series stored before this migration are not simulated until their gateway sends
them again.
"""

from __future__ import annotations

from typing import Any, Final

VERSION: Final = 8
NAME: Final = "simulated series"

SQLITE_MIGRATION: Final = "ALTER TABLE series ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0;"


def pg_migration(**_: Any) -> str:
    """PostgreSQL: the column (series is a metadata table, kept on a Citus coordinator)."""
    return "ALTER TABLE series ADD COLUMN simulated boolean NOT NULL DEFAULT false"
