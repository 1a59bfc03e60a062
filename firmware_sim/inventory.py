"""What the plant serves, as plain data: the contract a tagway device config is generated from.

`served_devices(plant)` returns one entry per (device, protocol), JSON-serialisable:

- Modbus: `host`, `port`, `unit_id`, `framing`, and `tags` in tagway's Modbus tag vocabulary
  (the register map's fields, and for a writable tag its write limits: `min` and `max` from the
  plant's range, or `allowed: [true, false]` for a switch);
- OPC UA: `endpoint`, `namespace_uri`, `security`, and `tags` with `node_id`
  (`nsu=urn:tagway:firmware-sim;s=<device>.<tag>`), `unit`, `low`, `high`, `kind`;
- MQTT: `broker` (URL without the password), `topic`, `format` (`json`), `batch`, and `tags`.

Every entry carries `simulated: true`, so the generated config flags the device as simulated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from firmware_sim.modbus_server import ModbusPlantServer
from firmware_sim.mqtt_devices import MqttPlantDevices
from firmware_sim.opcua_server import NAMESPACE_URI, OpcuaPlantServer
from firmware_sim.simulation import PlantModel

if TYPE_CHECKING:
    from firmware_sim.plant import Plant


def _modbus(model: PlantModel, modbus: ModbusPlantServer, device: str) -> dict[str, Any]:
    server = modbus.devices[device]
    register_map = model.maps[device]
    return {
        "protocol": "modbus",
        "host": server.host,
        "port": server.port,
        "unit_id": register_map.unit_id,
        "framing": server.framing,
        "tags": [tag.model_dump(exclude_none=True) | _write_limits(model, device, tag.name)
                 for tag in register_map.tags],
    }  # fmt: skip


def _write_limits(model: PlantModel, device: str, tag: str) -> dict[str, Any]:
    """The limits a writable tag needs in an agent config (a write without them is refused):
    the plant's own range for numbers, true/false for switches."""
    info = model.tag_info(device)[tag]
    if not info.writable:
        return {}
    if info.kind is bool:
        return {"allowed": [True, False]}
    if info.low is None or info.high is None:
        return {}
    return {"min": info.low, "max": info.high}


def _opcua(model: PlantModel, opcua: OpcuaPlantServer, device: str) -> dict[str, Any]:
    return {
        "protocol": "opcua",
        "endpoint": opcua.endpoint,
        "namespace_uri": NAMESPACE_URI,
        "security": opcua.security,
        "folder": device,
        "tags": [
            {
                "name": tag,
                "node_id": f"nsu={NAMESPACE_URI};s={device}.{tag}",
                "unit": info.unit,
                "low": info.low,
                "high": info.high,
                "kind": info.kind.__name__,
            }
            for tag, info in model.tag_info(device).items()
        ],
    }


def _mqtt(model: PlantModel, mqtt: MqttPlantDevices, device: str) -> dict[str, Any]:
    publisher = mqtt.devices[device]
    broker = mqtt.broker
    user = f"{broker.username}@" if broker.username else ""
    return {
        "protocol": "mqtt",
        "broker": f"mqtt://{user}{broker.host}:{broker.port}",
        "topic": publisher.topic,
        "format": "json",
        "batch": publisher.batch,
        "interval_s": publisher.interval_s,
        "tags": [
            {"name": tag, "unit": info.unit, "kind": info.kind.__name__}
            for tag, info in model.tag_info(device).items()
        ],
    }


def served_devices(plant: Plant) -> list[dict[str, Any]]:
    """One entry per device and protocol the running plant serves."""
    out: list[dict[str, Any]] = []
    for name, device in plant.model.devices.items():
        common = {"name": name, "device_type": device.device_type, "simulated": True}
        if plant.modbus is not None:
            out.append(common | _modbus(plant.model, plant.modbus, name))
        if plant.opcua is not None:
            out.append(common | _opcua(plant.model, plant.opcua, name))
        if plant.mqtt is not None:
            out.append(common | _mqtt(plant.model, plant.mqtt, name))
    return out
