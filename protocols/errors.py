"""The protocol error tree. Library errors (pymodbus, asyncua, aiomqtt, amqtt) are translated into
these at the driver boundary with ``raise ... from exc``, so callers never import a library to
catch its exceptions.

    ProtocolError                 root of everything a driver raises
    ├── DriverConfigError         the config cannot work (bad address, unknown type, bad topic)
    ├── ConnectError              the link could not be established (refused, TLS, auth)
    │   └── SecurityError         certificate not trusted, wrong credentials, policy mismatch
    ├── DeviceTimeout             the device did not answer in time
    ├── DeviceError               the device answered with an error (Modbus exception, Bad status)
    ├── CodecError                bytes or values that cannot be decoded/encoded as configured
    └── WriteError                a setpoint write failed or did not read back as written

A failed *read* never raises out of a driver's run loop: it becomes bad-quality readings with the
reason. These errors are for setup, writes and the supervisor.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of the errors raised by `protocols`."""


class DriverConfigError(ProtocolError):
    """The driver's configuration cannot work; the message names the field and the value."""


class ConnectError(ProtocolError):
    """The link to the device or broker could not be established."""


class SecurityError(ConnectError):
    """The peer was refused or refused us: untrusted certificate, bad credentials, policy."""


class DeviceTimeout(ProtocolError):
    """The device did not answer within the configured timeout."""


class DeviceError(ProtocolError):
    """The device answered with an error.

    Args:
        message: what failed, naming the device and address.
        code: the protocol's own code (Modbus exception code, OPC UA StatusCode), if any.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class CodecError(ProtocolError):
    """A value could not be decoded or encoded with the tag's configured type and order."""


class WriteError(ProtocolError):
    """A setpoint write failed, or reading it back did not give the written value."""
