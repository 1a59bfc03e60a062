"""The tagway terminal UI: a Textual app over the agent's local API.

Two background loops feed one `AgentView`: a poll of every read endpoint (once a second) and the
live stream (readings into the per-tag histories, alarm changes into the recent list). Neither
ever stops: when the agent does not answer, the screens say so and the loops keep trying, and
the first good answer brings everything back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import ClassVar

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane
from textual.worker import WorkerCancelled

from cli.tui.client import AgentClient, AgentClientError, AgentUnavailable
from cli.tui.model import AgentView, StreamEvent
from cli.tui.panes import AlarmsPane, DevicesPane, OverviewPane, TagsPane
from cli.tui.screens import (
    DeviceScreen,
    HelpScreen,
    NoticeScreen,
    ShelveScreen,
    StatusBar,
    WriteScreen,
)
from cli.tui.table import RowTable

TABS = ("overview", "tags", "alarms", "devices")

CSS = """
TabbedContent { height: 1fr; }
TabPane { padding: 0; }
#filter { height: 1; border: none; padding: 0 1; background: $boost; }
#filter:focus { background: $accent 30%; }
#tags-status, #alarms-title, #devices-title, #tag-detail { height: 1; color: $text-muted; }
#tags-table, #devices-table, #device-tags { height: 1fr; }
#alarms-table { height: 1fr; min-height: 4; }
#alarms-recent { height: auto; max-height: 5; }
#tag-plot { height: 4; }
#alarm-detail { height: auto; max-height: 2; }
RowTable { scrollbar-size-horizontal: 0; scrollbar-size-vertical: 1; }
#device-info { height: auto; }
"""


class MainScreen(Screen[None]):
    """The status bar, the four tabs, and the footer with the keys."""

    def compose(self) -> ComposeResult:
        yield StatusBar()
        with TabbedContent(initial="overview"):
            with TabPane("1 Overview", id="overview"):
                yield OverviewPane(id="overview-pane")
            with TabPane("2 Tags", id="tags"):
                yield TagsPane(id="tags-pane")
            with TabPane("3 Alarms", id="alarms"):
                yield AlarmsPane(id="alarms-pane")
            with TabPane("4 Devices", id="devices"):
                yield DevicesPane(id="devices-pane")
        yield Footer()

    def show(self, view: AgentView, now: float) -> None:
        """Render every tab (hidden ones too: switching tabs then shows fresh data at once)."""
        self.query_one(StatusBar).show(view, now)
        self.query_one(OverviewPane).show(view, now)
        self.query_one(TagsPane).show(view, now)
        self.query_one(AlarmsPane).show(view, now)
        self.query_one(DevicesPane).show(view, now)

    @on(TabbedContent.TabActivated)
    def _focus_tab(self, event: TabbedContent.TabActivated) -> None:
        for table in event.pane.query(RowTable):
            table.focus()
            break

    @on(RowTable.RowSelected, "#devices-table")
    async def _open_device(self, event: RowTable.RowSelected) -> None:
        if event.row_key.value is not None:
            await self.app.push_screen(DeviceScreen(event.row_key.value))
            await self.app.run_action("poll_now")


class TagwayApp(App[None]):
    """The terminal UI.

    Args:
        client: the local API client; the app closes it when it exits.
        poll_interval: seconds between polls while the agent answers.
        retry_interval: seconds between attempts while it does not.
        clock: wall-clock seconds (injected so a recorded state renders the same screen).
        monotonic: monotonic seconds for rates (injected for the same reason).
        notice: a text shown over the overview at start (the demo's guide), closed with Escape.
    """

    TITLE = "tagway"
    CSS = CSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("1", "tab('overview')", "Overview", show=False),
        Binding("2", "tab('tags')", "Tags", show=False),
        Binding("3", "tab('alarms')", "Alarms", show=False),
        Binding("4", "tab('devices')", "Devices", show=False),
        Binding("r", "poll_now", "Refresh", show=False),
    ]

    def __init__(
        self,
        client: AgentClient,
        *,
        poll_interval: float = 1.0,
        retry_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        notice: str | None = None,
    ) -> None:
        super().__init__()
        self.notice = notice
        self.client = client
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self.clock = clock
        self.monotonic = monotonic
        self.view = AgentView(where=client.where)
        self._poke = asyncio.Event()

    async def on_mount(self) -> None:
        await self.push_screen(MainScreen())
        if self.notice:
            await self.push_screen(NoticeScreen(self.notice))
        self.run_worker(self._poll(), name="tui-poll", group="agent")
        self.run_worker(self._follow(), name="tui-stream", group="agent")

    async def on_unmount(self) -> None:
        # Stop the loops first: a poll still running would open a new connection after the
        # client closed, and nobody would close that one.
        for worker in self.workers.cancel_group(self, "agent"):
            with contextlib.suppress(WorkerCancelled):
                await worker.wait()
        await self.client.aclose()

    def action_help(self) -> None:
        """Show the keys."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_tab(self, tab: str) -> None:
        """Go to a tab of the main screen (from any screen)."""
        while len(self.screen_stack) > 2 and not isinstance(self.screen, MainScreen):
            await self.pop_screen()
        if isinstance(self.screen, MainScreen):
            self.screen.query_one(TabbedContent).active = tab

    def action_poll_now(self) -> None:
        """Poll now."""
        self._poke.set()

    @on(AlarmsPane.Acknowledge)
    async def _acknowledge(self, message: AlarmsPane.Acknowledge) -> None:
        try:
            done = await self.client.acknowledge(message.alarm)
        except AgentClientError as exc:
            self.notify(f"could not acknowledge {message.alarm}: {exc}", severity="error")
            return
        self.notify(f"{message.alarm} acknowledged" if done else
                    f"{message.alarm}: nothing to acknowledge")  # fmt: skip
        self._poke.set()

    @on(TagsPane.Write)
    async def _write(self, message: TagsPane.Write) -> None:
        tag = message.tag

        async def chosen(value: float | int | bool | str | None) -> None:
            if value is None:
                return
            try:
                result = await self.client.write(tag.device, tag.tag, value)
            except AgentClientError as exc:
                self.notify(f"{tag.key} not written: {exc}", severity="error", timeout=10)
                return
            self.notify(f"{tag.key} = {value!r} (written, read back {result.read_back!r})")
            self._poke.set()

        await self.push_screen(WriteScreen(tag.key, tag.value), chosen)

    @on(AlarmsPane.Shelve)
    async def _shelve(self, message: AlarmsPane.Shelve) -> None:
        alarm = message.alarm
        if message.back:
            try:
                done = await self.client.unshelve(alarm, by=_operator())
            except AgentClientError as exc:
                self.notify(f"could not unshelve {alarm}: {exc}", severity="error")
                return
            self.notify(f"{alarm} is back" if done else f"{alarm} was not shelved")
            self._poke.set()
            return

        async def chosen(answer: tuple[int, str] | None) -> None:
            if answer is None:
                return
            seconds, reason = answer
            try:
                await self.client.shelve(alarm, duration_s=seconds, reason=reason,
                                         by=_operator())  # fmt: skip
            except AgentClientError as exc:
                self.notify(f"could not shelve {alarm}: {exc}", severity="error")
                return
            self.notify(f"{alarm} shelved for {seconds // 60} min")
            self._poke.set()

        await self.push_screen(ShelveScreen(alarm), chosen)

    async def _poll(self) -> None:
        while True:
            self._poke.clear()
            try:
                snapshot = await self.client.snapshot()
            except AgentUnavailable as exc:
                self.view.lost(str(exc), running=False)
            except AgentClientError as exc:
                self.view.lost(str(exc), running=True)
            else:
                self.view.apply(snapshot, wall=self.clock(), mono=self.monotonic())
            self.view.where = self.client.where
            self.render_view()
            wait = self.poll_interval if self.view.connection == "connected" else (
                self.retry_interval)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), wait)

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(AgentClientError):
                await self.client.follow(self._on_event)
            await asyncio.sleep(self.retry_interval)

    def _on_event(self, event: StreamEvent) -> None:
        self.view.apply_event(event)

    def render_view(self) -> None:
        """Render the view on every screen that shows it."""
        if not self.is_running:  # shutting down: the screens are being taken apart
            return
        now = self.clock()
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen | DeviceScreen) and screen.is_mounted:
                screen.show(self.view, now)


def _operator() -> str:
    """Who is at the keyboard, for the shelving audit."""
    import getpass  # noqa: PLC0415 - only when shelving

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "tui"
