"""Modbus TCP/RTU: typed config, a pure codec, read coalescing, and the polling driver.

config.py   ModbusDeviceConfig, ModbusTag, PollGroup (the shared register-map vocabulary)
codec.py    registers/bits <-> values for every type and word order (pure)
plan.py     the fewest read requests per poll group, refined on exception 02 (pure)
client.py   the pymodbus boundary: one connection, retries, errors translated
driver.py   ModbusDriver: poll groups, reconnect with backoff, verified writes
"""

from typing import TYPE_CHECKING, Any

from protocols.modbus.config import ModbusDeviceConfig, ModbusTag, PollGroup

__all__ = ["ModbusDeviceConfig", "ModbusDriver", "ModbusTag", "PollGroup"]

if TYPE_CHECKING:
    from protocols.modbus.driver import ModbusDriver


def __getattr__(name: str) -> Any:
    """`ModbusDriver` is imported on first use: a config is validated without pymodbus."""
    if name == "ModbusDriver":
        from protocols.modbus.driver import ModbusDriver  # noqa: PLC0415

        return ModbusDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
