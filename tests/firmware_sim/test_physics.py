"""The plant model's physics: seeded determinism and the relations a plant engineer expects."""

from __future__ import annotations

import pytest

from firmware_sim.faults import BearingWear, DriftingSensor, StuckSensor
from firmware_sim.simulation import PlantModel


def _run(model: PlantModel, seconds: int, dt: float = 1.0) -> None:
    for _ in range(int(seconds / dt)):
        model.step(dt)


def test_same_seed_same_values_other_seed_other_values() -> None:
    a, b, c = (PlantModel(devices=8, tags_per_device=30, seed=s) for s in (11, 11, 12))
    for model in (a, b, c):
        _run(model, 120)
    for name in a.devices:
        assert a.reported(name) == b.reported(name)
    assert a.reported("pump1")["flow"] != c.reported("pump1")["flow"]


def test_values_stay_in_realistic_ranges_for_an_hour() -> None:
    model = PlantModel(devices=4, seed=5)
    for _ in range(360):
        model.step(10.0)
        for name in model.devices:
            values = model.reported(name)
            for tag, info in model.tag_info(name).items():
                if info.low is not None and info.high is not None:
                    assert info.low <= float(values[tag]) <= info.high, (name, tag, values[tag])  # type: ignore[arg-type]
    boiler = model.reported("boiler1")
    assert 160 < float(boiler["temperature"]) < 180  # type: ignore[arg-type]


def test_pump_stop_drops_its_flow_and_its_tanks_inflow() -> None:
    model = PlantModel(devices=4, seed=2)
    _run(model, 60)
    assert float(model.reported("pump1")["flow"]) > 60  # type: ignore[arg-type]
    inflow_both = float(model.reported("tank1")["inflow"])  # type: ignore[arg-type]
    model.write("pump1", "run_command", False)
    _run(model, 30)
    assert model.reported("pump1")["flow"] == 0.0
    assert model.reported("pump1")["motor_current"] == 0.0
    inflow_one = float(model.reported("tank1")["inflow"])  # type: ignore[arg-type]
    assert inflow_one == pytest.approx(inflow_both / 2, rel=0.1)


def test_bearing_wear_raises_vibration_and_bearing_temperature_over_minutes() -> None:
    healthy, worn = PlantModel(devices=1, seed=9), PlantModel(devices=1, seed=9)
    worn.add_fault(BearingWear(device="pump1", minutes_to_failure=10))
    _run(healthy, 600)
    _run(worn, 600)
    assert float(worn.reported("pump1")["vibration"]) > 3 * float(
        healthy.reported("pump1")["vibration"]
    )  # type: ignore[arg-type]
    assert (
        float(worn.reported("pump1")["bearing_temperature"])
        > float(healthy.reported("pump1")["bearing_temperature"]) + 15
    )  # type: ignore[arg-type]
    assert worn.reported("pump1")["status_vibration_alarm"] is True


def test_stuck_sensor_holds_and_drifting_sensor_walks_away() -> None:
    model = PlantModel(devices=4, seed=4)
    _run(model, 30)
    stuck = model.reported("tank1")["level"]
    model.add_fault(StuckSensor(device="tank1", tag="level"))
    model.add_fault(DriftingSensor(device="boiler1", tag="oxygen", rate_per_min=1.0))
    truth = PlantModel(devices=4, seed=4)
    _run(truth, 30)
    _run(model, 300)
    _run(truth, 300)
    assert model.reported("tank1")["level"] == stuck
    drift = float(model.reported("boiler1")["oxygen"]) - float(truth.reported("boiler1")["oxygen"])  # type: ignore[arg-type]
    assert drift == pytest.approx(5.0, abs=0.01)
