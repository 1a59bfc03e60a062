"""Fixtures of the CLI tests: the cloud app on each backend (for `tagway provision` and
`tagway cloud ...`)."""

from __future__ import annotations

from tests.cloud.conftest import (  # noqa: F401 - fixtures shared with the cloud tests
    backend,
    make_cloud,
    make_live,
    migrated_pg,
    owner_dsn,
    pg_engine,
    settings_for,
)
