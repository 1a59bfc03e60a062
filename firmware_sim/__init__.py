"""firmware_sim: a simulated plant served over the real protocols on real sockets.

Pumps, tanks and a boiler stepped in simulated time with a seed, served over Modbus TCP (pymodbus),
OPC UA (asyncua) and MQTT (JSON telemetry to a broker), with fault scenarios for tests and the
demo. It imports nothing of tagway: it talks to the gateway only over the wire, exactly as a plant
would.

    from firmware_sim import Plant

    async with Plant(devices=4, seed=7, tick_s=None) as plant:
        plant.ports             # bound ports: Modbus per device, OPC UA, control API
        plant.served_devices()  # what is served where, as plain data
        plant.step(1.0)         # advance simulated time by hand (tick_s=None)
        plant.add_fault(ModbusException(device="pump1", address=0, code=2))
        plant.request_counts()  # Modbus requests per device and function code

Command line: ``python -m firmware_sim plant --devices N --scenario NAME`` (see `cli`).
"""

from firmware_sim.errors import SimConfigError, SimError
from firmware_sim.faults import (
    BearingWear,
    DriftingSensor,
    Fault,
    LinkDrop,
    ModbusException,
    MqttMalformed,
    MqttOversize,
    OpcuaServerDown,
    OpcuaStatus,
    Restart,
    SlowAnswers,
    StuckSensor,
)
from firmware_sim.plant import Plant, PlantConfig

__all__ = [
    "BearingWear",
    "DriftingSensor",
    "Fault",
    "LinkDrop",
    "ModbusException",
    "MqttMalformed",
    "MqttOversize",
    "OpcuaServerDown",
    "OpcuaStatus",
    "Plant",
    "PlantConfig",
    "Restart",
    "SimConfigError",
    "SimError",
    "SlowAnswers",
    "StuckSensor",
]
