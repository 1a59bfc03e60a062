"""Screens beyond the tabs: the status bar they all share, device detail, and help."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Static

from cli.tui.model import AgentView, format_age, format_rate
from cli.tui.panes import STATE_STYLE, not_running, styled, tag_cells
from cli.tui.table import RowTable

HELP = """\
[b]tagway terminal UI[/b]: the agent on this gateway, live.

[b]Everywhere[/b]
  1 2 3 4     Overview, Tags, Alarms, Devices (or click a tab)
  ?           this help          q   quit
  r           refresh now        Tab / Shift+Tab  move focus
[b]Tags[/b]
  /           filter: type part of a device or tag name, Enter to go back
  s           sort by the next column (or click a column header)
  Up / Down   select a tag; its recent history is drawn below the table
  w           write a setpoint to the selected tag (checked against its limits)
[b]Alarms[/b]
  a           acknowledge the selected alarm
  s / u       shelve it for a time you give (with a reason) / put it back
[b]Devices[/b]
  Enter       details: connection, counters, last error, its tags
  Escape      back

A [reverse] SIMULATED [/reverse] badge means some data comes from simulated devices.
When the agent is not running the TUI says so and keeps retrying."""


class StatusBar(Horizontal):
    """One line at the top of every screen: gateway, agent connection, SIMULATED badge."""

    DEFAULT_CSS = """
    StatusBar { height: 1; dock: top; background: $panel; }
    StatusBar #status-text { width: 1fr; height: 1; }
    StatusBar #simulated { width: auto; height: 1; background: $warning; color: $text;
                           text-style: bold; padding: 0 1; display: none; }
    StatusBar #simulated.on { display: block; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="status-text")
        yield Static("SIMULATED", id="simulated")

    def show(self, view: AgentView, now: float) -> None:
        """Render the connection state and the badge."""
        text = Text(" tagway ", style="bold")
        if view.snapshot is not None:
            text.append(view.snapshot.gateway.name, style="bold")
            text.append("  ")
        if view.connection == "connected":
            text.append("agent connected", style="green")
        elif view.connection == "connecting":
            text.append("connecting ...", style="yellow")
        else:
            text.append(f"agent {view.connection.upper()}, retrying", style="bold red")
            if view.last_ok is not None:
                text.append(f" (last answer {format_age(now - view.last_ok)} ago)")
        self.query_one("#status-text", Static).update(text)
        self.query_one("#simulated", Static).set_class(view.simulated, "on")


class DeviceScreen(Screen[None]):
    """One device: connection, counters, last error, and its tags."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
    ]

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device

    def compose(self) -> ComposeResult:
        yield StatusBar()
        with Vertical():
            yield Static(id="device-info")
            yield RowTable(id="device-tags")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#device-tags", RowTable).add_columns(
            "device", "tag", "value", "unit", "quality", "age"
        )

    def show(self, view: AgentView, now: float) -> None:
        """Render the latest state of this device."""
        self.query_one(StatusBar).show(view, now)
        info = self.query_one("#device-info", Static)
        snap = view.snapshot
        driver = next((d for d in snap.drivers if d.name == self.device), None) if snap else None
        if driver is None:
            info.update(not_running(view) if view.connection != "connected" else
                        Text(f"no device named {self.device}", "red"))  # fmt: skip
            return
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        held = f" for {format_age(now - driver.since)}" if driver.since else ""
        grid.add_row("Device", Text.assemble((driver.name, "bold"), f"  {driver.protocol}  ",
                                             "simulated" if driver.simulated else ""))  # fmt: skip
        grid.add_row("State", Text.assemble(styled(driver.state, STATE_STYLE),
                     f"{held}  reconnects {driver.reconnects}  restarts "
                     f"{driver.restarts}  crashes {driver.crashes}"))  # fmt: skip
        rate = format_rate(view.rates.rate(driver.name)).removesuffix("/s")
        grid.add_row("Rate", f"{rate} readings/s")
        grid.add_row("Counters", "\n".join(counter_lines(driver.counters, width=64)))
        grid.add_row("Last error", Text(driver.last_error or "none",
                                        "red" if driver.last_error else "green"))  # fmt: skip
        info.update(grid)
        tags = [t for t in snap.tags if t.device == self.device] if snap else []
        self.query_one("#device-tags", RowTable).set_rows(
            [(t.key, tag_cells(t, now)) for t in tags]
        )


def counter_lines(counters: Mapping[str, int], *, width: int) -> list[str]:
    """`name value` pairs two spaces apart, broken into lines between pairs, never inside one."""
    lines: list[str] = []
    line = ""
    for name, value in counters.items():
        pair = f"{name} {value}"
        if line and len(line) + 2 + len(pair) > width:
            lines.append(line)
            line = pair
        else:
            line = f"{line}  {pair}" if line else pair
    return [*lines, line] if line else ["-"]


class NoticeScreen(ModalScreen[None]):
    """A text the app opens on (the demo's guide: URL, key, curl), closed with Escape or Enter."""

    DEFAULT_CSS = """
    NoticeScreen { align: center middle; }
    NoticeScreen > Static { width: 100%; max-width: 110; max-height: 100%; border: round $accent;
                            padding: 0 1; background: $surface; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Close"),
        Binding("enter", "app.pop_screen", "Close", show=False),
    ]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        yield Static(Text(self.text.strip() + "\n\nEscape or Enter: on to the live view"),
                     id="notice-text")  # fmt: skip


class ShelveScreen(ModalScreen[tuple[int, str] | None]):
    """Ask how long to shelve an alarm and why; dismissed with (seconds, reason) or None."""

    DEFAULT_CSS = """
    ShelveScreen { align: center middle; }
    ShelveScreen > Vertical { width: 70; height: auto; border: round $accent; padding: 0 1;
                              background: $surface; }
    ShelveScreen Input { margin: 0; }
    ShelveScreen #shelve-problem { color: $error; height: auto; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, alarm: str) -> None:
        super().__init__()
        self.alarm = alarm

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Shelve [b]{self.alarm}[/b]: it is not announced until the time is up.")
            yield Input("1h", placeholder="for how long: 30m, 2h (at most 24h)", id="shelve-for")
            yield Input(placeholder="why (kept in the audit), then Enter", id="shelve-reason")
            yield Static(id="shelve-problem")

    def on_mount(self) -> None:
        self.query_one("#shelve-reason", Input).focus()

    def action_cancel(self) -> None:
        """Close without shelving."""
        self.dismiss(None)

    def on_input_submitted(self, _: Input.Submitted) -> None:
        """Enter in either box: check both, then shelve."""
        from cli.cloud_cmds import duration_seconds  # noqa: PLC0415 - only when shelving

        seconds = duration_seconds(self.query_one("#shelve-for", Input).value)
        reason = self.query_one("#shelve-reason", Input).value.strip()
        problem = self.query_one("#shelve-problem", Static)
        if seconds is None or seconds <= 0:
            problem.update("for how long? write e.g. 30m or 2h")
        elif not reason:
            problem.update("say why: the reason is kept in the audit")
        else:
            self.dismiss((seconds, reason))


class WriteScreen(ModalScreen[float | int | bool | str | None]):
    """Ask for a setpoint, then for a confirmation; dismissed with the value or None."""

    DEFAULT_CSS = """
    WriteScreen { align: center middle; }
    WriteScreen > Vertical { width: 70; height: auto; border: round $accent; padding: 0 1;
                             background: $surface; }
    WriteScreen #write-confirm { color: $warning; height: auto; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, key: str, current: object) -> None:
        super().__init__()
        self.key = key
        self.current = current
        self._asked: str | None = None  # the text the confirmation was asked for

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Write a setpoint to [b]{self.key}[/b] (now {self.current!r}).\n"
                         "The agent checks it against the tag's limits and audits it.")  # fmt: skip
            yield Input(placeholder="the value: a number, true/false or text; Enter",
                        id="write-value")  # fmt: skip
            yield Static(id="write-confirm")

    def on_mount(self) -> None:
        self.query_one("#write-value", Input).focus()

    def action_cancel(self) -> None:
        """Close without writing."""
        self.dismiss(None)

    @on(Input.Changed, "#write-value")
    def _changed(self) -> None:
        self._asked = None
        self.query_one("#write-confirm", Static).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """The first Enter asks to confirm the parsed value; the second writes it."""
        from cli.agent_cmds import parse_value  # noqa: PLC0415 - the CLI's own parsing

        text = event.value.strip()
        if not text:
            return
        value = parse_value(text)
        if self._asked != text:
            self._asked = text
            self.query_one("#write-confirm", Static).update(
                f"Write {value!r} to {self.key}? Enter to confirm, Escape to cancel.")  # fmt: skip
            return
        self.dismiss(value)


class HelpScreen(ModalScreen[None]):
    """The keys, in one box."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 78; max-height: 22; border: round $accent; padding: 0 1;
                          background: $surface; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Close"),
        Binding("question_mark", "app.pop_screen", "Close", show=False),
        Binding("q", "app.pop_screen", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help-text")
