"""The firmware_sim error tree. Library errors are translated with ``raise ... from exc``.

SimError                  root of everything firmware_sim raises
├── SimConfigError        a plant option, register map or fault cannot work as given
├── EncodingError         a value cannot be encoded into (or decoded from) registers
├── UnknownDevice         a fault, write or query names a device the plant does not have
├── ServeError            a protocol endpoint could not be started (port taken, certificate)
└── HttpError             a control-API request answered with an error status (control.py)
"""

from __future__ import annotations


class SimError(Exception):
    """Root of the errors raised by `firmware_sim`."""


class SimConfigError(SimError):
    """A plant option, register map or fault cannot work; the message names what and where."""


class EncodingError(SimError):
    """A value does not fit the register type it is mapped to."""


class UnknownDevice(SimError):
    """A request named a device the plant does not serve."""

    def __init__(self, device: str) -> None:
        super().__init__(f"no simulated device named {device!r}")
        self.device = device


class ServeError(SimError):
    """A protocol endpoint could not be started."""
