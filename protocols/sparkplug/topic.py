"""The Sparkplug B topic namespace (Sparkplug 3.0, chapter 4).

    spBv1.0/<group_id>/<message_type>/<edge_node_id>[/<device_id>]
    spBv1.0/STATE/<host_id>

Group, edge node, device and host ids are single MQTT topic levels: non-empty UTF-8 without
``/``, ``+`` or ``#``. Node messages (NBIRTH, NDEATH, NDATA, NCMD) have no device level, device
messages (DBIRTH, DDEATH, DDATA, DCMD) have one. `parse_topic` refuses anything else with a
reason; it never raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

NAMESPACE: Final = "spBv1.0"
STATE_LEVEL: Final = "STATE"
_FORBIDDEN: Final = frozenset("/+#")


class MessageType(StrEnum):
    """The Sparkplug message types that travel on a group's topics."""

    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    NDATA = "NDATA"
    DDATA = "DDATA"
    NCMD = "NCMD"
    DCMD = "DCMD"

    @property
    def is_device(self) -> bool:
        """True for the message types that name a device (a fifth topic level)."""
        return self in _DEVICE_TYPES


_DEVICE_TYPES: Final = frozenset(
    {MessageType.DBIRTH, MessageType.DDEATH, MessageType.DDATA, MessageType.DCMD}
)


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed Sparkplug topic of one edge node or one of its devices."""

    group: str
    message_type: MessageType
    edge_node: str
    device: str | None = None

    def __str__(self) -> str:
        levels = [NAMESPACE, self.group, self.message_type.value, self.edge_node]
        if self.device is not None:
            levels.append(self.device)
        return "/".join(levels)


@dataclass(frozen=True, slots=True)
class StateTopic:
    """``spBv1.0/STATE/<host_id>``: where a host application announces whether it is online."""

    host_id: str

    def __str__(self) -> str:
        return f"{NAMESPACE}/{STATE_LEVEL}/{self.host_id}"


@dataclass(frozen=True, slots=True)
class BadTopic:
    """A topic that is not a Sparkplug B topic, and why."""

    reason: str


def check_id(value: str, *, field: str) -> str:
    """Raise `ValueError` naming `field` unless `value` can be one Sparkplug topic level."""
    if not value or _FORBIDDEN & set(value):
        raise ValueError(f"{field}: {value!r} must be non-empty and contain no '/', '+' or '#'")
    return value


def parse_topic(topic: str) -> Topic | StateTopic | BadTopic:
    """Parse a topic name; a `BadTopic` says what is wrong with it."""
    levels = topic.split("/")
    if levels[0] == NAMESPACE and len(levels) == 3 and levels[1] == STATE_LEVEL:
        return StateTopic(levels[2]) if _valid(levels[2]) else BadTopic(f"bad host id: {topic}")
    problem = _problem(topic, levels)
    if problem is not None:
        return BadTopic(problem)
    device = levels[4] if len(levels) == 5 else None
    return Topic(levels[1], MessageType(levels[2]), levels[3], device)


def _problem(topic: str, levels: list[str]) -> str | None:
    """Why `levels` are not a group topic, or None."""
    if levels[0] != NAMESPACE:
        return f"topic {topic!r} is not in the {NAMESPACE} namespace"
    if len(levels) not in (4, 5):
        return f"topic {topic!r} has {len(levels)} levels; Sparkplug uses 4 or 5"
    if levels[2] not in _TYPES:
        return f"topic {topic!r}: {levels[2]!r} is not a Sparkplug message type"
    kind = MessageType(levels[2])
    if kind.is_device != (len(levels) == 5):
        needs = "a device level" if kind.is_device else "no device level"
        return f"topic {topic!r}: {kind} takes {needs}"
    if not all(_valid(level) for level in levels[1:]):
        return f"topic {topic!r} has an empty level or a wildcard in an id"
    return None


_TYPES: Final = frozenset(kind.value for kind in MessageType)


def _valid(level: str) -> bool:
    return bool(level) and not (_FORBIDDEN & set(level))


__all__ = [
    "NAMESPACE",
    "BadTopic",
    "MessageType",
    "StateTopic",
    "Topic",
    "check_id",
    "parse_topic",
]
