"""The checks of a config file that span sections: names used twice, alarms, derived tags and
models on devices or tags the file does not define, model files that are not there.

They read the YAML data as it is (not the validated model), so they run in the same pass as
the field checks and a file with a wrong type somewhere still gets every other problem
reported, each at its own line. Entries too malformed to check are left to the field checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Loc = tuple[int | str, ...]
Problem = tuple[Loc, str]

_OPEN_DEVICE = "{device}"


@dataclass
class _Plant:
    """The devices a file defines and the tags each one reads (None: any, e.g. from MQTT)."""

    tags: dict[str, set[str] | None] = field(default_factory=dict)
    open: bool = False  # an MQTT subscription names devices from its topic

    def device_problem(self, name: object) -> str | None:
        if not isinstance(name, str) or name in self.tags or self.open:
            return None
        known = ", ".join(sorted(self.tags)) or "none"
        return f"no device named {name!r} in devices (defined: {known})"

    def tag_problem(self, device: object, tag: object) -> str | None:
        if not isinstance(device, str) or not isinstance(tag, str):
            return None
        tags = self.tags.get(device)
        if tags is None or tag in tags:
            return None
        return f"device {device!r} has no tag {tag!r} (its tags: {', '.join(sorted(tags))})"


def _entries(data: dict[str, Any], section: str) -> list[tuple[int, dict[str, Any]]]:
    items = data.get(section)
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _repeats(section: str, names: list[tuple[int, object]], what: str) -> list[Problem]:
    """Each repeat of a name, at its own entry, naming where it was first used."""
    first: dict[str, int] = {}
    out: list[Problem] = []
    for i, name in names:
        if not isinstance(name, str):
            continue
        if name in first:
            used = f"{what} name {name!r} is already used by {section}[{first[name]}]"
            out.append(((section, i, "name"), used))
        else:
            first[name] = i
    return out


def _plant(data: dict[str, Any]) -> _Plant:
    plant = _Plant()
    for _, device in _entries(data, "devices"):
        name = device.get("name")
        if not isinstance(name, str):
            continue
        if device.get("protocol") == "mqtt":
            _add_mqtt_source(plant, name, device.get("subscriptions"))
            continue
        tags = device.get("tags")
        known = plant.tags.setdefault(name, set())
        if not isinstance(tags, list):
            plant.tags[name] = None  # the field check reports it
        elif known is not None:  # a repeated device name (reported) adds its tags
            known.update(t["name"] for t in tags if isinstance(t, dict) and "name" in t)
    for _, derived in _entries(data, "derived"):
        _add_tag(plant, derived.get("device"), derived.get("tag"))
    for _, model in _entries(data, "models"):
        outputs = model.get("outputs", ["score"])
        for device in model.get("devices") or []:
            for output in outputs if isinstance(outputs, list) else []:
                _add_tag(plant, device, output)
    return plant


def _add_mqtt_source(plant: _Plant, name: str, subscriptions: object) -> None:
    """The devices an MQTT source reads (their tags come from the payloads)."""
    plant.tags.setdefault(name, None)
    for sub in subscriptions if isinstance(subscriptions, list) else []:
        if not isinstance(sub, dict):
            continue
        if isinstance(sub.get("device"), str):
            plant.tags[sub["device"]] = None
        decoder = sub.get("decoder")
        kind = decoder.get("kind") if isinstance(decoder, dict) else decoder
        if _OPEN_DEVICE in str(sub.get("topic", "")) or kind == "sparkplug_b":
            plant.open = True


def _add_tag(plant: _Plant, device: object, tag: object) -> None:
    tags = plant.tags.get(device) if isinstance(device, str) else None
    if tags is not None and isinstance(tag, str):
        tags.add(tag)


def _model_problems(data: dict[str, Any], plant: _Plant, base: Path | None) -> list[Problem]:
    out: list[Problem] = []
    for i, model in _entries(data, "models"):
        devices = model.get("devices")
        for k, device in enumerate(devices if isinstance(devices, list) else []):
            if problem := plant.device_problem(device):
                out.append((("models", i, "devices", k), problem))
        path = model.get("path")
        if base is not None and isinstance(path, str) and path:
            found = (base / path).resolve()
            if not found.is_file():
                out.append((("models", i, "path"), f"model file {str(found)!r} does not exist"))
    return out


def _alarm_names(data: dict[str, Any]) -> list[tuple[int, object]]:
    """The alarm rules' names with their index; model alarms (``model.device``) first, at -1."""
    names: list[tuple[int, object]] = []
    for _, model in _entries(data, "models"):
        if isinstance(model.get("alarm"), dict):
            names.extend((-1, f"{model.get('name')}.{d}") for d in model.get("devices") or [])
    names.extend((i, a.get("name")) for i, a in _entries(data, "alarms"))
    return names


def _alarm_problems(data: dict[str, Any], plant: _Plant) -> list[Problem]:
    out: list[Problem] = []
    for loc, message in _repeats("alarms", _alarm_names(data), "alarm"):
        if loc[1] != -1:  # two model alarms of one name: the model check names them
            out.append((loc, message.replace("alarms[-1]", "a model's alarm")))
    for i, alarm in _entries(data, "alarms"):
        if problem := plant.device_problem(alarm.get("device")):
            out.append((("alarms", i, "device"), problem))
        elif problem := plant.tag_problem(alarm.get("device"), alarm.get("tag")):
            out.append((("alarms", i, "tag"), problem))
    return out


def config_problems(data: dict[str, Any], *, base: Path | None = None) -> list[Problem]:
    """Every cross-section problem of the config data; `base` (the file's folder) also checks
    that model files exist."""
    plant = _plant(data)
    out = _repeats("devices", [(i, d.get("name")) for i, d in _entries(data, "devices")], "device")
    out += _repeats(
        "notifications", [(i, n.get("name")) for i, n in _entries(data, "notifications")],
        "notification",
    )  # fmt: skip
    for i, derived in _entries(data, "derived"):
        if problem := plant.device_problem(derived.get("device")):
            out.append((("derived", i, "device"), problem))
    out += _model_problems(data, plant, base)
    out += _alarm_problems(data, plant)
    return out
