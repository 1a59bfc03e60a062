"""Agent device sections generated from what a simulated plant serves.

`firmware_sim` publishes what it serves as plain data (`firmware_sim.inventory`); this module, in
the composition root, turns that into the agent's config vocabulary, choosing one protocol per
device type (a device is served over every protocol at once; the agent reads it over one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

DEFAULT_PROTOCOLS: Final = {"pump": "modbus", "tank": "mqtt", "boiler": "opcua"}
_FALLBACK_ORDER: Final = ("modbus", "opcua", "mqtt")


def parse_protocols(text: str) -> dict[str, str]:
    """``pump=modbus,tank=mqtt`` -> {"pump": "modbus", "tank": "mqtt"}."""
    out = dict(DEFAULT_PROTOCOLS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, protocol = part.partition("=")
        if not sep or protocol not in {"modbus", "opcua", "mqtt"}:
            raise ValueError(f"{part!r}: expected DEVICE_TYPE=modbus|opcua|mqtt")
        out[kind] = protocol
    return out


def choose_entries(
    served: Sequence[Mapping[str, Any]], protocols: Mapping[str, str] = DEFAULT_PROTOCOLS
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """One served entry per device: over its type's protocol when the plant serves it so, else
    over another it serves (a tank without an MQTT broker is read over Modbus). Also a note per
    device read over another protocol than asked, for the user."""
    by_device: dict[str, dict[str, Mapping[str, Any]]] = {}
    for entry in served:
        by_device.setdefault(entry["name"], {})[entry["protocol"]] = entry
    chosen: list[Mapping[str, Any]] = []
    notes: list[str] = []
    for name, offered in by_device.items():
        wanted = protocols.get(next(iter(offered.values()))["device_type"], "modbus")
        if wanted in offered:
            chosen.append(offered[wanted])
            continue
        other = next(p for p in (*_FALLBACK_ORDER, *offered) if p in offered)
        chosen.append(offered[other])
        notes.append(f"{name} is read over {other}: the plant does not serve it over {wanted}"
                     + (" (give --mqtt-url)" if wanted == "mqtt" else ""))  # fmt: skip
    return chosen, notes


def agent_devices(
    served: Sequence[Mapping[str, Any]],
    *,
    protocols: Mapping[str, str] = DEFAULT_PROTOCOLS,
    poll_interval: float = 1.0,
    mqtt_url: str | None = None,
    topic_prefix: str = "plant",
) -> list[dict[str, Any]]:
    """Device sections for the agent config, one per simulated device (MQTT ones share a source).

    Every served device gets a section (see `choose_entries`).

    Args:
        served: `firmware_sim.inventory.served_devices(plant)`.
        protocols: which protocol to read each device type over.
        poll_interval: Modbus poll and OPC UA publishing interval, seconds.
        mqtt_url: the broker the agent subscribes to for MQTT devices; credentials in the URL
            (``mqtt://user:password@host:port``) become the source's username and password.
        topic_prefix: the simulator's MQTT topic prefix.
    """
    devices: list[dict[str, Any]] = []
    mqtt_devices: list[str] = []
    for entry in choose_entries(served, protocols)[0]:
        if entry["protocol"] == "modbus":
            devices.append(_modbus(entry, poll_interval))
        elif entry["protocol"] == "opcua":
            devices.append(_opcua(entry, poll_interval))
        else:
            mqtt_devices.append(entry["name"])
    if mqtt_devices:
        if mqtt_url is None:
            raise ValueError(f"devices {mqtt_devices} are read over MQTT, but no broker URL given")
        parts = urlsplit(mqtt_url)
        source: dict[str, Any] = {
            "protocol": "mqtt", "name": "mqtt-devices", "simulated": True,
            "url": f"{parts.scheme}://{parts.hostname}:{parts.port or 1883}",
            # One subscription per device: the simulator publishes every device over MQTT,
            # and the devices read over another protocol must not arrive twice.
            "subscriptions": [{"topic": f"{topic_prefix}/{name}/telemetry", "device": name}
                              for name in mqtt_devices],
        }  # fmt: skip
        if parts.username:
            source["username"] = unquote(parts.username)
            source["password"] = unquote(parts.password or "")
        devices.append(source)
    return devices


def _modbus(entry: Mapping[str, Any], interval: float) -> dict[str, Any]:
    return {
        "protocol": "modbus", "name": entry["name"], "device_type": entry["device_type"],
        "transport": "rtu_over_tcp" if entry["framing"] == "rtu" else "tcp",
        "host": entry["host"], "port": entry["port"], "unit_id": entry["unit_id"],
        "simulated": True, "poll_groups": [{"name": "default", "interval": interval}],
        "tags": [dict(tag) for tag in entry["tags"]],
    }  # fmt: skip


def _opcua(entry: Mapping[str, Any], interval: float) -> dict[str, Any]:
    return {
        "protocol": "opcua", "name": entry["name"], "endpoint": entry["endpoint"],
        "simulated": True, "publishing_interval_ms": interval * 1000,
        "tags": [{"name": t["name"], "node_id": t["node_id"]} for t in entry["tags"]],
    }  # fmt: skip


def complete_config(
    devices: list[dict[str, Any]], *, name: str = "gateway-1", state_dir: Path
) -> dict[str, Any]:
    """A whole agent config around generated device sections: `tagway run --config FILE`
    reads the plant with it as it is (`tagway provision` adds the cloud)."""
    return {
        "gateway": {"name": name, "state_dir": str(state_dir)},
        "outbox": {"quota": "256MiB"},
        "devices": devices,
    }
