"""Modbus TCP/RTU: typed config, a pure codec, read coalescing, and the polling driver.

config.py   ModbusDeviceConfig, ModbusTag, PollGroup (the shared register-map vocabulary)
codec.py    registers/bits <-> values for every type and word order (pure)
plan.py     the fewest read requests per poll group, refined on exception 02 (pure)
client.py   the pymodbus boundary: one connection, retries, errors translated
driver.py   ModbusDriver: poll groups, reconnect with backoff, verified writes
"""

from protocols.modbus.config import ModbusDeviceConfig, ModbusTag, PollGroup
from protocols.modbus.driver import ModbusDriver

__all__ = ["ModbusDeviceConfig", "ModbusDriver", "ModbusTag", "PollGroup"]
