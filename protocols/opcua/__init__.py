"""OPC UA driver (asyncua 2.x client): subscriptions by default, polling as a fallback.

- `config`: frozen pydantic models `OpcUaDeviceConfig` and `OpcUaTag`.
- `codec`: pure mapping of node id strings, DataValues and write values (no I/O).
- `security`: the gateway's application certificate and the server-certificate trust list.
- `session`: one connected session (connect, security, namespaces, OperationLimits, units).
- `subscription`, `polling`, `buffer`: the two ways in, and the bounded hand-off to the sink.
- `wire`: a fast decoder for PublishResponses of plain data changes (asyncua decodes the rest).
- `driver`: `OpcUaDriver`, the `protocols.driver.Driver` for OPC UA.

Errors come from the one tree in `protocols.errors` (root `ProtocolError`); this package raises:

    ProtocolError
    ├── DriverConfigError    write() to an unknown or read-only tag
    ├── ConnectError         server unreachable, refused, no matching endpoint, link lost
    │   └── SecurityError    untrusted server certificate, bad credentials, policy mismatch
    ├── DeviceTimeout        a request timed out
    ├── DeviceError          a request failed with a Bad service result (carries the StatusCode)
    ├── CodecError           a bad node id string, or a write value that does not fit the type
    └── WriteError           the server refused a write, or the driver is not connected

A failed read never raises out of `run()`: it becomes bad-quality readings with the reason.
"""

from typing import TYPE_CHECKING, Any

from protocols.opcua.config import OpcUaDeviceConfig, OpcUaTag

__all__ = ["OpcUaDeviceConfig", "OpcUaDriver", "OpcUaTag"]

if TYPE_CHECKING:
    from protocols.opcua.driver import OpcUaDriver


def __getattr__(name: str) -> Any:
    """`OpcUaDriver` is imported on first use: a config is validated without the OPC UA stack."""
    if name == "OpcUaDriver":
        from protocols.opcua.driver import OpcUaDriver  # noqa: PLC0415

        return OpcUaDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
