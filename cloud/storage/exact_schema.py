"""The exact-integer migration (both backends): ``telemetry.value_int``.

A reading whose value is an integer past float64's exactness (beyond ±2**53: int64 and uint64
registers, large counters) keeps `value_num` (its float64 neighbour, so aggregates work as
before) and gets the exact integer in `value_int`; latest and raw answers give that integer. Other
readings leave it NULL. PostgreSQL holds it as numeric(20, 0), which covers int64 and uint64;
SQLite's column has no declared type: an int64 is an INTEGER, a uint64 past int64 its decimal
text (SQLite has no wider integer).
"""

from __future__ import annotations

from typing import Any, Final

VERSION: Final = 10
NAME: Final = "exact integers: telemetry.value_int"

SQLITE_MIGRATION: Final = "ALTER TABLE telemetry ADD COLUMN value_int;"


def pg_migration(**_: Any) -> str:
    """PostgreSQL (native partitions, TimescaleDB hypertable, Citus distributed table alike): a
    nullable column without a default, which every layout adds without rewriting a row."""
    return "ALTER TABLE telemetry ADD COLUMN value_int numeric(20, 0)"


def stored(value: int) -> int | str:
    """`value` as SQLite can bind it: past int64, its decimal text."""
    return value if -(2**63) <= value < 2**63 else str(value)


def exact(value_int: Any) -> int | None:
    """The stored exact integer (int, Decimal or text) back as an int; None when absent."""
    return None if value_int is None else int(value_int)
