"""``python -m cloud``: apply migrations, or serve the API with uvicorn.

    python -m cloud migrate --database-url postgresql://owner@host/db [--app-role tagway_app]
                            [--distribute]
    python -m cloud migrate --database-url sqlite:///tagway-cloud.db
    TAGWAY_CLOUD_SETTINGS='{"database_url": ...}' python -m cloud serve --port 8080

`migrate` runs as the schema owner (for PostgreSQL it also creates the app role the service
connects as); `serve` reads the settings as JSON from ``TAGWAY_CLOUD_SETTINGS``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from cloud.errors import CloudError
from cloud.settings import CloudSettings


async def migrate(database_url: str, app_role: str, *, distribute: bool = False) -> str:
    """Apply pending migrations; lines saying what the schema is now."""
    settings = CloudSettings(database_url=database_url, app_role=app_role)
    if settings.backend == "sqlite":
        from cloud.storage import open_database  # noqa: PLC0415 - only this command needs it

        db = await open_database(settings)
        version = db.info.schema_version
        await db.close()
        return f"sqlite schema at version {version}"
    from cloud.storage.pg_migrate import apply_migrations  # noqa: PLC0415 - postgres only

    done = await apply_migrations(database_url, settings, distribute=distribute)
    return (
        f"postgresql schema at version {done.version}; the service connects as role {app_role}\n"
        f"storage: {done.layout.reason}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m cloud", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    m = commands.add_parser("migrate", help="apply pending schema migrations (as the owner)")
    m.add_argument("--database-url", required=True)
    m.add_argument("--app-role", default="tagway_app")
    m.add_argument("--distribute", action="store_true", help="distribute telemetry over Citus")
    s = commands.add_parser("serve", help="serve the API (settings from TAGWAY_CLOUD_SETTINGS)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if args.command == "migrate":
        try:
            answer = migrate(args.database_url, args.app_role, distribute=args.distribute)
            sys.stdout.write(asyncio.run(answer) + "\n")
        except CloudError as exc:
            sys.stderr.write(f"error: {exc.message}\n")
            return 1
        return 0
    import uvicorn  # noqa: PLC0415 - only serving needs it

    uvicorn.run("cloud.api.app:app_from_env", factory=True, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
