"""Typed, frozen configuration of one Modbus device: link settings, poll groups and tags.

The tag fields are the shared register-map vocabulary (firmware_sim publishes maps with the same
names): `name`, `table`, `address` (0-based), `type`, `bit`, `length`, `order`, `scale`, `offset`,
`unit`, `writable`, plus `poll_group`. Every validator names the field it refuses, so a config
error reads like "tag 'flow': field 'bit' ...".
"""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Table = Literal["coil", "discrete_input", "input_register", "holding_register"]
TagType = Literal[
    "bool",
    "bit",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Transport = Literal["tcp", "rtu", "rtu_over_tcp"]

BIT_TABLES: Final = frozenset({"coil", "discrete_input"})
REGISTER_TABLES: Final = frozenset({"input_register", "holding_register"})
WRITABLE_TABLES: Final = frozenset({"coil", "holding_register"})

MAX_REGISTERS_PER_READ: Final = 125  # Modbus spec, FC3/FC4
MAX_BITS_PER_READ: Final = 2000  # Modbus spec, FC1/FC2
MAX_ADDRESS: Final = 65535

# Registers per value; `string` takes its `length`, `bool` one bit.
REGISTER_WIDTH: Final[dict[str, int]] = {
    "bit": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}

DEFAULT_POLL_GROUP: Final = "default"


class ModbusTag(BaseModel):
    """One value on the device, in the shared register-map vocabulary.

    `scale` and `offset` give the engineering value: raw * scale + offset. With the defaults
    (1 and 0) an integer stays an integer.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    table: Table
    address: int = Field(ge=0, le=MAX_ADDRESS)
    type: TagType
    bit: int | None = None
    length: int | None = None
    order: WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    writable: bool = False
    poll_group: str = DEFAULT_POLL_GROUP

    @property
    def width(self) -> int:
        """Registers (register tables) or bits (coils, discrete inputs) the value occupies."""
        if self.type == "bool":
            return 1
        if self.type == "string":
            return self.length or 0
        return REGISTER_WIDTH[self.type]

    @property
    def end(self) -> int:
        """One past the last address the value occupies."""
        return self.address + self.width

    @property
    def scaled(self) -> bool:
        """True when scale or offset change the raw value."""
        return self.scale != 1.0 or self.offset != 0.0

    @model_validator(mode="after")
    def _check_fields(self) -> Self:
        where = f"tag {self.name!r}"
        is_bit_table = self.table in BIT_TABLES
        if (self.type == "bool") != is_bit_table:
            raise ValueError(
                f"{where}: field 'type' is {self.type!r} on table {self.table!r}; "
                "'bool' is the only type on coil/discrete_input and is not allowed elsewhere"
            )
        if self.type == "bit":
            if self.bit is None or not 0 <= self.bit <= 15:
                raise ValueError(f"{where}: field 'bit' must be 0..15 for type 'bit'")
        elif self.bit is not None:
            raise ValueError(f"{where}: field 'bit' is only allowed with type 'bit'")
        if self.type == "string":
            if self.length is None or not 1 <= self.length <= MAX_REGISTERS_PER_READ:
                raise ValueError(
                    f"{where}: field 'length' (registers) must be 1..{MAX_REGISTERS_PER_READ} "
                    "for type 'string'"
                )
        elif self.length is not None:
            raise ValueError(f"{where}: field 'length' is only allowed with type 'string'")
        if self.end - 1 > MAX_ADDRESS:
            raise ValueError(
                f"{where}: field 'address' {self.address} + width {self.width} "
                f"runs past {MAX_ADDRESS}"
            )
        if self.scaled and self.type in {"bool", "bit", "string"}:
            raise ValueError(f"{where}: fields 'scale'/'offset' do not apply to {self.type!r}")
        if self.scale == 0:
            raise ValueError(f"{where}: field 'scale' must not be 0")
        if self.writable and self.table not in WRITABLE_TABLES:
            raise ValueError(f"{where}: field 'writable' is true on read-only table {self.table!r}")
        return self


class PollGroup(BaseModel):
    """Tags read together on one schedule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    interval: float = Field(gt=0, description="seconds between cycle starts")


class ModbusDeviceConfig(BaseModel):
    """One Modbus device: how to reach it, how to poll it, and its tags.

    `max_register_gap` / `max_bit_gap`: the largest run of unconfigured addresses a read may
    span to join two tags into one request (reading a few spare registers is cheaper than a
    second round trip). `use_write_multiple` sends FC15/FC16 even for one coil/register, for
    devices that do not implement FC5/FC6.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    device_type: str | None = None
    transport: Transport = "tcp"
    host: str | None = None
    port: int = Field(default=502, ge=1, le=65535)
    serial_port: str | None = None
    baudrate: int = Field(default=19200, gt=0)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout: float = Field(default=1.0, gt=0)
    retries: int = Field(default=1, ge=0, le=10)
    inter_request_delay: float = Field(default=0.0, ge=0)
    max_register_gap: int = Field(default=16, ge=0, le=MAX_REGISTERS_PER_READ - 2)
    max_bit_gap: int = Field(default=256, ge=0, le=MAX_BITS_PER_READ - 2)
    max_registers_per_read: int = Field(default=MAX_REGISTERS_PER_READ, ge=1, le=125)
    max_bits_per_read: int = Field(default=MAX_BITS_PER_READ, ge=1, le=2000)
    use_write_multiple: bool = False
    reconnect_base: float = Field(default=0.5, gt=0)
    reconnect_cap: float = Field(default=10.0, gt=0)
    poll_groups: tuple[PollGroup, ...] = (PollGroup(name=DEFAULT_POLL_GROUP, interval=1.0),)
    tags: tuple[ModbusTag, ...] = Field(min_length=1)
    simulated: bool = False

    @model_validator(mode="after")
    def _check_device(self) -> Self:
        where = f"device {self.name!r}"
        if self.transport in {"tcp", "rtu_over_tcp"} and not self.host:
            raise ValueError(f"{where}: field 'host' is required for transport {self.transport!r}")
        if self.transport == "rtu" and not self.serial_port:
            raise ValueError(f"{where}: field 'serial_port' is required for transport 'rtu'")
        if self.reconnect_base > self.reconnect_cap:
            raise ValueError(f"{where}: field 'reconnect_base' exceeds 'reconnect_cap'")
        _unique(where, "poll_groups", [group.name for group in self.poll_groups])
        _unique(where, "tags", [tag.name for tag in self.tags])
        groups = {group.name for group in self.poll_groups}
        for tag in self.tags:
            if tag.poll_group not in groups:
                raise ValueError(
                    f"{where}: tag {tag.name!r} field 'poll_group' names unknown group "
                    f"{tag.poll_group!r}; known: {sorted(groups)}"
                )
            limit = (
                self.max_bits_per_read if tag.table in BIT_TABLES else self.max_registers_per_read
            )
            if tag.width > limit:
                raise ValueError(
                    f"{where}: tag {tag.name!r} field 'length' ({tag.width}) exceeds the "
                    f"device's max per read ({limit})"
                )
        return self


def _unique(where: str, field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: field {field!r} has duplicate name {name!r}")
        seen.add(name)
