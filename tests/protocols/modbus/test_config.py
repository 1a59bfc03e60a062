"""Config validation: every refusal names the field that is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from protocols.modbus.config import ModbusDeviceConfig, ModbusTag, PollGroup


def tag(**fields: Any) -> ModbusTag:
    base: dict[str, Any] = {
        "name": "t",
        "table": "holding_register",
        "address": 0,
        "type": "int16",
    }
    return ModbusTag(**(base | fields))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "bit"}, "field 'bit' must be 0..15"),
        ({"type": "bit", "bit": 16}, "field 'bit' must be 0..15"),
        ({"bit": 3}, "field 'bit' is only allowed with type 'bit'"),
        ({"type": "string"}, "field 'length'"),
        ({"length": 2}, "field 'length' is only allowed with type 'string'"),
        ({"type": "bool"}, "field 'type' is 'bool' on table 'holding_register'"),
        ({"table": "coil"}, "field 'type' is 'int16' on table 'coil'"),
        ({"address": 65535, "type": "float32"}, "field 'address' 65535 \\+ width 2"),
        ({"address": 65536}, "address"),
        ({"table": "input_register", "writable": True}, "field 'writable'"),
        ({"type": "bit", "bit": 1, "scale": 2}, "fields 'scale'/'offset'"),
        ({"scale": 0}, "field 'scale' must not be 0"),
        ({"order": "ACBD"}, "order"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_tags_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        tag(**fields)


def test_good_tags_have_their_width() -> None:
    assert tag(type="float64").width == 4
    assert tag(type="string", length=10).end == 10
    assert tag(table="coil", type="bool", address=1999).width == 1


def device(**fields: Any) -> ModbusDeviceConfig:
    base: dict[str, Any] = {"name": "pump1", "host": "10.0.0.5", "tags": [tag()]}
    return ModbusDeviceConfig(**(base | fields))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tags": [tag(), tag()]}, "field 'tags' has duplicate name 't'"),
        ({"tags": [tag(poll_group="fast")]}, "field 'poll_group' names unknown group 'fast'"),
        (
            {"poll_groups": [PollGroup(name="a", interval=1), PollGroup(name="a", interval=2)]},
            "field 'poll_groups' has duplicate name 'a'",
        ),
        ({"host": None}, "field 'host' is required"),
        ({"transport": "rtu"}, "field 'serial_port' is required"),
        ({"unit_id": 256}, "unit_id"),
        ({"timeout": 0}, "timeout"),
        ({"max_registers_per_read": 126}, "max_registers_per_read"),
        (
            {"max_registers_per_read": 10, "tags": [tag(type="string", length=20)]},
            "field 'length' \\(20\\) exceeds the device's max per read \\(10\\)",
        ),
        ({"tags": []}, "tags"),
    ],
)
def test_bad_devices_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        device(**fields)


def test_config_is_frozen() -> None:
    config = device()
    with pytest.raises(ValidationError):
        config.timeout = 5  # type: ignore[misc]


def test_the_last_register_is_usable() -> None:
    assert tag(address=65534, type="float32").end == 65536
