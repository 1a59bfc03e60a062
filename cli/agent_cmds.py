"""Installer commands on the gateway: init, config validate, run, status, tags, alarms, write."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.errors import fail
from cli.local import DEFAULT_CONFIG, LocalClient
from cli.logs import LogFormat, setup
from cli.starter import STARTER

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The agent's config file (default $TAGWAY_CONFIG or /etc/tagway/config.yaml).",
    ),
]
ApiOpt = Annotated[str | None, typer.Option("--api", help="The local API URL, if not found.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

config_app = typer.Typer(help="Check config files.", no_args_is_help=True)

EX_CONFIG = 78  # sysexits.h: systemd's RestartPreventExitStatus stops a crash loop on bad config


def init(
    directory: Annotated[
        Path, typer.Argument(help="Where to put config.yaml and state/.")
    ] = Path(),
    name: Annotated[str, typer.Option(help="The gateway's name.")] = "gateway-1",
    force: Annotated[bool, typer.Option(help="Overwrite an existing config.yaml.")] = False,
) -> None:
    """Write a commented starter config and a state directory.

    Example: tagway init /etc/tagway --name plant-a-gw1
    """
    path = directory / "config.yaml"
    if path.exists() and not force:
        fail(f"{path} exists; use --force to overwrite it")
    state = (directory / "state").resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(STARTER.format(path=path, name=name, state_dir=state))
    typer.echo(f"wrote {path} and {state}/\nnext: edit the devices, then `tagway config validate "
               f"{path}`")  # fmt: skip


@config_app.command("validate")
def config_validate(
    file: Annotated[Path, typer.Argument(help="The config file to check.")],
    json_out: JsonOpt = False,
) -> None:
    """Check a config file; every problem is printed with its line and field.

    Exit 0 when clean, 1 when not. Example: tagway config validate /etc/tagway/config.yaml
    """
    from edge.config import load_config  # noqa: PLC0415 - keep `--help` fast

    config = load_config(file)
    summary = {
        "file": str(file), "gateway": config.gateway.name, "devices": len(config.devices),
        "tags": sum(len(getattr(d, "tags", ())) for d in config.devices),
        "alarms": len(config.alarms), "models": len(config.models),
        "simulated": config.simulated,
    }  # fmt: skip
    if json_out:
        typer.echo(json.dumps({"valid": True, **summary}))
    else:
        typer.echo(f"{file}: ok ({summary['devices']} devices, {summary['tags']} tags, "
                   f"{summary['alarms']} alarms, {summary['models']} models)")  # fmt: skip


def run(
    config: ConfigOpt = None,
    log_format: Annotated[LogFormat, typer.Option(help="human, json, or auto.")] = "auto",
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C; SIGHUP reloads the config file.

    Exit codes: 0 after a clean stop, 78 for a config error or a state file from a newer
    release (systemd does not restart it), 1 for other failures.
    Example: tagway run --config /etc/tagway/config.yaml
    """
    from edge.agent import Agent, run_until_signalled  # noqa: PLC0415
    from edge.config import ConfigError, load_config  # noqa: PLC0415

    setup(log_format, log_level)
    path = config or DEFAULT_CONFIG
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(f"tagway: {issue}", err=True)
        raise typer.Exit(EX_CONFIG) from None
    from edge.alarm_store import AlarmStateTooNew  # noqa: PLC0415
    from store_forward import SchemaTooNew  # noqa: PLC0415

    identity = uplink_identity(cfg)
    try:
        asyncio.run(run_until_signalled(Agent(cfg, identity=identity, config_path=path)))
    except (SchemaTooNew, AlarmStateTooNew) as exc:
        # A state file from a newer release needs a person (upgrade, or move the file away);
        # restarting cannot fix it, so the exit code tells systemd not to try.
        typer.echo(f"tagway: error: {exc}", err=True)
        raise typer.Exit(EX_CONFIG) from None


def uplink_identity(cfg: Any) -> Any:
    """Who the uplink posts as: a static token file, or the provisioned identity's tokens."""
    from edge.agent import UplinkIdentity  # noqa: PLC0415
    from edge.gateway_token import TokenMinter  # noqa: PLC0415
    from edge.identity import IdentityNotFound, IdentityStore  # noqa: PLC0415

    if cfg.cloud is None:
        return None
    if cfg.cloud.token_file is not None:
        token = cfg.cloud.token_file.read_text().strip()

        async def static() -> str:
            return str(token)

        return UplinkIdentity(cfg.cloud.gateway_id, static)
    try:
        identity = IdentityStore(cfg.gateway.state_dir).load()
    except IdentityNotFound:
        fail("this gateway is not provisioned: run `tagway provision --cloud URL "
             "--claim-token TOKEN` first, or remove the cloud section to run offline")  # fmt: skip
    minter = TokenMinter(identity)
    store = IdentityStore(cfg.gateway.state_dir)

    async def minted() -> str:
        return minter.token()

    async def rotate_when_due() -> None:
        await keep_certificate_fresh(store, minter, cfg.cloud.url)

    return UplinkIdentity(identity.gateway_id, minted, rotate_when_due)


async def keep_certificate_fresh(store: Any, minter: Any, cloud_url: str) -> None:
    """Every hour, rotate the gateway certificate if it expires within 30 days; a failed
    rotation is logged and tried again the next hour (the current certificate still works)."""
    import logging  # noqa: PLC0415

    import httpx  # noqa: PLC0415

    from edge.identity import IdentityError  # noqa: PLC0415
    from edge.rotation import rotate_if_due  # noqa: PLC0415

    log = logging.getLogger("edge.rotation")
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            try:
                rotated = await rotate_if_due(store, client, cloud_url=cloud_url)
            except IdentityError as exc:
                log.error("certificate rotation failed, will retry in an hour: %s", exc)  # noqa: TRY400
            else:
                if rotated is not None:
                    minter.use(rotated)
                    log.info("certificate rotated; it now expires %s", rotated.expires_at)
            await asyncio.sleep(3600)


def status(config: ConfigOpt = None, api: ApiOpt = None, json_out: JsonOpt = False) -> None:
    """Show drivers, uplink, outbox and active alarms; exit 0 when healthy, 1 otherwise.

    Example: tagway status --json
    """
    client = LocalClient(config, api)
    report = {
        "health": client.get("/health"), "gateway": client.get("/v1/gateway"),
        "drivers": client.get("/v1/drivers"), "uplink": client.get("/v1/uplink"),
        "outbox": client.get("/v1/outbox"),
        "alarms": [a for a in client.get("/v1/alarms") if a["state"] != "normal"],
    }  # fmt: skip
    healthy = report["health"]["status"] == "ok"
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_status(report)
    raise typer.Exit(0 if healthy else 1)


def _print_status(r: dict[str, Any]) -> None:
    gw = r["gateway"]
    badge = "  [SIMULATED]" if gw["simulated"] else ""
    typer.echo(f"{gw['name']} (id {gw['gateway_id'] or '-'}) tagway {gw['version']}{badge}")
    typer.echo(f"health: {r['health']['status']}")
    for problem in r["health"]["problems"]:
        typer.echo(f"  ! {problem}")
    _print_reload(gw["config"])
    typer.echo("drivers:")
    for d in r["drivers"]:
        c = d["counters"]
        typer.echo(f"  {d['name']:<20} {d['protocol']:<7} {d['state']:<11} readings "
                   f"{c.get('readings', 0):>10}  errors {c.get('errors', 0)}  restarts "
                   f"{d['restarts']}")  # fmt: skip
    up = r["uplink"]
    if up.get("configured"):
        typer.echo(
            f"uplink: {up['state']}, {up['batches_sent']} batches, "
            f"{up['readings_sent']} readings sent, last error: {up['last_error'] or '-'}"
        )
    else:
        typer.echo("uplink: not configured (offline gateway)")
    ob = r["outbox"]
    if ob.get("open"):
        lanes = ob["lanes"]
        used, quota = ob["used_bytes"] / 2**20, ob["quota_bytes"] / 2**20
        typer.echo(f"outbox: {used:.1f} of {quota:.0f} MiB, "
                   f"backlog {sum(v['readings'] for v in lanes.values())} readings, dropped "
                   f"{ob['dropped_readings']}")  # fmt: skip
    typer.echo(f"alarms: {len(r['alarms'])} need attention")
    for a in r["alarms"]:
        typer.echo(f"  {a['severity']:<8} {a['state']:<9} {a['name']}: {a['message']}")


def _print_reload(config: dict[str, Any]) -> None:
    last = config["last_reload"]
    if last is None:
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["at"]))
    typer.echo(f"config: last reload {when} {last['outcome']}"
               + (f": {last['error']}" if last["error"] else ""))  # fmt: skip
    if config["needs_restart"]:
        typer.echo(f"  ! needs a restart to apply: {', '.join(config['needs_restart'])}")


def tags(
    config: ConfigOpt = None,
    api: ApiOpt = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help="Only this device.")] = None,
    watch: Annotated[bool, typer.Option(help="Refresh every second until Ctrl-C.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Latest value of every tag, with quality and age.

    Example: tagway tags --device pump1 --watch
    """
    client = LocalClient(config, api)
    while True:
        rows = client.get("/v1/tags", device=device)
        if json_out:
            typer.echo(json.dumps(rows))
        else:
            _print_tags(rows)
        if not watch:
            return
        time.sleep(1.0)
        typer.echo("")


def _print_tags(rows: list[dict[str, Any]]) -> None:
    now = time.time()
    typer.echo(f"{'device':<16} {'tag':<28} {'value':>14} {'unit':<8} {'quality':<9} age")
    for r in rows:
        value = r["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        age = now - r["ts"] / 1e6
        sim = " sim" if r["simulated"] else ""
        typer.echo(f"{r['device']:<16} {r['tag']:<28} {shown:>14} {r['unit'] or '':<8} "
                   f"{r['quality']:<9} {age:.1f}s{sim}")  # fmt: skip


def alarms(
    config: ConfigOpt = None,
    api: ApiOpt = None,
    ack: Annotated[str | None, typer.Option("--ack", help="Acknowledge this alarm.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List alarms, or acknowledge one.

    Example: tagway alarms --ack pump1_vibration_high
    """
    client = LocalClient(config, api)
    if ack is not None:
        result = client.post(f"/v1/alarms/{ack}/ack")
        typer.echo(
            f"{ack}: {'acknowledged' if result['acknowledged'] else 'nothing to acknowledge'}"
        )
        return
    rows = client.get("/v1/alarms")
    if json_out:
        typer.echo(json.dumps(rows))
        return
    for a in sorted(rows, key=lambda a: (a["state"] == "normal", a["name"])):
        typer.echo(f"{a['state']:<9} {a['severity']:<8} {a['name']:<32} {a['message']}")


def write(
    device: Annotated[str, typer.Argument(help="The device name.")],
    tag: Annotated[str, typer.Argument(help="A writable tag.")],
    value: Annotated[str, typer.Argument(help="The value: a number, true/false, or text.")],
    config: ConfigOpt = None,
    api: ApiOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Write a setpoint through the running agent (read back and verified by the driver).

    Example: tagway write pump1 speed_setpoint 1450
    """
    parsed = _parse_value(value)
    if not yes:
        typer.confirm(f"write {parsed!r} to {device}.{tag}?", abort=True)
    client = LocalClient(config, api, timeout=15)
    client.post("/v1/write", {"device": device, "tag": tag, "value": parsed})
    typer.echo(f"{device}.{tag} = {parsed!r} (written and read back)")


def _parse_value(text: str) -> float | int | bool | str:
    lowered = text.lower()
    if lowered in {"true", "on"}:
        return True
    if lowered in {"false", "off"}:
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
