"""The register image of one device: the model's values encoded into the four Modbus tables.

Encoding is lazy: a table is re-encoded only when a request touches it and the model has moved
on since (the model's `generation` changed), so serving cost follows what clients ask for, not
how many tags exist. Writes are decoded back into engineering values for the model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Final

from firmware_sim.errors import EncodingError
from firmware_sim.model import Value
from firmware_sim.register_map import MapTag, RegisterMap, Table
from firmware_sim.registers import decode, encode

TABLES: Final[tuple[Table, ...]] = ("coil", "discrete_input", "holding_register", "input_register")
TABLE_OF_FUNCTION: Final[dict[int, Table]] = {
    1: "coil", 5: "coil", 15: "coil",
    2: "discrete_input",
    3: "holding_register", 6: "holding_register", 16: "holding_register",
    22: "holding_register", 23: "holding_register",
    4: "input_register",
}  # fmt: skip
BIT_TABLES: Final = ("coil", "discrete_input")


def _table_size(tags: list[MapTag], bits: bool) -> int:
    end = max((t.address + t.registers for t in tags), default=1)
    return -(-end // 16) * 16 if bits else end


class RegisterImage:
    """Encodes one device's values into its tables and decodes writes back."""

    def __init__(self, register_map: RegisterMap) -> None:
        """Lay out the tables of `register_map`."""
        self.map = register_map
        self.tags: dict[Table, list[MapTag]] = defaultdict(list)
        for tag in register_map.tags:
            self.tags[tag.table].append(tag)
        self.sizes: dict[Table, int] = {
            table: _table_size(self.tags[table], table in BIT_TABLES) for table in TABLES
        }
        self._generation: dict[Table, int] = dict.fromkeys(TABLES, -1)

    def initial(self, table: Table) -> list[int] | list[bool]:
        """Zeroed contents of `table`: bits for coils/discrete inputs, registers otherwise."""
        if table in BIT_TABLES:
            return [False] * self.sizes[table]
        return [0] * self.sizes[table]

    def refresh(
        self, table: Table, generation: int, values: Callable[[], dict[str, Value]]
    ) -> list[int] | None:
        """New contents of `table` if the model moved since the last refresh, else None.

        For bit tables the result is packed 16 bits per register, bit 0 first (the layout of
        the pymodbus datastore).
        """
        if self._generation[table] == generation:
            return None
        self._generation[table] = generation
        current = values()
        if table in BIT_TABLES:
            return self._pack_bits(table, current)
        registers = [0] * self.sizes[table]
        for tag in self.tags[table]:
            value = current[tag.name]
            if tag.type == "bit":
                if value:
                    registers[tag.address] |= 1 << (tag.bit or 0)
                continue
            words = encode(
                value,
                tag.type,  # type: ignore[arg-type]  # bool tags live in bit tables only
                order=tag.order,
                scale=tag.scale,
                offset=tag.offset,
                length=tag.length or 1,
            )
            registers[tag.address : tag.address + len(words)] = words
        return registers

    def _pack_bits(self, table: Table, current: dict[str, Value]) -> list[int]:
        registers = [0] * (self.sizes[table] // 16)
        for tag in self.tags[table]:
            if current[tag.name]:
                registers[tag.address // 16] |= 1 << (tag.address % 16)
        return registers

    def decode_write(
        self, table: Table, address: int, written: list[int] | list[bool], current: list[int]
    ) -> dict[str, Value] | None:
        """Engineering values a write sets, or None if it touches a tag that is not writable.

        `current` holds the table's registers before the write, so a write that covers part of
        a multi-register tag decodes with the rest of the tag's registers as they were.
        """
        end = address + len(written)
        touched = [
            t for t in self.tags[table] if t.address < end and address < t.address + t.registers
        ]
        if not touched or not all(t.writable for t in touched):
            return None
        if table in BIT_TABLES:
            return {t.name: bool(written[t.address - address]) for t in touched}
        image = list(current)
        image[address:end] = [int(w) for w in written]
        out: dict[str, Value] = {}
        for tag in touched:
            words = image[tag.address : tag.address + tag.registers]
            try:
                out[tag.name] = decode(
                    words,
                    tag.type,  # type: ignore[arg-type]  # bit/bool handled above
                    order=tag.order,
                    scale=tag.scale,
                    offset=tag.offset,
                )
            except EncodingError:
                return None
        return out
