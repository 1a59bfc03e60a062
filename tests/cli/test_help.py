"""Every command's --help as a user reads it in an 80-column terminal: nothing cut off (before:
`tagway cloud serve --help` showed `--static-gateway-to…` and `$TAGWAY_CLOUD_DATAB…`), and
every command has an example."""

from __future__ import annotations

import re
import shlex
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


def _leaf(path: tuple[str, ...]) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _examples(path: tuple[str, ...]) -> list[list[str]]:
    """The `Example:` command lines of a command's help text, as arguments after `tagway`."""
    text = _leaf(path).help or ""
    found = []
    # An example runs to the end of its paragraph (docstrings wrap long ones); a remark after
    # it stands apart by two spaces and in parentheses.
    for paragraph in re.findall(r"Example: (tagway (?:[^\n]|\n(?!\n))*)", text):
        example = re.sub(r"\s{2,}\(.*$", "", paragraph.replace("\n", " "), flags=re.DOTALL)
        for part in example.split("&&"):
            words = shlex.split(part.strip())
            assert words[0] == "tagway", example
            found.append(words[1:])
    return found


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_example_in_help_is_accepted_as_written(path: tuple[str, ...]) -> None:
    """Each example names a command that exists, with options and arguments it takes (they
    are parsed exactly as on the command line; test_help_examples.py runs them)."""
    examples = _examples(path)
    assert examples, f"tagway {' '.join(path)} --help has no example"
    for example in examples:
        command: Any = typer.main.get_command(app)
        name, words = "tagway", list(example)
        while hasattr(command, "commands") and words and words[0] in command.commands:
            name, *words = words
            command = command.commands[name]
        assert not hasattr(command, "commands"), f"{example}: names a group, not a command"
        command.make_context(name, words)  # raises on an unknown option or argument
