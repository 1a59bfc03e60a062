"""Register maps: how each device type lays its tags out in Modbus tables.

One YAML file per device type ships in `firmware_sim/maps/` as package data. Its fields are the
vocabulary tagway's Modbus driver uses for tag config (`name`, `table`, `address`, `type`, `bit`,
`length`, `order`, `scale`, `offset`, `unit`, `writable`), plus device-level `device_type`,
`unit_id` and `simulated: true`, so a gateway config can be generated from a map as it stands.

The scale knob adds `aux_NNNN` float32 tags in input registers from `AUX_BASE_ADDRESS` on,
cycling through the four word orders.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from firmware_sim.errors import SimConfigError
from firmware_sim.registers import RegisterType, WordOrder, width

Table = Literal["coil", "discrete_input", "input_register", "holding_register"]
TagType = Literal["bool", "bit"] | RegisterType

DEVICE_TYPES: Final = ("pump", "tank", "boiler")
AUX_BASE_ADDRESS: Final = 1000
_AUX_ORDERS: Final[tuple[WordOrder, ...]] = ("ABCD", "CDAB", "BADC", "DCBA")
_BIT_TABLES: Final = ("coil", "discrete_input")


class MapTag(BaseModel):
    """One tag of a register map, in tagway's Modbus tag vocabulary."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    table: Table
    address: int = Field(ge=0, le=65535)
    type: TagType
    bit: int | None = Field(default=None, ge=0, le=15)
    length: int | None = Field(default=None, ge=1, le=123)
    order: WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    writable: bool = False

    @model_validator(mode="after")
    def _check_shape(self) -> MapTag:
        if (self.table in _BIT_TABLES) != (self.type == "bool"):
            raise ValueError(f"{self.name}: type bool belongs to coils/discrete inputs only")
        if (self.type == "bit") != (self.bit is not None):
            raise ValueError(f"{self.name}: `bit` is required for type bit, and only for it")
        if (self.type == "string") != (self.length is not None):
            raise ValueError(f"{self.name}: `length` is required for type string, and only for it")
        return self

    @property
    def registers(self) -> int:
        """How many registers (or bits, for bool) the tag occupies."""
        if self.type in ("bool", "bit"):
            return 1
        return width(self.type, self.length or 1)  # type: ignore[arg-type]  # narrowed above


class RegisterMap(BaseModel):
    """The register map of one device type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_type: str
    unit_id: int = Field(default=1, ge=1, le=247)
    simulated: Literal[True] = True
    tags: tuple[MapTag, ...]

    @model_validator(mode="after")
    def _check_unique(self) -> RegisterMap:
        names = [t.name for t in self.tags]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.device_type}: tag names repeat")
        return self

    def with_aux_tags(self, count: int) -> RegisterMap:
        """This map plus `count` generated float32 tags (the scale knob)."""
        aux = tuple(
            MapTag(
                name=aux_tag_name(i),
                table="input_register",
                address=AUX_BASE_ADDRESS + 2 * i,
                type="float32",
                order=_AUX_ORDERS[i % 4],
            )
            for i in range(count)
        )
        return self.model_copy(update={"tags": self.tags + aux})


def aux_tag_name(index: int) -> str:
    """Name of the generated tag number `index`."""
    return f"aux_{index:04d}"


@cache
def load_map(device_type: str) -> RegisterMap:
    """The register map shipped for `device_type` (pump, tank, boiler)."""
    if device_type not in DEVICE_TYPES:
        raise SimConfigError(f"no register map for device type {device_type!r}")
    text = resources.files("firmware_sim.maps").joinpath(f"{device_type}.yaml").read_text()
    try:
        return RegisterMap.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        raise SimConfigError(f"maps/{device_type}.yaml: {exc}") from exc
