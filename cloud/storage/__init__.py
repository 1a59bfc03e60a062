"""Storage: the repository and its two backends (SQLite embedded, PostgreSQL production)."""

from __future__ import annotations

from cloud.settings import CloudSettings
from cloud.storage.base import Database


async def open_database(settings: CloudSettings) -> Database:
    """Open the backend the settings name, applying migrations when configured."""
    if settings.backend == "sqlite":
        from cloud.storage.sqlite import SqliteDatabase  # noqa: PLC0415 - load only the backend in use

        path = settings.database_url.removeprefix("sqlite:///").removeprefix("sqlite://")
        return SqliteDatabase.open(
            path,
            migrate=settings.migrate_on_start,
            classes=settings.db_classes,
            ingest_writers=settings.sqlite_ingest_writers,
        )
    from cloud.storage.postgres import PostgresDatabase  # noqa: PLC0415 - load only the backend in use

    return await PostgresDatabase.open(settings)
