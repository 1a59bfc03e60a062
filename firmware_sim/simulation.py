"""`PlantModel`: the devices, their register maps, simulated time and the faults in force.

This is the single source of truth every protocol server reads from: `reported(device)` gives
the values as the device's sensors would report them (stuck and drifting sensors applied), and
`write(device, tag, value)` applies setpoints from any protocol.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from firmware_sim.errors import SimConfigError, UnknownDevice
from firmware_sim.faults import (
    ActiveFault,
    BearingWear,
    DriftingSensor,
    Fault,
    FaultBook,
    OpcuaServerDown,
    Restart,
    StuckSensor,
)
from firmware_sim.model import DEVICE_CLASSES, AuxSignals, SimulatedDevice, Value, layout
from firmware_sim.register_map import RegisterMap, aux_tag_name, load_map

MAX_DEVICES: Final = 247  # one Modbus unit id each would still fit on a serial line


@dataclass(frozen=True)
class TagInfo:
    """What a tag is, independent of protocol: unit, engineering range, value kind."""

    name: str
    unit: str | None
    low: float | None
    high: float | None
    kind: type  # float, int, bool or str
    writable: bool
    single: bool = False  # a float the device holds in 32 bits (a PLC REAL, a float32 register)


class PlantModel:
    """Every device of the plant, stepped together in simulated time."""

    def __init__(self, *, devices: int, tags_per_device: int | None = None, seed: int = 1) -> None:
        """Build the plant.

        Args:
            devices: how many devices, laid out in groups of (pump, pump, tank, boiler).
            tags_per_device: pad every device with generated float32 tags up to this many
                (the scale knob); None serves the register maps' own tags only.
            seed: the seed every device's noise generator derives from.
        """
        if not 1 <= devices <= MAX_DEVICES:
            raise SimConfigError(f"devices must be 1..{MAX_DEVICES}, got {devices}")
        self.sim_time = 0.0
        self.generation = 0
        self.faults = FaultBook()
        self.devices: dict[str, SimulatedDevice] = {}
        self.maps: dict[str, RegisterMap] = {}
        for index, (name, kind) in enumerate(layout(devices), start=1):
            base = load_map(kind)
            aux_tags = max(0, (tags_per_device or 0) - len(base.tags))
            device = DEVICE_CLASSES[kind](
                name=name,
                index=index,
                rng=random.Random(seed * 100_003 + index),  # noqa: S311 - simulation, not crypto
                aux=AuxSignals.create(aux_tags, seed * 100_003 + index),
            )
            self.devices[name] = device
            self.maps[name] = base.with_aux_tags(aux_tags)
        self._tag_info = {name: self._build_tag_info(name) for name in self.devices}
        self._aux_names = {
            name: [aux_tag_name(i) for i in range(len(device.aux.values))]
            for name, device in self.devices.items()
        }

    def device(self, name: str) -> SimulatedDevice:
        """The device called `name`."""
        try:
            return self.devices[name]
        except KeyError:
            raise UnknownDevice(name) from None

    def tag_info(self, device: str) -> dict[str, TagInfo]:
        """Unit, range and kind of every tag of `device`, in register-map order."""
        self.device(device)
        return self._tag_info[device]

    def _build_tag_info(self, name: str) -> dict[str, TagInfo]:
        device = self.devices[name]
        info: dict[str, TagInfo] = {}
        first_aux = len(self.maps[name].tags) - len(device.aux.values)
        for index, tag in enumerate(self.maps[name].tags):
            low: float | None
            high: float | None
            if index >= first_aux:
                low, high = device.aux.range_of(index - first_aux)
                kind: type = float
            else:
                low, high = device.ranges.get(tag.name, (None, None))
                kind = type(device.values[tag.name])
            single = kind is float and tag.type == "float32"
            info[tag.name] = TagInfo(tag.name, tag.unit, low, high, kind, tag.writable, single)
        return info

    def step(self, dt: float) -> None:
        """Advance every device by `dt` seconds of simulated time."""
        self.sim_time += dt
        active = self.faults.active()
        for rec in active:
            if isinstance(rec.fault, BearingWear):
                device = self.devices[rec.fault.device]
                device.wear = min(1.0, device.wear + dt / (rec.fault.minutes_to_failure * 60.0))
        group_flow = 0.0
        for device in self.devices.values():
            device.step(dt, self.sim_time, group_flow)
            if device.device_type == "pump":
                group_flow += float(device.values["flow"])
            elif device.device_type == "tank":
                group_flow = 0.0
        self.generation += 1

    def reported(self, device: str) -> dict[str, Value]:
        """Values of `device` as its sensors report them (faulty sensors included)."""
        dev = self.device(device)
        values = dict(dev.values)
        values.update(zip(self._aux_names[device], dev.aux.values.tolist(), strict=True))
        for rec in self.faults.for_device(device):
            fault = rec.fault
            if isinstance(fault, StuckSensor):
                values[fault.tag] = rec.captured if rec.captured is not None else values[fault.tag]
            elif isinstance(fault, DriftingSensor):
                minutes = (self.sim_time - rec.sim_start) / 60.0
                values[fault.tag] = float(values[fault.tag]) + fault.rate_per_min * minutes
        return values

    def write(self, device: str, tag: str, value: Value) -> None:
        """Apply a setpoint write from any protocol."""
        self.device(device).write(tag, value)
        self.generation += 1

    def add_fault(self, fault: Fault) -> ActiveFault:
        """Put `fault` in force; physical effects (restart, stuck capture) apply at once."""
        if isinstance(fault, OpcuaServerDown):
            record = self.faults.add(fault, self.sim_time)
            self.generation += 1
            return record
        device = self.device(fault.device)
        tag = getattr(fault, "tag", None)
        if tag is not None and tag not in self._tag_info[fault.device]:
            raise SimConfigError(f"{fault.device} has no tag {tag!r}")
        captured = (
            self.reported(fault.device)[fault.tag] if isinstance(fault, StuckSensor) else None
        )
        record = self.faults.add(fault, self.sim_time)
        record.captured = captured
        if isinstance(fault, Restart):
            device.restart()
        self.generation += 1
        return record

    def clear_faults(self, fault_id: int | None = None) -> None:
        """End one fault (or all); a cleared bearing-wear fault means the bearing was replaced."""
        ending = [r for r in self.faults.active() if fault_id in (None, r.id)]
        for rec in ending:
            if isinstance(rec.fault, BearingWear):
                self.devices[rec.fault.device].wear = 0.0
        self.faults.clear(fault_id)
        self.generation += 1
