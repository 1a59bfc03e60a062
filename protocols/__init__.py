"""Protocols: the `Reading` record, the driver contract, and one subpackage per protocol.

Each protocol (`modbus/`, `opcua/`, `mqtt/`) is a pure codec (bytes or values in, typed values
out, tested with literals) plus a driver that does the I/O and yields `list[Reading]` batches to a
sink. Drivers know nothing of storage, tenants or the cloud. This package imports nothing else of
tagway.
"""

from protocols.reading import Quality, Reading, Value, now_us

__all__ = ["Quality", "Reading", "Value", "now_us"]
