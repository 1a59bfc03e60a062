"""A small time plot of one tag for the terminal: bars over a time axis, with alarm limits.

Three rows of eighth-blocks draw the values, resampled to the width (the newest at the right);
the left margin carries the scale, a limit of an alarm on the tag is drawn as a dashed line at its
height (the scale stretches to include it), and the bottom line is the time axis, in seconds
before now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

from cli.tui.model import format_value

_BLOCKS = " ▁▂▃▄▅▆▇█"
_ROWS = 3
_MARGIN = 9  # the scale labels


@dataclass(frozen=True, slots=True)
class Limit:
    """A horizontal line: an alarm limit on the plotted tag."""

    value: float
    label: str


def plot(
    points: Sequence[tuple[int, float]], limits: Sequence[Limit], *, width: int, now_us: int
) -> Text:
    """The plot as text, `_ROWS` + 1 lines, `width` columns (points are (µs, value))."""
    width = max(width, _MARGIN + 10)
    columns = width - _MARGIN
    if not points:
        return Text("no numeric history yet", style="dim")
    values = [v for _, v in points]
    low = min([*values, *(lim.value for lim in limits)])
    high = max([*values, *(lim.value for lim in limits)])
    if high == low:
        high, low = high + 1.0, low - 1.0
    start = points[0][0]
    span = max(now_us - start, 1)
    # Each column shows the newest value that falls into its slice of time.
    cells: list[float | None] = [None] * columns
    for ts, value in points:
        column = min(columns - 1, max(0, int((ts - start) * columns / span)))
        cells[column] = value
    held: float | None = None
    for column, cell in enumerate(cells):  # a value holds until the next one (a step plot)
        held = cell if cell is not None else held
        cells[column] = held
    levels = _ROWS * 8
    heights = [None if v is None else round((v - low) / (high - low) * levels) for v in cells]
    limit_rows = {
        min(_ROWS - 1, int((lim.value - low) / (high - low) * _ROWS)): lim for lim in limits
    }
    text = Text()
    for row in range(_ROWS - 1, -1, -1):
        label = format_value(high) if row == _ROWS - 1 else (
            format_value(low) if row == 0 else "")  # fmt: skip
        limit = limit_rows.get(row)
        if limit is not None:
            label = limit.label
        text.append(f"{label[: _MARGIN - 1]:>{_MARGIN - 1}} ", style="red" if limit else "dim")
        for h in heights:
            if h is None:
                text.append("┄" if limit else " ", style="red")
                continue
            fill = min(8, max(0, h - row * 8))
            if fill == 0 and limit is not None:
                text.append("┄", style="red")
            else:
                text.append(_BLOCKS[fill], style="cyan")
        text.append("\n")
    seconds = span / 1e6
    axis = f"-{seconds:.0f}s".ljust(columns // 2) + f"-{seconds / 2:.0f}s"
    text.append(" " * _MARGIN + axis.ljust(columns - 3) + "now", style="dim")
    return text


class TagPlot(Widget):
    """The plot of the selected tag (see `plot`)."""

    DEFAULT_CSS = "TagPlot { height: 4; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._points: Sequence[tuple[int, float]] = ()
        self._limits: Sequence[Limit] = ()
        self._now_us = 0

    def set_data(
        self, points: Sequence[tuple[int, float]], limits: Sequence[Limit], now_us: int
    ) -> None:
        """Plot these points and limits; `now_us` is the right edge of the time axis."""
        self._points, self._limits, self._now_us = points, limits, now_us
        self.refresh()

    def render(self) -> Text:
        """Draw at the widget's width."""
        return plot(self._points, self._limits, width=self.size.width, now_us=self._now_us)
