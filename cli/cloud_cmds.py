"""`tagway cloud ...`: run the cloud service and administer it.

`serve` and `migrate` run on the cloud host. `tenant create` and `api-key create` act on the
database directly (the platform admin on the box; over the network the same is
``POST /v1/tenants`` and ``POST /v1/tenants/{id}/api-keys`` with the platform key).
`claim-token create` is a tenant admin's command and goes over HTTP with an API key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import httpx
import typer

from cli import fleet_cmds
from cli.errors import fail

if TYPE_CHECKING:
    from cloud.settings import CloudSettings
    from cloud.storage.repository import Repository

_T = TypeVar("_T")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}

cloud_app = typer.Typer(
    rich_markup_mode=None,
    help="Run and administer the tagway cloud service.\n\n"
    "Example: tagway cloud serve --database sqlite:///cloud.db",
    no_args_is_help=True,
)
tenant_app = typer.Typer(
    rich_markup_mode=None,
    help="Tenants (platform admin, on the database).\n\nExample: tagway cloud tenant create acme",
    no_args_is_help=True,
)
api_key_app = typer.Typer(
    rich_markup_mode=None,
    help="API keys (platform admin, on the database).\n\n"
    "Example: tagway cloud api-key create --tenant 1 --role operator",
    no_args_is_help=True,
)
claim_token_app = typer.Typer(
    rich_markup_mode=None,
    help="Claim tokens for enrolling gateways (tenant admin, over HTTP).\n\n"
    "Example: tagway cloud claim-token create --cloud URL --api-key KEY --expires 24h --uses 10",
    no_args_is_help=True,
)
cloud_app.add_typer(tenant_app, name="tenant")
cloud_app.add_typer(api_key_app, name="api-key")
cloud_app.add_typer(claim_token_app, name="claim-token")
cloud_app.add_typer(fleet_cmds.config_app, name="config")
cloud_app.add_typer(fleet_cmds.rollout_app, name="rollout")

DatabaseOpt = Annotated[
    str,
    typer.Option(
        "--database",
        envvar="TAGWAY_CLOUD_DATABASE",
        help="sqlite:///FILE or postgresql://... (default $TAGWAY_CLOUD_DATABASE).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DEFAULT_DATABASE = "sqlite:///tagway-cloud.db"
CLOUD_ENV = Path("/etc/tagway/cloud.env")
"""The packaged service's settings: its database is the one admin commands act on there."""

ExistingDatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database",
        envvar="TAGWAY_CLOUD_DATABASE",
        help="The service's database: sqlite:///FILE or postgresql://... (default:"
        " $TAGWAY_CLOUD_DATABASE, else ./tagway-cloud.db if it exists, else the one in"
        " /etc/tagway/cloud.env).",
    ),
]


def existing_database(database: str | None) -> str:
    """The database an admin command acts on: the one given, else the one `tagway cloud serve`
    uses here (./tagway-cloud.db, or the packaged service's). Never a new, empty SQLite file
    that no server reads: that would hand out keys nobody can use."""
    if database is None:
        if Path("tagway-cloud.db").is_file():
            database = DEFAULT_DATABASE
        elif CLOUD_ENV.is_file():
            database = _env_database(CLOUD_ENV)
        if database is None:
            fail("which cloud database? Give --database (sqlite:///FILE or postgresql://...) or"
                 " set TAGWAY_CLOUD_DATABASE, as for `tagway cloud serve`; there is no"
                 f" ./tagway-cloud.db here and no {CLOUD_ENV}")  # fmt: skip
    if database.startswith("sqlite:///"):
        file = Path(database.removeprefix("sqlite:///"))
        if not file.is_file():
            fail(f"no cloud database at {file}: give the --database `tagway cloud serve` uses"
                 " (serve creates it on first start)")  # fmt: skip
    return database


def _env_database(env: Path) -> str | None:
    for line in env.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "TAGWAY_CLOUD_DATABASE" and value:
            return value.strip().strip("'\"")
    return None


def _settings(**values: Any) -> CloudSettings:
    from pydantic import ValidationError  # noqa: PLC0415

    from cloud.settings import CloudSettings  # noqa: PLC0415

    try:
        return CloudSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")


def _on_database(database: str, work: Callable[[Repository], Awaitable[_T]]) -> _T:
    from cloud.errors import CloudError  # noqa: PLC0415
    from cloud.storage import open_database  # noqa: PLC0415
    from cloud.storage.repository import Repository  # noqa: PLC0415

    # The pool logs every failed connection attempt; the one line `fail` prints says it all.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)

    async def run() -> _T:
        db = await open_database(_settings(database_url=database))
        try:
            return await work(Repository(db))
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except CloudError as exc:
        fail(exc.message)


@cloud_app.command("serve")
def serve(
    database: DatabaseOpt = DEFAULT_DATABASE,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    public_url: Annotated[
        str | None,
        typer.Option(help="The URL gateways use (token audience); default http://HOST:PORT."),
    ] = None,
    master_key: Annotated[
        Path | None,
        typer.Option(help="Master key file sealing the tenant CA keys (SQLite: made if missing)."),
    ] = None,
    platform_admin_key: Annotated[
        str | None,
        typer.Option(envvar="TAGWAY_PLATFORM_ADMIN_KEY", help="The platform admin's key."),
    ] = None,
    migrate_database: Annotated[
        str | None, typer.Option(help="The schema owner's DSN (PostgreSQL) to migrate at start.")
    ] = None,
    telemetry_database: Annotated[
        str | None,
        typer.Option(
            envvar="TAGWAY_CLOUD_TELEMETRY_DATABASE",
            help="Citus: a worker of the same database (as the app role) the readings are"
            " written through; the coordinator (--database) keeps the metadata.",
        ),
    ] = None,
    static_gateway_tokens: Annotated[
        bool, typer.Option(help="Accept the interim per-gateway bearer tokens.")
    ] = True,
    create_master_key: Annotated[
        bool | None,
        typer.Option(
            help="Create a missing master key (default: only for SQLite).", show_default=False
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the cloud service (API, ingestion, provisioning) until Ctrl-C.

    Example: tagway cloud serve --database sqlite:///cloud.db --public-url https://cloud.example.com
    """
    import uvicorn  # noqa: PLC0415

    from cloud.api.app import create_app  # noqa: PLC0415
    from cloud.enrollment import load_master_key  # noqa: PLC0415
    from cloud.errors import CloudError  # noqa: PLC0415
    from edge.config import http_url  # noqa: PLC0415

    settings = _settings(
        database_url=database,
        migrate_database_url=migrate_database,
        telemetry_database_url=telemetry_database,
        public_url=public_url or http_url(host, port),
        master_key_file=master_key,
        platform_admin_key=platform_admin_key,
        allow_static_gateway_tokens=static_gateway_tokens,
        create_master_key=create_master_key,
    )
    try:
        load_master_key(settings)  # fail here, in one line, not in the server's start-up
    except CloudError as exc:
        fail(exc.message)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


@cloud_app.command("migrate")
def migrate(
    database: DatabaseOpt = DEFAULT_DATABASE,
    distribute: Annotated[
        bool,
        typer.Option(
            "--distribute",
            help="Distribute telemetry by series over a Citus cluster (PostgreSQL with Citus;"
            " also done when the database has the citus extension).",
        ),
    ] = False,
) -> None:
    """Apply pending schema migrations (PostgreSQL: connect as the schema owner).

    Example: tagway cloud migrate --database postgresql://owner@coordinator/tagway --distribute
    """
    from cloud.errors import CloudError  # noqa: PLC0415
    from cloud.storage import open_database  # noqa: PLC0415
    from cloud.storage.pg_migrate import apply_migrations  # noqa: PLC0415

    settings = _settings(database_url=database)
    if distribute and settings.backend != "postgresql":
        fail("--distribute needs a PostgreSQL database with Citus")

    async def run() -> tuple[int, str]:
        if settings.backend == "postgresql":
            done = await apply_migrations(database, settings, distribute=distribute)
            return done.version, done.layout.reason
        db = await open_database(settings)
        await db.close()
        return db.info.schema_version, ""

    try:
        version, storage = asyncio.run(run())
    except CloudError as exc:
        fail(exc.message)
    typer.echo(f"{database.split('@')[-1]}: schema at version {version}")
    if storage:
        typer.echo(f"storage: {storage}")


@cloud_app.command("retention")
def retention(
    database: DatabaseOpt = DEFAULT_DATABASE,
    days: Annotated[
        int | None,
        typer.Option(min=1, help="Keep this many days of telemetry (default: the service's 365)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what would be removed.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove telemetry older than the retention, once (the service also does it hourly).

    PostgreSQL drops whole daily partitions (never today's); SQLite deletes the old readings.

    Example: tagway cloud retention --database postgresql://tagway_app@db/tagway --days 90 --dry-run
    """
    from cloud.retention import describe, now_us  # noqa: PLC0415
    from cloud.storage.records import RetentionResult  # noqa: PLC0415

    settings = _settings(database_url=database, retention_days=days)

    async def work(repo: Repository) -> RetentionResult:
        return await repo.db.drop_telemetry(
            keep_days=settings.retention_days, now_us=now_us(), dry_run=dry_run
        )

    result = _on_database(database, work)
    typer.echo(result.model_dump_json() if json_out else describe(result))


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="The tenant's name.")],
    database: ExistingDatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a tenant and its first admin API key (shown once).

    Example: tagway cloud tenant create acme --database sqlite:///cloud.db
    """
    from cloud.auth import API_KEY_PREFIX, Role, new_secret  # noqa: PLC0415

    database = existing_database(database)
    secret = new_secret(API_KEY_PREFIX)

    async def work(repo: Repository) -> int:
        now = _now_us()
        tenant = await repo.create_tenant(name=name, now_us=now, quota=None, rate_limit=None)
        await repo.create_api_key(tenant.id, name="admin", role=Role.ADMIN, prefix=secret.prefix,
                                  digest=secret.digest, now_us=now)  # fmt: skip
        return tenant.id

    tenant_id = _on_database(database, work)
    if json_out:
        typer.echo(
            json.dumps({"tenant_id": tenant_id, "name": name, "admin_api_key": secret.token})
        )
        return
    typer.echo(f"tenant {tenant_id} ({name}) created")
    typer.echo(f"admin API key (shown once, store it now): {secret.token}")


@api_key_app.command("create")
def api_key_create(
    tenant: Annotated[int, typer.Option("--tenant", help="The tenant id.")],
    role: Annotated[str, typer.Option("--role", help="admin, operator or viewer.")],
    name: Annotated[str, typer.Option("--name", help="What the key is for.")] = "cli",
    database: ExistingDatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an API key in a tenant (shown once).

    Example: tagway cloud api-key create --tenant 1 --role viewer --name grafana
    """
    from cloud.auth import API_KEY_PREFIX, Role, new_secret  # noqa: PLC0415

    database = existing_database(database)
    if role not in {r.value for r in Role}:
        fail(f"--role must be admin, operator or viewer, not {role!r}")
    secret = new_secret(API_KEY_PREFIX)

    async def work(repo: Repository) -> int:
        key = await repo.create_api_key(tenant, name=name, role=Role(role), prefix=secret.prefix,
                                        digest=secret.digest, now_us=_now_us())  # fmt: skip
        return key.id

    key_id = _on_database(database, work)
    if json_out:
        typer.echo(json.dumps({"id": key_id, "tenant_id": tenant, "role": role,
                               "api_key": secret.token}))  # fmt: skip
        return
    typer.echo(f"API key {key_id} ({role}) in tenant {tenant}; shown once: {secret.token}")


@claim_token_app.command("create")
def claim_token_create(
    cloud: Annotated[str, typer.Option("--cloud", help="The cloud's URL.")],
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="TAGWAY_API_KEY", help="A tenant admin's API key.")
    ],
    expires: Annotated[str, typer.Option(help="Lifetime: 30m, 24h, 7d or seconds.")] = "24h",
    uses: Annotated[int, typer.Option(help="How many gateways it may enroll.")] = 1,
    site: Annotated[str | None, typer.Option(help="Site of the gateways it enrolls.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="A label KEY=VALUE (repeatable).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a claim token for enrolling gateways (shown once).

    Example: tagway cloud claim-token create --cloud https://cloud.example.com --api-key KEY
    --expires 24h --uses 10 --site plant-a
    """
    labels = dict(_label(text) for text in label or [])
    body = {"expires_in_s": parse_duration(expires), "max_uses": uses, "site": site,
            "labels": labels}  # fmt: skip
    url = cloud.rstrip("/") + "/v1/claim-tokens"
    try:
        response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {api_key}"},
                              timeout=30)  # fmt: skip
    except httpx.HTTPError as exc:
        fail(f"cannot reach the cloud at {url}: {exc or type(exc).__name__}")
    if response.status_code != 201:
        fail(f"the cloud refused: HTTP {response.status_code}: {_message(response)}")
    answer = response.json()
    if json_out:
        typer.echo(json.dumps(answer))
        return
    record = answer["claim_token"]
    typer.echo(f"claim token {record['id']} ({record['max_uses']} uses, expires in {expires}); "
               "shown once:")  # fmt: skip
    typer.echo(answer["token"])
    typer.echo(f"on the gateway: tagway provision --cloud {cloud} --claim-token {answer['token']}")


def duration_seconds(text: str) -> int | None:
    """Seconds from ``90``, ``30m``, ``24h`` or ``7d``; None when it is none of these."""
    match = _DURATION.match(text)
    return None if match is None else int(match.group(1)) * _SECONDS[match.group(2)]


def parse_duration(text: str, option: str = "--expires") -> int:
    """Seconds from ``90``, ``30m``, ``24h`` or ``7d``; a clear error otherwise."""
    seconds = duration_seconds(text)
    if seconds is None:
        fail(f"{option} {text!r}: write e.g. 30m, 24h, 7d or a number of seconds")
    return seconds


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        fail(f"--label {text!r}: write KEY=VALUE")
    return key, value


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _now_us() -> int:
    import time  # noqa: PLC0415

    return time.time_ns() // 1000
