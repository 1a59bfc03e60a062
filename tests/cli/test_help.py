"""Every command's --help as a user reads it in an 80-column terminal: nothing cut off (before:
`tagway cloud serve --help` showed `--static-gateway-to…` and `$TAGWAY_CLOUD_DATAB…`), and
every command has an example."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from cli.app import app


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if hasattr(group, "commands"):  # a group (typer brings its own click)
        return [p for name, sub in sorted(group.commands.items())
                for p in _commands(sub, (*path, name))]  # fmt: skip
    return [path]


COMMANDS = _commands(typer.main.get_command(app))


def test_the_walk_found_the_commands() -> None:
    assert ("cloud", "serve") in COMMANDS
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_fits_80_columns_without_cutting(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "Example: tagway" in " ".join(result.output.split()), "no example"
