"""`tagway cloud config ...` and `tagway cloud rollout ...`: remote configuration from the
installer's or the engineer's desk, over HTTP with an API key.

`push` validates the file with the agent's own validator first (what `tagway config validate`
runs), stores it as a new version and starts a rollout to one gateway or to a label; `history`,
`diff` and `rollout status` read what the cloud keeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cli.errors import fail

config_app = typer.Typer(
    rich_markup_mode=None,
    help="Config versions and their rollouts (over HTTP with an API key).\n\n"
    "Example: tagway cloud config push config.yaml --label site=plant-a --cloud URL --api-key KEY",
    no_args_is_help=True,
)
rollout_app = typer.Typer(
    rich_markup_mode=None,
    help="Rollouts of config versions.\n\n"
    "Example: tagway cloud rollout status 12 --cloud URL --api-key KEY",
    no_args_is_help=True,
)

CloudOpt = Annotated[
    str, typer.Option("--cloud", envvar="TAGWAY_CLOUD_URL", help="The cloud's URL.")
]
KeyOpt = Annotated[
    str, typer.Option("--api-key", envvar="TAGWAY_API_KEY", help="An API key of the tenant.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class Api:
    """The cloud's API as one user sees it; every refusal becomes one clear line."""

    def __init__(self, cloud: str, api_key: str) -> None:
        self.base = cloud.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def call(self, method: str, path: str, *, body: Any = None, **params: Any) -> Any:
        """The answer's JSON; `fail` on a refusal or an unreachable cloud."""
        url = self.base + path
        try:
            response = httpx.request(method, url, json=body, params=params or None,
                                     headers=self.headers, timeout=60)  # fmt: skip
        except httpx.HTTPError as exc:
            fail(f"cannot reach the cloud at {url}: {exc or type(exc).__name__}")
        if response.status_code >= 400:
            fail(f"the cloud refused {method} {path}: HTTP {response.status_code}: "
                 f"{_message(response)}")  # fmt: skip
        return response.json() if response.content else None


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
    where = error.get("details", {}).get("path")
    return f"{error['code']}: {error['message']}" + (f" (at {where})" if where else "")


def check_locally(file: Path) -> str:
    """The file's text, if the agent's validator accepts it; every problem printed otherwise."""
    from edge.config import load_config  # noqa: PLC0415 - keep `--help` fast

    load_config(file)  # ConfigError: printed one line per problem by the CLI's error report
    return file.read_text(encoding="utf-8")


@config_app.command("push")
def push(
    file: Annotated[Path, typer.Argument(help="The config file (YAML or JSON).")],
    cloud: CloudOpt,
    api_key: KeyOpt,
    gateway: Annotated[int | None, typer.Option(help="Send it to this gateway id.")] = None,
    label: Annotated[
        str | None, typer.Option(help="Send it to every gateway with KEY=VALUE.")
    ] = None,
    wave_size: Annotated[int | None, typer.Option(help="Gateways per wave.")] = None,
    wave_percent: Annotated[int | None, typer.Option(help="Percent of them per wave.")] = None,
    wave_timeout: Annotated[
        int | None,
        typer.Option(help="Seconds each gateway of a wave has (default: probation + 120)."),
    ] = None,
    comment: Annotated[str | None, typer.Option(help="Why (kept with the version).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Validate a config, store it as a new version and roll it out.

    The file is checked with the agent's own validator first: a file with problems is never
    sent. Exactly one of --gateway and --label. Example: tagway cloud config push config.yaml
    --label site=plant-a --wave-size 1 --cloud https://cloud.example.com --api-key KEY
    """
    if (gateway is None) == (label is None):
        fail("give exactly one target: --gateway ID or --label KEY=VALUE")
    text = check_locally(file)
    api = Api(cloud, api_key)
    version = api.call("POST", "/v1/configs", body={"document": text, "comment": comment})
    target: dict[str, Any] = {"gateway_id": gateway} if gateway is not None else {"label": label}
    options = {"wave_size": wave_size, "wave_percent": wave_percent,
               "wave_timeout_s": wave_timeout}  # fmt: skip
    body = {"version": version["version"], **target,
            **{k: v for k, v in options.items() if v is not None}}  # fmt: skip
    rollout = api.call("POST", "/v1/rollouts", body=body)
    if json_out:
        typer.echo(json.dumps({"version": version, "rollout": rollout}))
        return
    typer.echo(f"{file}: valid; stored as version {version['version']} "
               f"({version['digest'][:12]})")  # fmt: skip
    typer.echo(f"rollout {rollout['id']} to {rollout['target']}: {rollout['state']}, "
               f"{len(rollout['gateways'])} gateways in {rollout['waves']} waves")  # fmt: skip
    typer.echo(f"follow it: tagway cloud rollout status {rollout['id']} --cloud {cloud}")


@config_app.command("history")
def history(
    cloud: CloudOpt,
    api_key: KeyOpt,
    gateway: Annotated[int | None, typer.Option(help="One gateway's history.")] = None,
    limit: Annotated[int, typer.Option(help="How many entries.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """Who changed what and when: a gateway's assignments and outcomes, or all versions.

    Example: tagway cloud config history --gateway 17 --cloud URL --api-key KEY
    """
    api = Api(cloud, api_key)
    if gateway is None:
        rows = api.call("GET", "/v1/configs", limit=limit)
        if json_out:
            typer.echo(json.dumps(rows))
            return
        typer.echo(f"{'VERSION':>7}  {'WHEN (UTC)':<19}  {'BY':<16}  {'SOURCE':<7}  COMMENT")
        for v in rows:
            typer.echo(f"{v['version']:>7}  {_when(v['created_at'])}  {v['created_by']:<16}  "
                       f"{v['source']:<7}  {v['comment'] or ''}")  # fmt: skip
        return
    rows = api.call("GET", f"/v1/gateways/{gateway}/config/history", limit=limit)
    if json_out:
        typer.echo(json.dumps(rows))
        return
    typer.echo(f"{'WHEN (UTC)':<19}  {'WHAT':<12}  {'VERSION':>7}  {'BY':<16}  DETAIL")
    for e in rows:
        detail = e["detail"]
        words = detail.get("reason") or detail.get("via") or ""
        problems = detail.get("problems") or []
        words += "".join(f"; line {p.get('line', '?')}: {p.get('path', '')}: {p['message']}"
                         for p in problems)  # fmt: skip
        version = "-" if e["version"] is None else str(e["version"])
        typer.echo(f"{_when(e['at'])}  {e['kind']:<12}  {version:>7}  {e['by']:<16}  {words}")


@config_app.command("diff")
def diff(
    old: Annotated[int, typer.Argument(help="The older version.")],
    new: Annotated[int, typer.Argument(help="The newer version.")],
    cloud: CloudOpt,
    api_key: KeyOpt,
) -> None:
    """A unified diff between two versions (secrets redacted unless the key is an admin's).

    Example: tagway cloud config diff 6 7 --cloud URL --api-key KEY
    """
    answer = Api(cloud, api_key).call("GET", f"/v1/configs/{new}/diff", **{"from": old})
    typer.echo(answer["diff"] or f"versions {old} and {new} are the same", nl=not answer["diff"])


@rollout_app.command("status")
def rollout_status(
    rollout: Annotated[int, typer.Argument(help="The rollout's id.")],
    cloud: CloudOpt,
    api_key: KeyOpt,
    json_out: JsonOpt = False,
) -> None:
    """A rollout's progress: its state, the current wave, every gateway's state.

    Exit 0 when completed, 1 when stopped or cancelled, 2 while it runs.
    Example: tagway cloud rollout status 12 --cloud URL --api-key KEY
    """
    r = Api(cloud, api_key).call("GET", f"/v1/rollouts/{rollout}")
    if json_out:
        typer.echo(json.dumps(r))
    else:
        wave = f", wave {r['current_wave']} of {r['waves']}" if r["current_wave"] else ""
        typer.echo(f"rollout {r['id']}: version {r['version']} to {r['target']}: "
                   f"{r['state']}{wave}")  # fmt: skip
        if r["reason"]:
            typer.echo(f"  {r['reason']}")
        typer.echo(f"  {'WAVE':>4}  {'GATEWAY':<24}  {'STATE':<9}  REASON")
        for g in r["gateways"]:
            name = f"{g['name']} ({g['gateway_id']})"
            typer.echo(f"  {g['wave']:>4}  {name:<24}  {g['state']:<9}  {g['reason'] or ''}")
    code = {"completed": 0, "running": 2}.get(r["state"], 1)
    raise typer.Exit(code)


def _when(micros: int) -> str:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.fromtimestamp(micros / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------- on the gateway itself

ConfigPathOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="The agent's config file (default $TAGWAY_CONFIG or "
                 "/etc/tagway/config.yaml)."),
]  # fmt: skip
ApiOpt = Annotated[str | None, typer.Option("--api", help="The local API URL, if not found.")]


def config_pull(
    config: ConfigPathOpt = None, api: ApiOpt = None, json_out: JsonOpt = False
) -> None:
    """Take the cloud's config version for this gateway now, through the running agent.

    The same validation and probation as a version the cloud sends; it works on a locally
    managed gateway too (the version's own `fleet.managed_by` decides from then on). Waits for
    the probation. Exit 0 when applied, 1 otherwise.
    Example: tagway config pull --config /etc/tagway/config.yaml
    """
    from cli.local import LocalClient  # noqa: PLC0415 - keep `--help` fast
    from edge.api_contract import ConfigTrial  # noqa: PLC0415

    trial = LocalClient(config, api, timeout=3_700).post("/v1/config/pull", ConfigTrial)
    if json_out:
        typer.echo(trial.model_dump_json())
    else:
        about = f"version {trial.version}: " if trial.version is not None else ""
        typer.echo(f"{about}{trial.outcome.replace('_', ' ')}"
                   + (f" ({trial.reason})" if trial.reason else ""))  # fmt: skip
        for problem in trial.problems:
            typer.echo(f"  {problem}")
    raise typer.Exit(0 if trial.outcome in ("applied", "restarting") else 1)


def config_push(
    config: ConfigPathOpt = None, api: ApiOpt = None, json_out: JsonOpt = False
) -> None:
    """Make this gateway's config file the cloud's version for it (ends drift).

    The cloud stores the running file as a new version assigned to this gateway alone.
    Example: tagway config push --config /etc/tagway/config.yaml
    """
    from cli.local import LocalClient  # noqa: PLC0415 - keep `--help` fast
    from edge.api_contract import ConfigPushed  # noqa: PLC0415

    pushed = LocalClient(config, api, timeout=60).post("/v1/config/push", ConfigPushed)
    if json_out:
        typer.echo(pushed.model_dump_json())
        return
    typer.echo(f"the cloud now has this gateway's file as version {pushed.version}")
