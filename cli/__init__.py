"""cli: the `tagway` command (typer) and the terminal UI (`cli/tui/`, Textual).

This is the composition root: it may import every other package and wires them together for
installers (configure, validate, provision, run, inspect), plant engineers (the TUI) and cloud
operators (serve, migrate, tenants, keys).
"""

from cli.app import main

__all__ = ["main"]
