"""The drivers against the simulated plant itself, over real sockets: what a plant would serve.

The per-protocol suites use small fixture servers to force exact edge cases; these tests check
that the drivers and firmware_sim agree on every register map, every encoding and word order,
and the OPC UA address space, and that coalescing is minimal as counted by the simulator.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from firmware_sim.plant import Plant
from firmware_sim.register_map import load_map
from protocols.modbus.config import ModbusDeviceConfig, ModbusTag
from protocols.modbus.driver import ModbusDriver
from protocols.opcua.config import OpcUaDeviceConfig
from protocols.opcua.driver import OpcUaDriver
from protocols.reading import Quality, Reading

pytestmark = pytest.mark.integration

DEVICES = ("pump1", "tank1", "boiler1")


@pytest.fixture
async def frozen() -> AsyncIterator[Plant]:
    """A plant whose clock stands still, so the wire and the model can be compared exactly."""
    async with Plant(devices=4, seed=11, tick_s=None, control_port=None, opcua=True) as plant:
        for _ in range(120):
            plant.step(1.0)
        yield plant


async def first_batches(driver: ModbusDriver | OpcUaDriver, count: int = 1) -> list[Reading]:
    batches: list[list[Reading]] = []
    done = asyncio.Event()

    async def sink(readings: list[Reading]) -> None:
        batches.append(readings)
        if len(batches) >= count:
            done.set()

    async with driver:
        task = asyncio.create_task(driver.run(sink))
        try:
            await asyncio.wait_for(done.wait(), 20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return [r for batch in batches for r in batch]


def modbus_config(plant: Plant, name: str) -> ModbusDeviceConfig:
    kind = "".join(c for c in name if c.isalpha())
    return ModbusDeviceConfig(
        name=name, host="127.0.0.1", port=plant.ports["modbus"][name], simulated=True,
        tags=tuple(ModbusTag(**t.model_dump(exclude_none=True)) for t in load_map(kind).tags),
        poll_groups=({"name": "default", "interval": 0.2},),  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("name", DEVICES)
async def test_every_register_map_decodes_to_what_the_model_serves(
    frozen: Plant, name: str
) -> None:
    config = modbus_config(frozen, name)
    readings = await first_batches(ModbusDriver(config))
    truth = frozen.model.reported(name)
    assert {r.quality for r in readings} == {Quality.GOOD}
    by_tag = {r.tag: r for r in readings}
    assert set(by_tag) == {t.name for t in config.tags}
    checked = 0
    for tag in config.tags:
        reading, expected = by_tag[tag.name], truth[tag.name]
        if isinstance(expected, str | bool):
            assert reading.value == expected, tag.name
        elif tag.type in {"float32"}:
            assert math.isclose(float(reading.value), expected, rel_tol=1e-6, abs_tol=1e-6), tag
        elif tag.scale != 1.0:
            assert abs(float(reading.value) - expected) <= abs(tag.scale) / 2 + 1e-9, tag.name
        else:
            assert math.isclose(float(reading.value), float(expected), rel_tol=1e-9), tag.name
        assert reading.simulated
        checked += 1
    assert checked == len(config.tags)


async def test_one_poll_cycle_costs_the_plans_minimum_on_the_simulator(frozen: Plant) -> None:
    config = modbus_config(frozen, "boiler1")
    driver = ModbusDriver(config)
    minimum = len(driver.groups[0].plan.blocks)
    frozen.modbus.reset_counts()  # type: ignore[union-attr]
    readings = await first_batches(driver, count=3)
    served = sum(frozen.request_counts()["boiler1"].values())
    cycles = len(readings) // len(config.tags)
    assert cycles >= 3
    assert served in {minimum * cycles, minimum * (cycles + 1)}  # a cycle may be in flight


async def test_the_opcua_address_space_arrives_through_a_subscription(frozen: Plant) -> None:
    tags = list(frozen.model.tag_info("boiler1"))
    config = OpcUaDeviceConfig(
        name="boiler1", endpoint=frozen.opcua.endpoint, simulated=True,  # type: ignore[union-attr]
        publishing_interval_ms=200,
        tags=tuple({"name": t, "node_id": f"nsu=urn:tagway:firmware-sim;s=boiler1.{t}"}
                   for t in tags),  # type: ignore[arg-type]
    )  # fmt: skip
    readings = await first_batches(OpcUaDriver(config))
    by_tag = {r.tag: r for r in readings}
    truth = frozen.model.reported("boiler1")
    assert set(by_tag) == set(tags)
    assert all(r.quality is Quality.GOOD and r.simulated for r in readings)
    assert by_tag["temperature"].unit == "degC"  # from EngineeringUnits
    assert math.isclose(float(by_tag["temperature"].value), float(truth["temperature"]),
                        rel_tol=1e-6)  # fmt: skip
