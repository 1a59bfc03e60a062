"""The `tagway` command: a thin layer over the library packages.

Every command has help text with an example. User mistakes print one clear line to stderr and exit
non-zero; they never print a traceback (`cli.errors`).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

import typer

from cli import agent_cmds, fleet_cmds, provision_cmds
from cli.buffer_cmds import buffer_app
from cli.cloud_cmds import cloud_app
from cli.errors import report
from cli.sim_cmds import demo, sim_app
from cli.tui import tui

app = typer.Typer(
    rich_markup_mode=None,
    name="tagway",
    help="tagway: an edge-first industrial gateway with cloud sync.\n\n"
    "Example: tagway init /etc/tagway && tagway run -c /etc/tagway/config.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(agent_cmds.init)
agent_cmds.config_app.command("pull")(fleet_cmds.config_pull)
agent_cmds.config_app.command("push")(fleet_cmds.config_push)
app.add_typer(agent_cmds.config_app, name="config")
app.command()(agent_cmds.run)
app.command()(agent_cmds.status)
app.command()(agent_cmds.tags)
app.command()(agent_cmds.alarms)
# A setpoint may be negative: `tagway write pump1 offset -2.5` is a value, not an option.
app.command(context_settings={"ignore_unknown_options": True})(agent_cmds.write)
app.command()(agent_cmds.writes)
app.add_typer(buffer_app, name="buffer")
app.add_typer(sim_app, name="sim")
app.command()(demo)
app.command()(provision_cmds.provision)
app.add_typer(cloud_app, name="cloud")
app.command()(tui)


def _version() -> str:
    try:
        return version("tagway")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tagway {_version()}")
        raise typer.Exit


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """tagway: an edge-first industrial gateway with cloud sync."""


def main() -> None:
    """Entry point of the `tagway` console script."""
    try:
        # Without standalone mode click returns the exit code of `typer.Exit` instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI's one boundary: every error is one line
        sys.exit(report(exc))
