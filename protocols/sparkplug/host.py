"""A Sparkplug B host's view of other edge nodes: births and data in, readings out. Pure.

    host = HostSession(group="plant1")
    outcome = host.receive(topic, payload, received_us)
    outcome.readings        # list[Reading]
    outcome.refused         # a reason when the message could not be used (a dead letter)
    outcome.rebirths        # NCMD Node Control/Rebirth messages the driver should publish

What it keeps per edge node: the ``bdSeq`` of its current NBIRTH, the ``seq`` it expects next,
and the metrics its births declared (name, alias, datatype, unit, last value) for the node and
each device. From that:

- NBIRTH/DBIRTH declare the metrics and their values become readings. A DBIRTH replaces what
  the device declared before.
- NDATA/DDATA are resolved by alias or name against the births and keep each metric's own
  timestamp (historical values sent after an outage keep theirs).
- An unknown alias or name, data from a node whose NBIRTH this host has not seen, or a ``seq``
  other than the expected one asks the node for a rebirth (at most once per
  `rebirth_interval_us` per node, until its NBIRTH arrives). A message that cannot be resolved
  is refused whole (a dead letter); one after a ``seq`` gap is still used.
- NDEATH (with the ``bdSeq`` of the current birth; a late will of an older session is ignored)
  and DDEATH turn every metric of the node or device into a bad reading with the reason.
- Malformed protobuf, a datatype the value does not fit, a timestamp far in the future: the
  message is refused with a reason naming the metric.

Readings name their device ``<edge node>`` for node metrics and ``<edge node>/<device>`` for
device metrics; the tag is the metric name (Sparkplug folders keep their ``/``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from protocols.reading import Quality, Reading, Value
from protocols.sparkplug import conventions
from protocols.sparkplug.payload import DataType, Malformed, Metric, Payload, decode_payload
from protocols.sparkplug.payload import encode_payload as _encode
from protocols.sparkplug.payload import finite as _finite
from protocols.sparkplug.sequence import BIRTH_SEQ, next_seq
from protocols.sparkplug.topic import BadTopic, MessageType, StateTopic, Topic, parse_topic

_US_PER_MS = 1_000


@dataclass(slots=True)
class _Declared:
    """A metric as a birth declared it, with the last value seen."""

    name: str
    datatype: DataType
    unit: str | None
    last: Value = 0


@dataclass(slots=True)
class _Metrics:
    """The metrics of the node itself or of one device, by name and by alias."""

    by_name: dict[str, _Declared] = field(default_factory=dict)
    by_alias: dict[int, _Declared] = field(default_factory=dict)


@dataclass(slots=True)
class _Node:
    bd_seq: int | None
    expected_seq: int
    node: _Metrics = field(default_factory=_Metrics)
    devices: dict[str, _Metrics] = field(default_factory=dict)
    alive: bool = True


@dataclass(frozen=True, slots=True)
class Rebirth:
    """An NCMD asking one edge node to publish its births again."""

    topic: str
    payload: bytes
    reason: str


@dataclass(slots=True)
class Outcome:
    """What one message gave: readings, or a refusal reason; and rebirths to request."""

    readings: list[Reading] = field(default_factory=list)
    refused: str | None = None
    device: str | None = None
    rebirths: list[Rebirth] = field(default_factory=list)


class _Refused(Exception):
    """Internal: the message cannot be used; the reason becomes `Outcome.refused`."""


class HostSession:
    """The births, sequence numbers and deaths of the edge nodes of one Sparkplug group.

    Args:
        group: the Sparkplug group id whose nodes this host follows.
        simulated: mark every reading simulated.
        rebirth_interval_us: the least time between two rebirth requests to one node.
        max_future_skew_us: a metric stamped further ahead of the receive time refuses the
            message.
    """

    def __init__(
        self,
        *,
        group: str,
        simulated: bool = False,
        rebirth_interval_us: int = 5_000_000,
        max_future_skew_us: int | None = 300_000_000,
    ) -> None:
        self.group = group
        self._simulated = simulated
        self._rebirth_interval_us = rebirth_interval_us
        self._max_skew_us = max_future_skew_us
        self._nodes: dict[str, _Node] = {}
        self._rebirth_asked: dict[str, int] = {}

    def receive(self, topic: str, payload: bytes, received_us: int) -> Outcome:
        """Take one message of the group; never raises."""
        outcome = Outcome()
        parsed = parse_topic(topic)
        if isinstance(parsed, StateTopic):
            return outcome
        if isinstance(parsed, BadTopic):
            outcome.refused = parsed.reason
            return outcome
        if parsed.group != self.group:
            outcome.refused = f"group {parsed.group!r} is not this host's group {self.group!r}"
            return outcome
        outcome.device = _device_name(parsed)
        if parsed.message_type in (MessageType.NCMD, MessageType.DCMD):
            return outcome  # another host's command to the node; not data
        try:
            decoded = decode_payload(payload)
            self._dispatch(parsed, decoded, received_us, outcome)
        except (Malformed, _Refused) as exc:
            outcome.readings = []
            outcome.refused = str(exc)
        return outcome

    def _dispatch(self, topic: Topic, payload: Payload, received_us: int, out: Outcome) -> None:
        kind = topic.message_type
        if kind is MessageType.NBIRTH:
            self._nbirth(topic, payload, received_us, out)
        elif kind is MessageType.NDEATH:
            self._ndeath(topic, payload, received_us, out)
        else:
            node = self._node_for(topic, received_us, out)
            self._check_seq(topic, node, payload, received_us, out)
            if kind is MessageType.DBIRTH:
                self._dbirth(topic, node, payload, received_us, out)
            elif kind is MessageType.DDEATH:
                self._ddeath(topic, node, payload, received_us, out)
            else:
                self._data(topic, node, payload, received_us, out)

    def _nbirth(self, topic: Topic, payload: Payload, received_us: int, out: Outcome) -> None:
        bd_seq = _bd_seq(payload)
        if payload.seq is not None and payload.seq != BIRTH_SEQ:
            raise _Refused(f"NBIRTH of {topic.edge_node} has seq {payload.seq}, not 0")
        node = _Node(bd_seq=bd_seq, expected_seq=next_seq(BIRTH_SEQ))
        self._declare(node.node, payload.metrics)
        self._nodes[topic.edge_node] = node
        self._rebirth_asked.pop(topic.edge_node, None)
        out.readings = self._readings(topic, node.node, payload, received_us)

    def _dbirth(self, topic: Topic, node: _Node, payload: Payload, now: int, out: Outcome) -> None:
        metrics = _Metrics()
        self._declare(metrics, payload.metrics)
        node.devices[topic.device or ""] = metrics
        out.readings = self._readings(topic, metrics, payload, now)

    def _ndeath(self, topic: Topic, payload: Payload, received_us: int, out: Outcome) -> None:
        node = self._nodes.get(topic.edge_node)
        if node is None or not node.alive:
            return
        bd_seq = _bd_seq(payload)
        if bd_seq is not None and node.bd_seq is not None and bd_seq != node.bd_seq:
            return  # the will of an older session, delivered late: the node lives on
        node.alive = False
        reason = f"edge node {topic.edge_node} offline (NDEATH)"
        out.readings = self._dead(topic.edge_node, node.node, reason, received_us)
        for device, metrics in node.devices.items():
            name = f"{topic.edge_node}/{device}"
            out.readings += self._dead(name, metrics, reason, received_us)

    def _ddeath(self, topic: Topic, node: _Node, payload: Payload, now: int, out: Outcome) -> None:
        metrics = node.devices.get(topic.device or "")
        if metrics is None:
            return
        reason = f"device {topic.device} offline (DDEATH)"
        out.readings = self._dead(_device_name(topic), metrics, reason, now)

    def _data(self, topic: Topic, node: _Node, payload: Payload, now: int, out: Outcome) -> None:
        metrics = node.node if topic.device is None else node.devices.get(topic.device)
        if metrics is None:
            self._ask_rebirth(topic, f"no DBIRTH seen for device {topic.device}", now, out)
            raise _Refused(
                f"{topic.message_type} for device {topic.device} before its DBIRTH; "
                f"rebirth requested"
            )
        try:
            out.readings = self._readings(topic, metrics, payload, now)
        except _Unknown as exc:
            self._ask_rebirth(topic, str(exc), now, out)
            raise _Refused(f"{exc}; rebirth requested") from None

    def _node_for(self, topic: Topic, now: int, out: Outcome) -> _Node:
        node = self._nodes.get(topic.edge_node)
        if node is None or not node.alive:
            self._ask_rebirth(topic, f"no NBIRTH seen for {topic.edge_node}", now, out)
            raise _Refused(
                f"{topic.message_type} from edge node {topic.edge_node} without a current "
                f"NBIRTH; rebirth requested"
            )
        return node

    def _check_seq(
        self, topic: Topic, node: _Node, payload: Payload, now: int, out: Outcome
    ) -> None:
        seq = payload.seq
        if seq is None:
            raise _Refused(f"{topic.message_type} without a seq")
        expected, node.expected_seq = node.expected_seq, next_seq(seq)
        if seq != expected:
            reason = f"seq {seq} where {expected} was expected (messages lost)"
            self._ask_rebirth(topic, reason, now, out)

    def _ask_rebirth(self, topic: Topic, reason: str, now: int, out: Outcome) -> None:
        asked = self._rebirth_asked.get(topic.edge_node)
        if asked is not None and now - asked < self._rebirth_interval_us:
            return
        self._rebirth_asked[topic.edge_node] = now
        out.rebirths.append(rebirth_request(self.group, topic.edge_node, reason, now))

    @staticmethod
    def _declare(metrics: _Metrics, declared: Iterable[Metric]) -> None:
        for index, metric in enumerate(declared):
            if metric.name is None or metric.datatype is None:
                raise _Refused(f"metrics[{index}]: a birth metric needs a name and a datatype")
            unit = (metric.properties or {}).get(conventions.UNIT)
            entry = _Declared(metric.name, metric.datatype, unit if isinstance(unit, str) else None)
            metrics.by_name[metric.name] = entry
            if metric.alias is not None:
                metrics.by_alias[metric.alias] = entry

    def _readings(
        self, topic: Topic, metrics: _Metrics, payload: Payload, received_us: int
    ) -> list[Reading]:
        device = _device_name(topic)
        default_us = received_us if payload.timestamp is None else payload.timestamp * _US_PER_MS
        readings: list[Reading] = []
        for index, metric in enumerate(payload.metrics):
            declared = _resolve(metrics, metric, index)
            if declared.name.startswith("Node Control/") or declared.name == conventions.BD_SEQ:
                continue
            if not declared.datatype.is_scalar:
                continue  # datasets, templates, arrays and bytes are not tag values
            ts = default_us if metric.timestamp is None else metric.timestamp * _US_PER_MS
            if self._max_skew_us is not None and ts - received_us > self._max_skew_us:
                raise _Refused(
                    f"metrics[{index}] ({declared.name}): timestamp {ts // _US_PER_MS} ms is "
                    f"{(ts - received_us) / 1e6:.0f} s in the future"
                )
            readings.append(self._reading(device, declared, metric, ts))
        return readings

    def _reading(self, device: str, declared: _Declared, metric: Metric, ts: int) -> Reading:
        value = metric.value if metric.datatype is not None else metric.value_as(declared.datatype)
        props = metric.properties or {}
        quality = conventions.quality_of(props.get(conventions.QUALITY))
        reason = props.get(conventions.REASON)
        unit = props.get(conventions.UNIT, declared.unit)
        if value is None or not _finite(value):
            quality, reason = Quality.BAD, "null value" if value is None else f"{value} value"
            value = declared.last
        elif not metric.is_historical:
            declared.last = value
        return Reading(
            device,
            declared.name,
            ts,
            value,
            quality,
            unit if isinstance(unit, str) else None,
            self._simulated,
            reason if isinstance(reason, str) or reason is None else str(reason),
        )

    def _dead(self, device: str, metrics: _Metrics, reason: str, ts: int) -> list[Reading]:
        return [
            Reading(device, m.name, ts, m.last, Quality.BAD, m.unit, self._simulated, reason)
            for m in metrics.by_name.values()
            if m.datatype.is_scalar
            and not m.name.startswith("Node Control/")
            and m.name != conventions.BD_SEQ
        ]


class _Unknown(_Refused):
    """A data metric that no birth declared."""


def _resolve(metrics: _Metrics, metric: Metric, index: int) -> _Declared:
    if metric.alias is not None:
        found = metrics.by_alias.get(metric.alias)
        if found is None:
            raise _Unknown(f"metrics[{index}]: unknown alias {metric.alias}")
        return found
    if metric.name is not None:
        found = metrics.by_name.get(metric.name)
        if found is None:
            raise _Unknown(f"metrics[{index}]: unknown metric {metric.name!r}")
        return found
    raise _Refused(f"metrics[{index}]: neither a name nor an alias")


def _bd_seq(payload: Payload) -> int | None:
    for metric in payload.metrics:
        if metric.name == conventions.BD_SEQ:
            value = metric.value_as(metric.datatype or DataType.INT64)
            return value if isinstance(value, int) and not isinstance(value, bool) else None
    return None


def _device_name(topic: Topic) -> str:
    if topic.device is None:
        return topic.edge_node
    return f"{topic.edge_node}/{topic.device}"


def rebirth_request(group: str, edge_node: str, reason: str, now_us: int) -> Rebirth:
    """The NCMD that asks `edge_node` for a rebirth (``Node Control/Rebirth`` = true)."""
    payload = Payload(
        timestamp=now_us // _US_PER_MS,
        metrics=(Metric(name=conventions.REBIRTH, datatype=DataType.BOOLEAN, value=True),),
    )
    topic = Topic(group, MessageType.NCMD, edge_node)
    return Rebirth(str(topic), _encode(payload), reason)


__all__ = ["HostSession", "Outcome", "Rebirth", "rebirth_request"]
