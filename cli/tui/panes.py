"""The four tabs of the main screen: overview, tags, alarms, devices.

Each pane has `show(view, now)`, called after every poll with the TUI's state and the wall clock
(injected, so a recorded state renders the same screen every time).
"""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from cli.tui.model import (
    AgentView,
    Snapshot,
    alarm_order,
    format_age,
    format_bytes,
    format_rate,
    format_value,
    matches,
)
from cli.tui.plot import Limit, TagPlot
from cli.tui.table import RowTable
from edge.api_contract import Alarm, Driver, RemoteConfig, TagValue, Uplink

_MESSAGE_CELL = 20  # the alarm table's message column; the line below it shows the whole text
QUALITY_STYLE = {"good": "green", "uncertain": "yellow", "bad": "bold red"}
SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow",
                  "low": "cyan"}  # fmt: skip
STATE_STYLE = {"connected": "green", "connecting": "yellow", "backoff": "bold red",
               "stopped": "red", "closed": "red", "idle": "yellow"}  # fmt: skip


def styled(text: str, styles: dict[str, str]) -> Text:
    """`text` in the style its value calls for."""
    return Text(text, style=styles.get(text, ""))


def not_running(view: AgentView) -> Text:
    """The plain message shown while the agent does not answer."""
    text = Text()
    text.append("The tagway agent is not running", style="bold red")
    text.append(f" (no answer at {view.where}).\n")
    text.append(f"Reason: {view.problem or 'unknown'}\n", style="dim")
    text.append("Retrying by itself; start it with `tagway run` or `systemctl start tagway`.")
    return text


class OverviewPane(Static):
    """Gateway, uplink, outbox, polling, alarms, errors and the drivers at a glance."""

    def show(self, view: AgentView, now: float) -> None:
        """Render the latest state."""
        snap = view.snapshot
        parts: list[RenderableType] = []
        if view.connection != "connected":
            if view.connection == "connecting" and snap is None:
                parts.append(Text(f"Connecting to the agent at {view.where} ..."))
            elif view.connection == "error":
                parts.append(Text(f"The agent answered with an error: {view.problem}", "red"))
            else:
                parts.append(not_running(view))
        if snap is not None and view.connection == "connected":
            parts.append(self._summary(view, snap, now))
            parts.append(self._drivers(view, snap.drivers))
        self.update(Group(*parts))

    def _summary(self, view: AgentView, snap: Snapshot, now: float) -> Table:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        gw, ob = snap.gateway, snap.outbox
        health = Text(snap.health.status, "green" if snap.health.status == "ok" else "bold red")
        grid.add_row("Gateway", Text.assemble(
            (gw.name, "bold"), f"  id {gw.gateway_id or '- (not provisioned)'}  tagway ",
            gw.version, f"  up {format_age(gw.uptime_s)}  health ", health))  # fmt: skip
        clock = gw.clock
        if clock.synchronized is False or clock.unsynchronized_readings:
            # Shown when it matters: timestamps of the gateway may be off.
            state = "NOT synchronized" if clock.synchronized is False else "synchronized again"
            grid.add_row("Clock", Text(
                f"{state} (from {clock.source}); {clock.unsynchronized_readings} readings "
                "accepted while unsynchronized", "bold red" if clock.synchronized is False
                else "yellow"))  # fmt: skip
        grid.add_row("Uplink", uplink_line(snap.uplink, now))
        grid.add_row("Backlog", backlog_line(snap.uplink, ob.backlog_readings, ob.oldest_age_s))
        if gw.config.remote is not None:
            grid.add_row("Config", config_line(gw.config.remote, now))
        grid.add_row("Outbox", Text.assemble(
            f"{format_bytes(ob.used_bytes)} of {format_bytes(ob.quota_bytes)} "
            f"({ob.used_fraction:.1%})  ",
            (f"dropped {ob.dropped_readings}", "bold red" if ob.dropped_readings else ""),
            f"  quarantined {ob.quarantined_readings}"))  # fmt: skip
        if snap.drivers and not any(d.counter("readings") for d in snap.drivers):
            # Just started (or every device silent): say so, instead of a row of dashes.
            n = len(snap.drivers)
            waiting = f"waiting for first readings from {n} device{'s' * (n != 1)}"
            grid.add_row("Polling", Text(waiting, "yellow"))
        else:
            rate = format_rate(view.poll_rate()).removesuffix("/s")
            grid.add_row("Polling", f"{rate} readings/s from {len(snap.drivers)} devices, "
                         f"{len(snap.tags)} tags")  # fmt: skip
        active = [a for a in snap.alarms if a.active]
        unacked = [a for a in snap.alarms if a.needs_ack]
        grid.add_row("Alarms", Text(f"{len(active)} active, {len(unacked)} to acknowledge",
                                    "bold red" if active else "green"))  # fmt: skip
        errors = sum(d.counter("errors") for d in snap.drivers)
        timeouts = sum(d.counter("timeouts") for d in snap.drivers)
        grid.add_row("Errors", f"device errors {errors}  timeouts {timeouts}  dead letters "
                     f"{snap.dead_letters.total}  outbox write errors "
                     f"{ob.pipeline.flush_errors}")  # fmt: skip
        for d in snap.drivers:
            if d.overloaded:  # the agent cannot keep up with this device: say which, how much
                grid.add_row("Overload", Text(d.overload_text(), "bold red"))
        for problem in snap.health.problems:
            grid.add_row("Problem", Text(problem, "bold red"))
        return grid

    def _drivers(self, view: AgentView, drivers: tuple[Driver, ...]) -> Table:
        table = Table(expand=True, box=None, padding=(0, 1), header_style="bold")
        for name in ("device", "protocol", "state", "readings/s", "errors", "restarts"):
            table.add_column(name, no_wrap=True)
        table.add_column("last error", overflow="ellipsis", no_wrap=True, ratio=1)
        for d in drivers:
            table.add_row(d.name, d.protocol, styled(d.state, STATE_STYLE),
                          format_rate(view.rates.rate(d.name)),
                          str(d.counter("errors") + d.counter("timeouts")), str(d.restarts),
                          d.last_error or "-")  # fmt: skip
        return table


def uplink_line(up: Uplink, now: float) -> Text:
    """Uplink state, last sync and the rate the cloud acknowledges readings at."""
    if not up.configured:
        return Text.assemble(("not configured", "yellow"), " (offline gateway)")
    last = format_age(now - up.last_success) + " ago" if up.last_success else "never"
    if up.state == "backoff":
        return Text(f"FAILING, retrying ({up.last_error or 'no detail'})", "bold red")
    if up.last_success is None:
        state = Text(f"{up.state}, nothing sent yet", "yellow")
    else:
        state = Text("connected", "green")
    return Text.assemble(state, f"  last sync {last}  {up.send_rate:.1f} readings/s acked")


def backlog_line(up: Uplink, backlog: int, oldest: float | None) -> Text:
    """Readings waiting in the outbox and the age of the oldest."""
    if backlog == 0:
        return Text("nothing waiting", "green")
    where = "" if up.configured else " (no cloud: kept until the quota)"
    return Text(f"{backlog} readings waiting, oldest {format_age(oldest)}{where}")


def config_line(remote: RemoteConfig, now: float) -> Text:
    """Cloud- or locally managed, the version running, the last probation and drift."""
    running = f"version {remote.version}" if remote.version is not None else "local file"
    parts: list[str | tuple[str, str]] = [
        (f"{remote.managed_by}-managed", "bold"), f"  running {running}"]  # fmt: skip
    probation = remote.probation
    if remote.phase != "idle":
        parts.append((f"  trying version {remote.candidate}: {remote.phase}", "yellow"))
    elif probation is not None:
        style = "green" if probation == "passed" else "bold red"
        about = f" of version {remote.outcome_version}" if remote.outcome_version else ""
        ago = f" {format_age(now - remote.at)} ago" if remote.at else ""
        parts.append((f"  probation{about} {probation}{ago}", style))
        if probation == "failed" and remote.reason:
            parts.append(f" ({remote.reason})")
    elif remote.outcome == "refused":
        parts.append((f"  version {remote.outcome_version} refused: {remote.reason}", "bold red"))
    if remote.drift:
        parts.append(("  edited here (drift from the cloud)", "yellow"))
    return Text.assemble(*parts)


def tag_cells(tag: TagValue, now: float) -> tuple[str | Text, ...]:
    """One row of a tag table."""
    value = Text(format_value(tag.value), style="dim" if tag.quality == "bad" else "",
                 justify="right")  # fmt: skip
    return (tag.device, tag.tag, value, tag.unit or "", styled(tag.quality, QUALITY_STYLE),
            format_age(now - tag.ts / 1e6))  # fmt: skip


class TagsPane(Vertical):
    """Every tag; `/` to filter by typing, `s` to change the sort, a sparkline of the selected,
    `w` to write a setpoint to it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("w", "write", "Write"),
        Binding("escape", "leave_filter", "Table", show=False),
    ]

    class Write(Message):
        """The user asked to write a setpoint to a tag."""

        def __init__(self, tag: TagValue) -> None:
            super().__init__()
            self.tag = tag

    SORTS: ClassVar[tuple[str, ...]] = ("device", "tag", "value", "quality", "age")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.sort_by = "device"
        self.selected: str | None = None
        self._view: AgentView | None = None
        self._now = 0.0

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ to filter: type part of a device or tag name", id="filter")
        yield Static(id="tags-status")
        yield RowTable(id="tags-table")
        yield Static(id="tag-detail")
        yield TagPlot(id="tag-plot")

    def on_mount(self) -> None:
        table = self.query_one("#tags-table", RowTable)
        table.add_columns("device", "tag", "value", "unit", "quality", "age")

    def action_filter(self) -> None:
        """Focus the filter box."""
        self.query_one("#filter", Input).focus()

    def action_leave_filter(self) -> None:
        """Back to the table (the filter stays)."""
        self.query_one("#tags-table", RowTable).focus()

    def action_write(self) -> None:
        """Write a setpoint to the selected tag (asks for the value, then to confirm)."""
        chosen = next((t for t in self.shown_tags() if t.key == self.selected), None)
        if chosen is not None:
            self.post_message(self.Write(chosen))

    def action_sort(self) -> None:
        """Sort by the next column."""
        self.sort_by = self.SORTS[(self.SORTS.index(self.sort_by) + 1) % len(self.SORTS)]
        self._render_rows()

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._render_rows()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one("#tags-table", RowTable).focus()

    @on(DataTable.HeaderSelected, "#tags-table")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by = str(event.label)
        self._render_rows()

    @on(DataTable.RowHighlighted, "#tags-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.selected = event.row_key.value
        self._render_detail()

    def show(self, view: AgentView, now: float) -> None:
        """Render the latest state."""
        self._view, self._now = view, now
        self._render_rows()

    def shown_tags(self) -> list[TagValue]:
        """The tags the filter lets through, in the chosen order."""
        if self._view is None or self._view.snapshot is None:
            return []
        text = self.query_one("#filter", Input).value
        rows = [t for t in self._view.snapshot.tags if matches(t, text)]
        order = {"good": 0, "uncertain": 1, "bad": 2}
        keys = {
            "device": lambda t: (t.device, t.tag),
            "tag": lambda t: (t.tag, t.device),
            "value": lambda t: (isinstance(t.value, str), str(t.value) if isinstance(
                t.value, str) else float(t.value or 0)),
            "quality": lambda t: (-order.get(t.quality, 3), t.device, t.tag),
            "age": lambda t: (t.ts, t.device, t.tag),
        }  # fmt: skip
        return sorted(rows, key=keys[self.sort_by])

    def _render_rows(self) -> None:
        rows = self.shown_tags()
        table = self.query_one("#tags-table", RowTable)
        table.set_rows([(t.key, tag_cells(t, self._now)) for t in rows])
        total = len(self._view.snapshot.tags) if self._view and self._view.snapshot else 0
        self.query_one("#tags-status", Static).update(
            f"{len(rows)} of {total} tags, sorted by {self.sort_by}  (/ filter, s sort)"
        )
        if rows and self.selected not in {t.key for t in rows}:
            self.selected = table.current_key()
        self._render_detail()

    def _render_detail(self) -> None:
        detail = self.query_one("#tag-detail", Static)
        chart = self.query_one("#tag-plot", TagPlot)
        if self._view is None or self.selected is None:
            detail.update("select a tag to see its recent history")
            chart.set_data((), (), 0)
            return
        points = self._view.history.series(self.selected)
        values = [v for _, v in points]
        chart.set_data(points, tag_limits(self._view, self.selected), int(self._now * 1e6))
        if values:
            detail.update(
                f"{self.selected}: {len(values)} recent values, min "
                f"{format_value(min(values))} max {format_value(max(values))}"
            )
        else:
            detail.update(f"{self.selected}: no numeric history")


def tag_limits(view: AgentView, key: str) -> list[Limit]:
    """The limits of the high and low alarms on the tag `device.tag`."""
    alarms = view.snapshot.alarms if view.snapshot else ()
    return [
        Limit(a.limit, f"{'hi' if a.kind == 'high' else 'lo'} {format_value(a.limit)}")
        for a in alarms if a.limit is not None and f"{a.device}.{a.tag}" == key
    ]  # fmt: skip


class AlarmsPane(Vertical):
    """Alarms by state and severity, and recent transitions; `a` acknowledges, `s` shelves,
    `u` unshelves."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "acknowledge", "Acknowledge"),
        Binding("s", "shelve", "Shelve"),
        Binding("u", "unshelve", "Unshelve"),
    ]

    class Acknowledge(Message):
        """The user asked to acknowledge an alarm."""

        def __init__(self, alarm: str) -> None:
            super().__init__()
            self.alarm = alarm

    class Shelve(Message):
        """The user asked to shelve (`back` False) or unshelve (`back` True) an alarm."""

        def __init__(self, alarm: str, *, back: bool) -> None:
            super().__init__()
            self.alarm = alarm
            self.back = back

    def compose(self) -> ComposeResult:
        yield Static(
            "Alarms  (! = not acknowledged)  a: acknowledge  s: shelve  u: unshelve",
            id="alarms-title",
        )
        yield RowTable(id="alarms-table")
        yield Static(id="alarm-detail")
        yield Static(id="alarms-recent")

    def on_mount(self) -> None:
        table = self.query_one("#alarms-table", RowTable)
        table.add_columns("severity", "state", "alarm", "value", "raised", "message")
        self._alarms: dict[str, Alarm] = {}
        self._now = 0.0

    @on(DataTable.RowHighlighted, "#alarms-table")
    def _highlighted(self) -> None:
        self._render_detail()

    def _render_detail(self) -> None:
        """The highlighted alarm in full: the message the table cuts, its value, its shelf."""
        name = self.query_one("#alarms-table", RowTable).current_key()
        alarm = self._alarms.get(name) if name is not None else None
        detail = Text()
        if alarm is not None:
            detail.append(f"{alarm.name}: ", style="bold")
            detail.append(alarm.message)
            if alarm.value is not None:
                detail.append(f"  (value {format_value(alarm.value)})")
            if alarm.shelved_until is not None:
                left = format_age(alarm.shelved_until / 1e6 - self._now)
                detail.append(f"  shelved by {alarm.shelved_by} for {left} more: "
                              f"{alarm.shelve_reason}", style="dim")  # fmt: skip
        self.query_one("#alarm-detail", Static).update(detail)

    def action_acknowledge(self) -> None:
        """Ask the app to acknowledge the highlighted alarm."""
        name = self.query_one("#alarms-table", RowTable).current_key()
        if name is not None:
            self.post_message(self.Acknowledge(name))

    def action_shelve(self) -> None:
        """Ask the app to shelve the highlighted alarm (it asks for how long and why)."""
        name = self.query_one("#alarms-table", RowTable).current_key()
        if name is not None:
            self.post_message(self.Shelve(name, back=False))

    def action_unshelve(self) -> None:
        """Ask the app to put the highlighted alarm back."""
        name = self.query_one("#alarms-table", RowTable).current_key()
        if name is not None:
            self.post_message(self.Shelve(name, back=True))

    def show(self, view: AgentView, now: float) -> None:
        """Render the latest state."""
        alarms = sorted(view.snapshot.alarms, key=alarm_order) if view.snapshot else []
        table = self.query_one("#alarms-table", RowTable)
        table.set_rows([(a.name, alarm_cells(a, now)) for a in alarms])
        self._alarms, self._now = {a.name: a for a in alarms}, now
        self._render_detail()
        recent = Text("Recent: ", style="bold")
        if not view.recent:
            recent.append("no alarm changes since the TUI started", style="dim")
        for change in list(view.recent)[:4]:
            recent.append(
                f"\n  {format_age(now - change.ts / 1e6)} ago  {change.rule} "
                f"{change.transition} ({change.severity}) {format_value(change.value)}"
            )
        self.query_one("#alarms-recent", Static).update(recent)


def alarm_cells(a: Alarm, now: float) -> tuple[str | Text, ...]:
    """One row of the alarm table."""
    state = a.state + ("" if not a.needs_ack else " !")
    style = "bold red" if a.needs_ack else ("yellow" if a.active else "dim")
    if a.shelved_until is not None:
        state, style = state + " shelved", "dim"
    raised = format_age(now - a.raised_at / 1e6) + " ago" if a.raised_at else "-"
    message = a.message if len(a.message) <= _MESSAGE_CELL else a.message[: _MESSAGE_CELL - 1] + "…"
    return (styled(a.severity, SEVERITY_STYLE), Text(state, style), a.name,
            format_value(a.value), raised, message)  # fmt: skip


class DevicesPane(Vertical):
    """The devices; Enter opens one."""

    def compose(self) -> ComposeResult:
        yield Static("Devices (Enter: details)", id="devices-title")
        yield RowTable(id="devices-table")

    def on_mount(self) -> None:
        table = self.query_one("#devices-table", RowTable)
        table.add_columns("device", "protocol", "state", "readings/s", "errors", "restarts", "sim")

    def show(self, view: AgentView, now: float) -> None:
        """Render the latest state."""
        drivers = view.snapshot.drivers if view.snapshot else ()
        self.query_one("#devices-table", RowTable).set_rows([
            (d.name, (d.name, d.protocol, styled(d.state, STATE_STYLE),
                      format_rate(view.rates.rate(d.name)),
                      str(d.counter("errors") + d.counter("timeouts")), str(d.restarts),
                      "yes" if d.simulated else ""))
            for d in drivers
        ])  # fmt: skip
