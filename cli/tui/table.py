"""A DataTable that is refreshed from keyed rows once a second without losing the user's place."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

Cell = str | Text
Row = tuple[str, Sequence[Cell]]


class RowTable(DataTable[Cell]):
    """Rows by key, row cursor, zebra stripes; `set_rows` keeps the highlighted row."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._keys: list[str] = []

    def current_key(self) -> str | None:
        """The key of the highlighted row, if any."""
        if not self._keys or not 0 <= self.cursor_row < len(self._keys):
            return None
        return self._keys[self.cursor_row]

    def set_rows(self, rows: Sequence[Row]) -> None:
        """Show exactly these rows in this order.

        Same keys in the same order: cells are updated in place (cheap, no flicker, the cursor
        stays). Otherwise the table is rebuilt and the cursor follows the row it was on.
        """
        keys = [key for key, _ in rows]
        if keys == self._keys:
            columns = list(self.columns)
            for key, cells in rows:
                for column, cell in zip(columns, cells, strict=True):
                    if self.get_cell(key, column) != cell:
                        self.update_cell(key, column, cell, update_width=True)
            return
        current = self.current_key()
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self._keys = keys
        if current in keys:
            self.move_cursor(row=keys.index(current), animate=False)
