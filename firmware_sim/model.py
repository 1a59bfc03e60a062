"""The plant model: pumps, tanks and boilers stepped in simulated time with a seed.

Each device keeps its physical state and publishes engineering values under the tag names of
its register map. The model is deterministic for a given seed and sequence of steps and writes:
each device draws its noise from its own generator seeded from (plant seed, device index), so
adding a device never changes another device's values.

Plant layout: devices come in groups of four (pump, pump, tank, boiler); a tank is filled by the
pumps of its group, so stopping a pump lowers both its own flow and its tank's inflow.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt

from firmware_sim.errors import SimConfigError

Value = float | int | bool | str

_SQRT3: Final = math.sqrt(3.0)
_AMBIENT_C: Final = 22.0
GROUP_LAYOUT: Final = ("pump", "pump", "tank", "boiler")


@dataclass
class AuxSignals:
    """Generated slow sine signals with noise: the scale knob's extra tags."""

    center: npt.NDArray[np.float64]
    amplitude: npt.NDArray[np.float64]
    period_s: npt.NDArray[np.float64]
    phase: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    rng: np.random.Generator

    @classmethod
    def create(cls, count: int, seed: int) -> AuxSignals:
        """`count` signals with parameters drawn from `seed`."""
        rng = np.random.default_rng(seed)
        center = rng.uniform(10.0, 100.0, count)
        return cls(
            center=center,
            amplitude=rng.uniform(1.0, 10.0, count),
            period_s=rng.uniform(60.0, 600.0, count),
            phase=rng.uniform(0.0, 2 * math.pi, count),
            values=center.copy(),
            rng=rng,
        )

    def step(self, sim_time: float) -> None:
        """Advance every signal to `sim_time`."""
        wave = np.sin(2 * math.pi * sim_time / self.period_s + self.phase)
        noise = self.rng.normal(0.0, 0.01, len(self.values)) * self.amplitude
        self.values = self.center + self.amplitude * wave + noise

    def range_of(self, index: int) -> tuple[float, float]:
        """Engineering range of signal `index` (for OPC UA EURange)."""
        margin = float(self.amplitude[index]) * 1.1
        return float(self.center[index]) - margin, float(self.center[index]) + margin


@dataclass
class SimulatedDevice:
    """Base of every device: name, values by tag, and the counters a restart clears."""

    device_type: ClassVar[str]
    ranges: ClassVar[dict[str, tuple[float, float]]]
    setpoints: ClassVar[tuple[str, ...]]
    counters: ClassVar[tuple[str, ...]]

    name: str
    index: int
    rng: random.Random
    aux: AuxSignals
    values: dict[str, Value] = field(default_factory=dict)
    uptime_s: float = 0.0
    wear: float = 0.0  # 0 = new bearing, 1 = worn out (only pumps use it)

    def __post_init__(self) -> None:
        """Subclasses set their initial values here."""

    def step(self, dt: float, sim_time: float, inflow: float) -> None:
        """Advance the physics by `dt` seconds (`inflow` feeds tanks)."""
        self.uptime_s += dt
        self._step(dt, inflow)
        if len(self.aux.values):
            self.aux.step(sim_time)

    def _step(self, dt: float, inflow: float) -> None:
        raise NotImplementedError

    def write(self, tag: str, value: Value) -> None:
        """Apply a setpoint write; only tags in `setpoints` are writable."""
        if tag not in self.setpoints:
            raise SimConfigError(f"{self.name}.{tag} is not a writable setpoint")
        kind = type(self.values[tag])  # keep the tag's type whatever the protocol sent
        self.values[tag] = kind(value)

    def restart(self) -> None:
        """Power-cycle: counters and uptime start again from zero; setpoints are kept."""
        self.uptime_s = 0.0
        for name in self.counters:
            current = self.values[name]
            self.values[name] = 0.0 if isinstance(current, float) else 0

    def noise(self, sigma: float) -> float:
        """Gaussian measurement noise from this device's own generator."""
        return self.rng.gauss(0.0, sigma)


class Pump(SimulatedDevice):
    """Centrifugal pump on a variable-speed drive (affinity laws: Q~n, H~n^2, P~n^3)."""

    device_type = "pump"
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "flow": (0, 150), "discharge_pressure": (0, 10), "motor_current": (0, 80),
        "vibration": (0, 20), "bearing_temperature": (0, 120), "run_hours": (0, 1e6),
        "suction_pressure": (0, 3), "motor_power": (0, 50), "speed": (0, 100),
        "speed_setpoint": (0, 100), "volume_total": (0, 1e9), "energy_total": (0, 1e9),
        "starts": (0, 1e6),
    }  # fmt: skip
    setpoints = ("speed_setpoint", "run_command")
    counters = ("run_hours", "starts", "volume_total", "energy_total")

    def __post_init__(self) -> None:
        self.values.update(
            flow=0.0, discharge_pressure=1.2, motor_current=0.0, vibration=0.05,
            bearing_temperature=_AMBIENT_C, run_hours=0.0, suction_pressure=1.2,
            motor_power=0.0, starts=0, volume_total=0.0, energy_total=0.0, speed=0.0,
            serial_number=f"SP{self.index:05d}X"[:12], speed_setpoint=75.0, run_command=True,
            running=False, fault=False, status_running=False, status_fault=False,
            status_remote=True, status_vibration_alarm=False,
        )  # fmt: skip

    def _step(self, dt: float, inflow: float) -> None:
        del inflow
        v = self.values
        commanded = bool(v["run_command"])
        if commanded and not v["running"]:
            v["starts"] = int(v["starts"]) + 1
        v["running"] = v["status_running"] = commanded
        target = float(v["speed_setpoint"]) if commanded else 0.0
        speed = float(v["speed"]) + (target - float(v["speed"])) * min(1.0, dt / 3.0)
        s = speed / 100.0
        turning = s > 0.02
        flow = max(0.0, 110.0 * s * (1 - 0.05 * self.wear) + self.noise(0.4)) if turning else 0.0
        suction = 1.2 + self.noise(0.01)
        current = 6.0 + 48.0 * s**3 * (1 + 0.15 * self.wear) + self.noise(0.2) if turning else 0.0
        power = _SQRT3 * 0.4 * current * 0.86
        vib_sigma = 0.05 + 0.2 * self.wear
        vibration = (
            0.9 + 1.1 * s + 9.0 * self.wear**1.5 + self.noise(vib_sigma) if turning else 0.05
        )
        temp_target = _AMBIENT_C + 30.0 * s + 45.0 * self.wear
        temp = float(v["bearing_temperature"])
        temp += (temp_target - temp) * min(1.0, dt / 120.0) + self.noise(0.05)
        v.update(
            speed=speed, flow=flow, suction_pressure=suction,
            discharge_pressure=suction + 5.5 * s * s + self.noise(0.03),
            motor_current=max(0.0, current), motor_power=max(0.0, power),
            vibration=max(0.0, vibration), bearing_temperature=temp,
            status_vibration_alarm=vibration > 7.1,
        )  # fmt: skip
        v["fault"] = v["status_fault"] = vibration > 7.1 or temp > 90.0
        if commanded:
            v["run_hours"] = float(v["run_hours"]) + dt / 3600.0
        v["volume_total"] = float(v["volume_total"]) + flow * dt / 3600.0
        v["energy_total"] = float(v["energy_total"]) + power * dt / 3600.0


class Tank(SimulatedDevice):
    """Open tank: inflow from its group's pumps, outflow through a valve by Torricelli's law."""

    device_type = "tank"
    AREA_M2: ClassVar = 12.0
    HEIGHT_M: ClassVar = 5.0
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "level": (0, 5), "level_percent": (0, 100), "inflow": (0, 300), "outflow": (0, 300),
        "volume": (0, 60), "temperature": (-10, 60), "outlet_valve": (0, 100),
        "inflow_total": (0, 1e9), "outflow_total": (0, 1e9), "level_um": (0, 5e6),
        "net_volume_change": (-1e9, 1e9), "uptime_ms": (0, 1e12), "fill_cycles": (0, 1e6),
        "drain_cycles": (0, 1e6),
    }  # fmt: skip
    setpoints = ("outlet_valve",)
    counters = ("fill_cycles", "drain_cycles", "inflow_total", "outflow_total", "net_volume_change")

    def __post_init__(self) -> None:
        self.values.update(
            level=2.5, level_percent=50.0, inflow=0.0, outflow=0.0, volume=30.0,
            temperature=18.0, fill_cycles=0, drain_cycles=0, net_volume_change=0, uptime_ms=0,
            inflow_total=0.0, outflow_total=0.0, level_um=2_500_000,
            tag_name=f"TK{self.index:02d}"[:8], outlet_valve=60.0, high_level=False,
            low_level=False,
        )  # fmt: skip
        self._level = 2.5  # the true level; `values["level"]` is the noisy measurement

    def _step(self, dt: float, inflow: float) -> None:
        v = self.values
        level = self._level
        outflow = 150.0 * math.sqrt(max(level, 0.0)) * float(v["outlet_valve"]) / 100.0
        level += (inflow - outflow) / self.AREA_M2 * dt / 3600.0
        level = min(max(level, 0.0), self.HEIGHT_M)
        high, low = level > 4.5, level < 0.5
        if high and not v["high_level"]:
            v["fill_cycles"] = int(v["fill_cycles"]) + 1
        if low and not v["low_level"]:
            v["drain_cycles"] = int(v["drain_cycles"]) + 1
        inflow_total = float(v["inflow_total"]) + inflow * dt / 3600.0
        outflow_total = float(v["outflow_total"]) + outflow * dt / 3600.0
        measured = level + self.noise(0.002)
        v.update(
            level=measured, level_percent=100.0 * measured / self.HEIGHT_M,
            inflow=inflow + self.noise(0.3), outflow=outflow + self.noise(0.3),
            volume=level * self.AREA_M2, high_level=high, low_level=low,
            temperature=18.0 + 3.0 * math.sin(self.uptime_s / 3600.0) + self.noise(0.05),
            inflow_total=inflow_total, outflow_total=outflow_total,
            net_volume_change=round((inflow_total - outflow_total) * 1000.0),
            uptime_ms=round(self.uptime_s * 1000.0), level_um=round(level * 1e6),
        )  # fmt: skip
        self._level = level


class Boiler(SimulatedDevice):
    """Steam boiler: on/off burner with hysteresis around the temperature setpoint."""

    device_type = "boiler"
    HYSTERESIS_C: ClassVar = 5.0
    ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "temperature": (0, 250), "pressure": (0, 16), "firing_rate": (0, 100),
        "steam_flow": (0, 10), "flue_gas_temperature": (0, 400), "fuel_total": (0, 1e9),
        "heat_total": (0, 1e15), "uptime_ms": (0, 1e12), "burner_seconds": (0, 1e9),
        "heat_balance": (-1e12, 1e12), "oxygen": (0, 21), "burner_starts": (0, 1e6),
        "temperature_setpoint": (0, 250), "pressure_limit": (0, 16),
    }  # fmt: skip
    setpoints = ("temperature_setpoint", "pressure_limit", "burner_enable")
    counters = ("fuel_total", "heat_total", "burner_seconds", "heat_balance", "burner_starts")

    def __post_init__(self) -> None:
        self.values.update(
            temperature=160.0, pressure=1.013 * math.exp(0.0286 * 60.0), firing_rate=0.0,
            steam_flow=3.0, flue_gas_temperature=200.0, fuel_total=0.0, heat_total=0,
            uptime_ms=0, burner_seconds=0, heat_balance=0, oxygen=20.9, burner_starts=0,
            model_name="SIMBOIL1", firmware_version=0x0102, temperature_setpoint=170.0,
            pressure_limit=10.0,
            burner_enable=True, burner_on=False, flame_detected=False, pressure_alarm=False,
            status_burner_on=False, status_flame=False, status_pressure_alarm=False,
        )  # fmt: skip
        self._burner_time = 0.0

    def _step(self, dt: float, inflow: float) -> None:
        del inflow
        v = self.values
        temp = float(v["temperature"])
        setpoint = float(v["temperature_setpoint"])
        burner = bool(v["burner_on"])
        if not v["burner_enable"] or temp > setpoint + self.HYSTERESIS_C:
            burner = False
        elif temp < setpoint - self.HYSTERESIS_C and not burner:
            burner = True
            v["burner_starts"] = int(v["burner_starts"]) + 1
        firing = float(v["firing_rate"])
        firing += ((80.0 if burner else 0.0) - firing) * min(1.0, dt / 2.0)
        steam = 3.0 + 0.5 * math.sin(self.uptime_s / 300.0) + self.noise(0.02)
        heat_in_kw = 2000.0 * firing / 100.0
        loss_per_s = 0.002 * (temp - _AMBIENT_C) + 0.03 * steam
        temp += (0.006 * firing - loss_per_s) * dt
        pressure = 1.013 * math.exp(0.0286 * (temp - 100.0))
        self._burner_time += dt if burner else 0.0
        v.update(
            temperature=temp + self.noise(0.1), pressure=pressure + self.noise(0.01),
            firing_rate=firing, steam_flow=steam, burner_on=burner, flame_detected=burner,
            status_burner_on=burner, status_flame=burner,
            flue_gas_temperature=temp + 40.0 + 1.5 * firing + self.noise(0.5),
            oxygen=(3.5 + self.noise(0.05)) if burner else 20.9,
            fuel_total=float(v["fuel_total"]) + 0.05 * firing / 100.0 * dt,
            heat_total=int(v["heat_total"]) + round(heat_in_kw * dt),
            heat_balance=int(v["heat_balance"]) + round((heat_in_kw - 300.0 * loss_per_s) * dt),
            burner_seconds=round(self._burner_time), uptime_ms=round(self.uptime_s * 1000.0),
        )  # fmt: skip
        alarm = pressure > float(v["pressure_limit"])
        v["pressure_alarm"] = v["status_pressure_alarm"] = alarm

    def restart(self) -> None:
        """Power-cycle; the burner-seconds integrator restarts too."""
        super().restart()
        self._burner_time = 0.0


DEVICE_CLASSES: Final[dict[str, type[SimulatedDevice]]] = {
    "pump": Pump,
    "tank": Tank,
    "boiler": Boiler,
}


def layout(devices: int) -> list[tuple[str, str]]:
    """(name, device type) of the first `devices` devices in plant order: pump1, pump2, tank1..."""
    seen: dict[str, int] = {}
    out = []
    for i in range(devices):
        kind = GROUP_LAYOUT[i % len(GROUP_LAYOUT)]
        seen[kind] = seen.get(kind, 0) + 1
        out.append((f"{kind}{seen[kind]}", kind))
    return out
