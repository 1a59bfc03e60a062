"""Installer commands on the gateway: init, config validate, run, status, tags, alarms, write."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.errors import fail
from cli.local import DEFAULT_CONFIG, LocalClient
from cli.logs import LogFormat, setup
from cli.starter import STARTER

if TYPE_CHECKING:
    from edge.api_contract import (
        Alarm,
        Clock,
        ConfigStatus,
        Driver,
        Gateway,
        Health,
        Outbox,
        RemoteConfig,
        TagValue,
        Uplink,
    )

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

config_app = typer.Typer(
    rich_markup_mode=None,
    help="Check config files; move between cloud and local management.",
    no_args_is_help=True,
)

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
    release (systemd does not restart it), 75 when a config from the cloud needs a restart
    (systemd starts it again), 1 for other failures.
    Example: tagway run --config /etc/tagway/config.yaml
    """
    from edge.agent import Agent, run_until_signalled  # noqa: PLC0415
    from edge.alarm_store import AlarmStateTooNew  # noqa: PLC0415
    from edge.config import ConfigError, load_config  # noqa: PLC0415
    from edge.fleet.versions import ConfigVersions  # noqa: PLC0415
    from store_forward import SchemaTooNew  # noqa: PLC0415

    setup(log_format, log_level)
    path = config or DEFAULT_CONFIG
    if path.exists():
        # A config trial that a kill or a power cut interrupted: the last good file goes back
        # in place before anything reads it (see edge.fleet.versions).
        ConfigVersions(path).recover()
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(f"tagway: {issue}", err=True)
        raise typer.Exit(EX_CONFIG) from None
    from edge.sd_notify import SystemdNotifier  # noqa: PLC0415

    notifier = SystemdNotifier.take_from_environ()  # the commands it runs do not inherit it
    agent = Agent(cfg, config_path=path, tune_gc=True, notifier=notifier)
    try:
        asyncio.run(run_until_signalled(agent))
    except (SchemaTooNew, AlarmStateTooNew) as exc:
        # A state file from a newer release needs a person (upgrade, or move the file away);
        # restarting cannot fix it, so the exit code tells systemd not to try.
        typer.echo(f"tagway: error: {exc}", err=True)
        raise typer.Exit(EX_CONFIG) from None
    if agent.exit_code:
        raise typer.Exit(agent.exit_code)


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What `tagway status` reads from the agent, one contract model per endpoint."""

    health: Health
    gateway: Gateway
    drivers: tuple[Driver, ...]
    uplink: Uplink
    outbox: Outbox
    alarms: tuple[Alarm, ...]  # those that need attention (not normal)

    def as_json(self) -> str:
        """The report for scripts."""
        return json.dumps({
            "health": self.health.model_dump(mode="json"),
            "gateway": self.gateway.model_dump(mode="json"),
            "drivers": [d.model_dump(mode="json") for d in self.drivers],
            "uplink": self.uplink.model_dump(mode="json"),
            "outbox": self.outbox.model_dump(mode="json"),
            "alarms": [a.model_dump(mode="json") for a in self.alarms],
        }, indent=2)  # fmt: skip


def status(config: ConfigOpt = None, api: ApiOpt = None, json_out: JsonOpt = False) -> None:
    """Show drivers, uplink, outbox and active alarms; exit 0 when healthy, 1 otherwise.

    Example: tagway status --json
    """
    from edge.api_contract import ALARMS, DRIVERS, Gateway, Health, Outbox, Uplink  # noqa: PLC0415

    client = LocalClient(config, api)
    report = StatusReport(
        health=client.get("/health", Health), gateway=client.get("/v1/gateway", Gateway),
        drivers=client.get_as("/v1/drivers", DRIVERS), uplink=client.get("/v1/uplink", Uplink),
        outbox=client.get("/v1/outbox", Outbox),
        alarms=tuple(a for a in client.get_as("/v1/alarms", ALARMS) if a.state != "normal"),
    )  # fmt: skip
    if json_out:
        typer.echo(report.as_json())
    else:
        _print_status(report)
    raise typer.Exit(0 if report.health.status == "ok" else 1)


def _print_status(r: StatusReport) -> None:
    gw = r.gateway
    badge = "  [SIMULATED]" if gw.simulated else ""
    typer.echo(f"{gw.name} (id {gw.gateway_id or '-'}) tagway {gw.version}{badge}")
    typer.echo(f"health: {r.health.status}")
    typer.echo(f"clock: {_clock_line(gw.clock)}")
    for problem in r.health.problems:
        typer.echo(f"  ! {problem}")
    _print_reload(gw.config)
    typer.echo("drivers:")
    for d in r.drivers:
        typer.echo(f"  {d.name:<20} {d.protocol:<7} {d.state:<11} readings "
                   f"{d.counter('readings'):>10}  errors {d.counter('errors')}  restarts "
                   f"{d.restarts}  overruns {d.overruns}  dropped {d.lost_readings}")  # fmt: skip
        if d.counter("clock_faults"):
            typer.echo(f"      {d.counter('clock_faults')} readings with an implausible source "
                       "clock (see clock_fault)")  # fmt: skip
        at = _clock(d.last_error_at)
        if d.last_error:
            typer.echo(f"      error at {at}: {d.last_error}")
        elif d.recovered_from:
            typer.echo(f"      recovered (error at {at}: {d.recovered_from})")
    for task in gw.tasks:
        if task.restarts:
            typer.echo(f"  ! task {task.name} failed, restarts {task.restarts} "
                       f"(last: {task.last_failure})")  # fmt: skip
    overloaded = [d for d in r.drivers if d.overloaded]
    if overloaded:
        typer.echo("overload (the agent cannot keep up with these devices):")
        for d in overloaded:
            typer.echo(f"  ! {d.overload_text()}")
    up = r.uplink
    if up.configured:
        age = f"{up.backlog_age_s:.0f} s" if up.backlog_age_s is not None else "-"
        typer.echo(
            f"uplink: {up.state}, sending {up.send_rate:.1f} readings/s (last minute), "
            f"{up.batches_sent} batches, {up.readings_sent} readings sent, "
            f"backlog age {age}, {_uplink_error(up)}"
        )
    else:
        typer.echo("uplink: not configured (offline gateway)")
    ob = r.outbox
    used, quota = ob.used_bytes / 2**20, ob.quota_bytes / 2**20
    typer.echo(f"outbox: {used:.1f} of {quota:.0f} MiB, backlog {ob.backlog_readings} readings, "
               f"dropped {ob.dropped_readings}")  # fmt: skip
    typer.echo(f"alarms: {len(r.alarms)} need attention")
    for a in r.alarms:
        typer.echo(f"  {a.severity:<8} {a.state:<9} {a.name}: {a.message}")


def _uplink_error(up: Uplink) -> str:
    """The last error, saying when, and whether the uplink has sent since (then it is history,
    not the reason for the health shown above it)."""
    if not up.last_error:
        return "no error"
    at = up.last_error_at
    when = f" at {time.strftime('%H:%M:%S', time.localtime(at))}" if at is not None else ""
    if at is not None and up.last_success is not None and up.last_success > at:
        return f"recovered from the last error{when}: {up.last_error}"
    return f"last error{when}: {up.last_error}"


def _clock_line(clock: Clock) -> str:
    """The gateway clock as `tagway status` shows it."""
    state = {True: "synchronized", False: "NOT synchronized", None: "synchronization unknown"}
    line = f"{state[clock.synchronized]} (from {clock.source})"
    if clock.unsynchronized_readings:
        line += f", {clock.unsynchronized_readings} readings accepted while unsynchronized"
    return line


def _clock(at: float | None) -> str:
    """A time of today's log as operators read it (local time, to the second)."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _print_reload(config: ConfigStatus) -> None:
    last = config.last_reload
    if last is None:
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.at))
    typer.echo(f"config: last reload {when} {last.outcome}"
               + (f": {last.error}" if last.error else ""))  # fmt: skip
    if config.needs_restart:
        typer.echo(f"  ! needs a restart to apply: {', '.join(config.needs_restart)}")
    remote = config.remote
    if remote is not None:
        typer.echo(f"config: {describe_remote(remote)}")


def describe_remote(remote: RemoteConfig) -> str:
    """One line: who manages the config, which version runs, how the last one went."""
    running = f"version {remote.version}" if remote.version is not None else "a local file"
    line = f"{remote.managed_by}-managed, running {running}"
    if remote.phase != "idle":
        return f"{line}; trying version {remote.candidate}: {remote.phase}"
    if remote.outcome is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(remote.at or 0))
        about = f" {remote.outcome_version}" if remote.outcome_version is not None else ""
        line += f"; last: {remote.outcome.replace('_', ' ')}{about} at {when}"
        if remote.reason and remote.outcome != "applied":
            line += f" ({remote.reason})"
    return line


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
    from edge.api_contract import TAGS  # noqa: PLC0415 - keep `--help` fast

    client = LocalClient(config, api)
    if device is not None:  # a mistyped name says so, instead of an empty table
        from edge.api_contract import DRIVERS  # noqa: PLC0415

        known = {t.device for t in client.get_as("/v1/tags", TAGS)}
        known |= {d.name for d in client.get_as("/v1/drivers", DRIVERS)}
        if device not in known:
            names = ", ".join(sorted(known)) or "none"
            fail(f"no device named {device!r}; the agent knows {names} (a device behind MQTT "
                 "appears with its first message)")  # fmt: skip
    while True:
        rows = client.get_as("/v1/tags", TAGS, device=device)
        if json_out:
            typer.echo(json.dumps([r.model_dump(mode="json") for r in rows]))
        else:
            _print_tags(rows)
        if not watch:
            return
        time.sleep(1.0)
        typer.echo("")


def _print_tags(rows: tuple[TagValue, ...]) -> None:
    now = time.time()
    typer.echo(f"{'device':<16} {'tag':<28} {'value':>14} {'unit':<8} {'quality':<9} age")
    for r in rows:
        shown = f"{r.value:.4g}" if isinstance(r.value, float) else str(r.value)
        age = now - r.ts / 1e6
        sim = " sim" if r.simulated else ""
        typer.echo(f"{r.device:<16} {r.tag:<28} {shown:>14} {r.unit or '':<8} "
                   f"{r.quality:<9} {age:.1f}s{sim}")  # fmt: skip


def alarms(
    config: ConfigOpt = None,
    api: ApiOpt = None,
    ack: Annotated[str | None, typer.Option("--ack", help="Acknowledge this alarm.")] = None,
    shelve: Annotated[
        str | None, typer.Option("--shelve", help="Shelve (silence) this alarm for --for.")
    ] = None,
    unshelve: Annotated[
        str | None, typer.Option("--unshelve", help="Put a shelved alarm back now.")
    ] = None,
    duration: Annotated[
        str, typer.Option("--for", help="How long to shelve: 30m, 2h (at most 24h).")
    ] = "1h",
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit).")] = "",
    audit: Annotated[bool, typer.Option("--audit", help="Show the shelving audit.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List alarms, acknowledge one, or shelve one for a stated time.

    Example: tagway alarms --shelve pump1_vibration_high --for 2h --reason "sensor replaced"
    """
    from edge.api_contract import ALARMS, AckResult  # noqa: PLC0415 - keep `--help` fast

    client = LocalClient(config, api)
    if ack is not None:
        result = client.post(f"/v1/alarms/{ack}/ack", AckResult)
        typer.echo(f"{ack}: {'acknowledged' if result.acknowledged else 'nothing to acknowledge'}")
        return
    if shelve is not None or unshelve is not None or audit:
        _shelving(client, shelve, unshelve, duration, reason)
        return
    rows = client.get_as("/v1/alarms", ALARMS)
    if json_out:
        typer.echo(json.dumps([a.model_dump(mode="json") for a in rows]))
        return
    if not rows:
        typer.echo("no alarms")
        return
    typer.echo(f"{'state':<9} {'severity':<8} {'name':<32} message")
    for a in sorted(rows, key=lambda a: (a.state == "normal", a.name)):
        shelved = f"  (shelved until {_clock_us(a.shelved_until)})" if a.shelved_until else ""
        typer.echo(f"{a.state:<9} {a.severity:<8} {a.name:<32} {a.message}{shelved}")


def _shelving(
    client: LocalClient, shelve: str | None, unshelve: str | None, duration: str, reason: str
) -> None:
    from cli.cloud_cmds import parse_duration  # noqa: PLC0415 - keep `--help` fast
    from edge.api_contract import (  # noqa: PLC0415 - keep `--help` fast
        SHELVING,
        Shelved,
        ShelveRequest,
        Unshelved,
    )

    by = _operator()
    if shelve is not None:
        if not reason.strip():
            fail("--shelve needs --reason: say why, it is kept in the audit")
        request = ShelveRequest(duration_s=parse_duration(duration, "--for"), reason=reason, by=by)
        done = client.post(f"/v1/alarms/{shelve}/shelve", Shelved, request)
        typer.echo(f"{shelve}: shelved until {_clock_us(done.until)} by {done.by}")
    elif unshelve is not None:
        back = client.delete(f"/v1/alarms/{unshelve}/shelve", Unshelved, by=by)
        typer.echo(f"{unshelve}: {'back' if back.unshelved else 'was not shelved'}")
    else:
        typer.echo(f"{'when':<19} {'alarm':<32} {'action':<10} {'by':<12} reason")
        for a in client.get_as("/v1/alarms-shelving", SHELVING):
            until = f" (until {_clock_us(a.until)})" if a.until else ""
            typer.echo(f"{_clock_us(a.at):<19} {a.alarm:<32} {a.action:<10} {a.by:<12} "
                       f"{a.reason}{until}")  # fmt: skip


def _operator() -> str:
    """Who is at the keyboard, for the audit."""
    import getpass  # noqa: PLC0415 - only when shelving

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "local"


def _clock_us(ts_us: int | None) -> str:
    """Local date and time of a µs timestamp."""
    if ts_us is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts_us / 1e6))


def write(
    device: Annotated[str, typer.Argument(help="The device name.")],
    tag: Annotated[str, typer.Argument(help="A writable tag.")],
    value: Annotated[str, typer.Argument(help="The value: a number, true/false, or text.")],
    config: ConfigOpt = None,
    api: ApiOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Write a setpoint through the running agent: checked against the tag's limits, audited,
    read back and verified by the driver. Needs the local API token (root or the agent's user).

    Example: tagway write pump1 speed_setpoint 45   (negative values need no `--`)
    """
    from edge.api_contract import WriteRequest, WriteResult  # noqa: PLC0415 - keep `--help` fast

    parsed = parse_value(value)
    client = LocalClient(config, api, timeout=15)
    if not yes:
        typer.confirm(f"write {parsed!r} to {device}.{tag}?", abort=True)
    request = WriteRequest(device=device, tag=tag, value=parsed)
    result = client.post("/v1/write", WriteResult, request)
    back = f", read back {result.read_back!r}" if result.read_back is not None else ""
    typer.echo(f"{device}.{tag} = {parsed!r} (written and read back{back})")


def writes(
    config: ConfigOpt = None,
    api: ApiOpt = None,
    device: Annotated[str | None, typer.Option(help="Only this device's writes.")] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """The setpoint write audit: every write, wherever it came from (cloud, shadow, local),
    with who, old value, new value, read-back and outcome.

    Example: tagway writes --device pump1
    """
    from edge.api_contract import WRITES  # noqa: PLC0415 - keep `--help` fast

    rows = LocalClient(config, api).get_as("/v1/writes", WRITES, device=device,
                                            limit=str(limit))  # fmt: skip
    if json_out:
        typer.echo(json.dumps([w.model_dump(mode="json") for w in rows]))
        return
    for w in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(w.ts / 1e6))
        back = "" if w.read_back is None else f" read back {w.read_back!r}"
        why = f" ({w.reason})" if w.reason else ""
        typer.echo(f"{when} {w.outcome:<8} {w.device}.{w.tag} {w.old!r} -> {w.value!r}{back}"
                   f"  by {w.who} via {w.source}{why}")  # fmt: skip


def parse_value(text: str) -> float | int | bool | str:
    """A setpoint as typed: true/false/on/off, an integer, a number, else the text."""
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
