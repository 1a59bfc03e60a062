"""Fault injection: what can go wrong with a device, and the book of faults now active.

Faults are pydantic models discriminated by `kind`, so the control API, the CLI and tests all
speak the same JSON. Physical faults (bearing wear, stuck and drifting sensors, restart) act on
the model; wire faults (link drop, slow answers, Modbus exceptions, OPC UA status, malformed and
oversize MQTT payloads) are read by the protocol servers through `FaultBook`.

Named scenarios are sets of faults applied at start (`--scenario NAME`) or at run time.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Table = Literal["coil", "discrete_input", "input_register", "holding_register"]


class LinkState(StrEnum):
    """Whether a server's listener is accepting connections (link faults move it)."""

    LISTENING = "listening"
    DROPPED = "dropped"


class _FaultBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str


class BearingWear(_FaultBase):
    """Pump bearing wears out: vibration and bearing temperature rise slowly."""

    kind: Literal["bearing_wear"] = "bearing_wear"
    minutes_to_failure: float = Field(default=10.0, gt=0)


class StuckSensor(_FaultBase):
    """The tag keeps the value it had when the fault began."""

    kind: Literal["stuck"] = "stuck"
    tag: str


class DriftingSensor(_FaultBase):
    """The tag drifts away from the truth at `rate_per_min` engineering units per minute."""

    kind: Literal["drift"] = "drift"
    tag: str
    rate_per_min: float = 1.0


class LinkDrop(_FaultBase):
    """All connections drop and new ones are refused; `seconds=None` means until cleared."""

    kind: Literal["link_drop"] = "link_drop"
    seconds: float | None = Field(default=None, gt=0)


class SlowAnswers(_FaultBase):
    """Each Modbus answer (and MQTT publish) is held back by `delay_s`."""

    kind: Literal["slow"] = "slow"
    delay_s: float = Field(default=2.0, ge=0)


class ModbusException(_FaultBase):
    """Requests touching `address` (in `table`, or any register table) get exception `code`."""

    kind: Literal["modbus_exception"] = "modbus_exception"
    address: int = Field(ge=0, le=65535)
    table: Table | None = None
    code: Literal[2, 4, 6] = 2


class OpcuaStatus(_FaultBase):
    """The device's OPC UA variables (or one `tag`) report Bad or Uncertain status."""

    kind: Literal["opcua_status"] = "opcua_status"
    tag: str | None = None
    status: Literal["bad", "uncertain"] = "bad"


class MqttMalformed(_FaultBase):
    """The device publishes payloads that are not valid JSON."""

    kind: Literal["mqtt_malformed"] = "mqtt_malformed"


class MqttOversize(_FaultBase):
    """The device publishes JSON payloads of `size` bytes."""

    kind: Literal["mqtt_oversize"] = "mqtt_oversize"
    size: int = Field(default=1_048_576, ge=1024, le=256 * 1024 * 1024)


class MqttHostile(_FaultBase):
    """A `share` of the device's messages are replaced by random hostile payloads (invalid UTF-8,
    truncated or deeply nested JSON, wrong types, NaN, empty or over-long tag names, timestamps
    far ahead), each of which a gateway must dead-letter; `seed` makes the sequence repeatable."""

    kind: Literal["mqtt_hostile"] = "mqtt_hostile"
    share: float = Field(default=0.5, gt=0, le=1)
    seed: int = 0


class OpcuaServerDown(BaseModel):
    """The OPC UA server closes every session and its listener; `seconds=None`: until cleared.

    Plant-wide, because one OPC UA server serves every device; a client sees connection loss
    and must reconnect and re-subscribe when the server listens again on the same port.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["opcua_server_down"] = "opcua_server_down"
    seconds: float | None = Field(default=None, gt=0)


class Restart(_FaultBase):
    """One-shot: the device reboots; links drop for `seconds`, counters start from zero."""

    kind: Literal["restart"] = "restart"
    seconds: float = Field(default=1.0, gt=0)


Fault = Annotated[
    BearingWear
    | StuckSensor
    | DriftingSensor
    | LinkDrop
    | SlowAnswers
    | ModbusException
    | OpcuaStatus
    | MqttMalformed
    | MqttOversize
    | MqttHostile
    | OpcuaServerDown
    | Restart,
    Field(discriminator="kind"),
]
FAULT_ADAPTER: Final[TypeAdapter[Fault]] = TypeAdapter(Fault)


@dataclass
class ActiveFault:
    """A fault in force: its id, the fault, and when it began (sim time and monotonic)."""

    id: int
    fault: Fault
    sim_start: float
    wall_start: float
    captured: float | int | bool | str | None = None  # the stuck value

    def expired(self, now: float) -> bool:
        """True once a timed fault (link drop, restart) has run its course."""
        seconds = getattr(self.fault, "seconds", None)
        return seconds is not None and now - self.wall_start >= seconds


class FaultBook:
    """The faults now in force, indexed for the questions the servers ask on every request."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._active: dict[int, ActiveFault] = {}
        self.generation = 0  # bumps on every change, so servers can cache per-generation views

    def add(self, fault: Fault, sim_time: float) -> ActiveFault:
        """Put `fault` in force; returns its record with the id to clear it by."""
        record = ActiveFault(next(self._ids), fault, sim_time, time.monotonic())
        self._active[record.id] = record
        self.generation += 1
        return record

    def clear(self, fault_id: int | None = None) -> None:
        """End one fault, or every fault when `fault_id` is None."""
        if fault_id is None:
            self._active.clear()
        else:
            self._active.pop(fault_id, None)
        self.generation += 1

    def active(self) -> list[ActiveFault]:
        """Faults in force; expired timed faults are removed first."""
        now = time.monotonic()
        expired = [k for k, rec in self._active.items() if rec.expired(now)]
        for key in expired:
            del self._active[key]
        if expired:
            self.generation += 1
        return list(self._active.values())

    def for_device(self, device: str) -> list[ActiveFault]:
        """Faults in force on `device`."""
        return [rec for rec in self.active() if getattr(rec.fault, "device", None) == device]

    def opcua_server_down(self) -> bool:
        """True while the OPC UA server is to be unreachable."""
        return any(isinstance(rec.fault, OpcuaServerDown) for rec in self.active())

    def link_down(self, device: str) -> bool:
        """True while the device's links are dropped (link drop or restart in progress)."""
        return any(isinstance(r.fault, LinkDrop | Restart) for r in self.for_device(device))

    def delay_s(self, device: str) -> float:
        """How long each answer of `device` is held back."""
        delays = [
            r.fault.delay_s for r in self.for_device(device) if isinstance(r.fault, SlowAnswers)
        ]
        return max(delays, default=0.0)

    def modbus_exception(self, device: str, table: str, address: int, count: int) -> int | None:
        """Exception code for a request on `table` [address, address+count), if a fault hits it."""
        for rec in self.for_device(device):
            fault = rec.fault
            if (
                isinstance(fault, ModbusException)
                and fault.table in (None, table)
                and address <= fault.address < address + count
            ):
                return fault.code
        return None


SCENARIOS: Final[dict[str, tuple[str, ...]]] = {
    "normal": (),
    "bearing_wear": ('{"kind": "bearing_wear", "device": "pump1", "minutes_to_failure": 10}',),
    "stuck_sensor": ('{"kind": "stuck", "device": "tank1", "tag": "level"}',),
    "drift": ('{"kind": "drift", "device": "boiler1", "tag": "temperature", "rate_per_min": 2}',),
    "link_flap": ('{"kind": "link_drop", "device": "pump2", "seconds": 5}',),
    "slow": ('{"kind": "slow", "device": "pump2", "delay_s": 3}',),
    "modbus_exceptions": (
        '{"kind": "modbus_exception", "device": "pump1", "address": 0, "code": 2}',
        '{"kind": "modbus_exception", "device": "tank1", "address": 2, "code": 4}',
        '{"kind": "modbus_exception", "device": "boiler1", "address": 0, "code": 6}',
    ),
    "opcua_bad": ('{"kind": "opcua_status", "device": "pump1", "status": "bad"}',),
    "opcua_flap": ('{"kind": "opcua_server_down", "seconds": 5}',),
    "mqtt_malformed": (
        '{"kind": "mqtt_malformed", "device": "pump1"}',
        '{"kind": "mqtt_oversize", "device": "tank1", "size": 2000000}',
    ),
    "restart": ('{"kind": "restart", "device": "pump1", "seconds": 2}',),
    "mqtt_hostile": (
        '{"kind": "mqtt_hostile", "device": "pump1", "share": 0.5, "seed": 1}',
        '{"kind": "mqtt_hostile", "device": "tank1", "share": 0.3, "seed": 2}',
        '{"kind": "link_drop", "device": "pump2", "seconds": 5}',
    ),
}


def scenario_faults(name: str) -> list[Fault]:
    """The faults of the named scenario; raises KeyError naming the known scenarios."""
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}")
    return [FAULT_ADAPTER.validate_json(text) for text in SCENARIOS[name]]
