"""The independent Sparkplug B implementation the tests check tagway against.

`sparkplug-b-packets` (PyPI, a dev dependency) ships the Eclipse Tahu reference Python helpers
(`sparkplug_b.py`: addMetric, getNodeBirthPayload, ...) with their own compiled schema. Its
helpers keep ``seq`` and ``bdSeq`` in module globals and stamp metrics with the import time by
default, so these wrappers set both explicitly.
"""

from __future__ import annotations

import time
from typing import Any

from sparkplub_b_packets.core import sparkplug_b as tahu
from sparkplub_b_packets.core import sparkplug_b_pb2 as tahu_pb

MetricDataType = tahu.MetricDataType


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def payload(seq: int | None, timestamp: int | None = None) -> Any:
    """An empty Tahu payload with `seq` (None: no seq, as in NDEATH)."""
    message = tahu_pb.Payload()
    message.timestamp = now_ms() if timestamp is None else timestamp
    if seq is not None:
        message.seq = seq
    return message


def add(  # noqa: PLR0917 - the reference addMetric's own positional order
    message: Any,
    name: str | None,
    alias: int | None,
    datatype: int,
    value: object,
    timestamp: int | None = None,
    *,
    historical: bool = False,
) -> Any:
    """Tahu's addMetric with an explicit timestamp (its default is frozen at import)."""
    stamp = now_ms() if timestamp is None else timestamp
    if historical:
        metric = tahu.addMetric(message, name, alias, datatype, value, stamp)
        metric.is_historical = True
        return metric
    return tahu.addMetric(message, name, alias, datatype, value, stamp)


def decode(data: bytes) -> Any:
    """Parse bytes with Tahu's compiled schema."""
    message = tahu_pb.Payload()
    message.ParseFromString(data)
    return message


def add_null(message: Any, name: str | None, alias: int | None, datatype: int) -> Any:
    """Tahu's addNullMetric: a metric that has no value."""
    return tahu.addNullMetric(message, name, alias, datatype)
