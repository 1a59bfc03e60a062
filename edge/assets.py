"""The ISA-95 asset model on the gateway: where each device sits in the plant, and the Unified
Namespace (UNS) path of each of its tags.

A device section may name its place as ``path: enterprise/site/area/line/cell`` (one to five
levels, ISA-95's equipment hierarchy from the top; each level one MQTT topic level). A tag's UNS
path is its device's path, the device and the tag: ``acme/plant-a/packaging/line2/filler1/
pump1/flow``. The UNS publisher (`edge.north.uns`) writes the latest value of every tag there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

LEVELS: Final = ("enterprise", "site", "area", "line", "cell")
_FORBIDDEN: Final = frozenset("+#\x00")


@dataclass(frozen=True, slots=True)
class AssetPath:
    """A device's place in the ISA-95 hierarchy, top level first."""

    levels: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> AssetPath:
        """Parse ``enterprise/site/area/line/cell`` (1-5 levels); `ValueError` says what."""
        levels = tuple(level.strip() for level in text.strip().strip("/").split("/"))
        if not text.strip() or len(levels) > len(LEVELS):
            raise ValueError(f"path {text!r}: write 1 to 5 levels, {'/'.join(LEVELS)}")
        for name, level in zip(LEVELS, levels, strict=False):
            if not level or _FORBIDDEN & set(level):
                raise ValueError(f"path {text!r}: the {name} level is empty or has + # or NUL")
        return cls(levels)

    def __str__(self) -> str:
        return "/".join(self.levels)

    def named(self) -> dict[str, str]:
        """The levels by ISA-95 name (``site``: ``plant-a``); missing levels are empty."""
        return {name: (self.levels[i] if i < len(self.levels) else "")
                for i, name in enumerate(LEVELS)}  # fmt: skip


def uns_topic(template: str, path: AssetPath | None, device: str, tag: str) -> str:
    """The topic for one tag from a template with ``{path}``, ``{device}``, ``{tag}`` and the
    level names (``{site}``, ...); empty levels collapse, so a device without a path publishes
    under ``{device}/{tag}``."""
    fields = {"path": str(path) if path else "", "device": device, "tag": tag,
              **(path.named() if path else dict.fromkeys(LEVELS, ""))}  # fmt: skip
    rendered = template.format_map(fields)
    return "/".join(level for level in rendered.split("/") if level)


def check_template(template: str) -> str:
    """`ValueError` unless the template renders (known fields only) and names the tag."""
    if "{tag}" not in template:
        raise ValueError(f"topic_template {template!r} must contain {{tag}}")
    try:
        uns_topic(template, AssetPath(("e",)), "d", "t")
    except (KeyError, IndexError, ValueError) as exc:
        known = ", ".join(f"{{{k}}}" for k in ("path", "device", "tag", *LEVELS))
        raise ValueError(f"topic_template {template!r}: {exc}; fields are {known}") from None
    return template
