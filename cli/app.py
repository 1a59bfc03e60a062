"""The `tagway` command: a thin layer over the library packages.

Every command has help text with an example. User mistakes print one clear line to stderr and exit
non-zero; they never print a traceback.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer

app = typer.Typer(
    name="tagway",
    help="tagway: an edge-first industrial gateway with cloud sync.\n\nExample: tagway --version",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
    app()
