"""Tag models made smaller for the agent's life: the same values, about half the memory."""

from __future__ import annotations

import json
import tracemalloc

from edge.config import EdgeModbusTag, EdgeOpcUaTag, parse_config
from edge.config_compact import compact_models


def _modbus(count: int) -> list[EdgeModbusTag]:
    return [
        EdgeModbusTag.model_validate(
            {"name": f"aux_{i:04d}", "table": "input_register", "address": 2 * i, "type": "float32"}
        )
        for i in range(count)
    ]


def test_compacted_tags_read_compare_dump_and_copy_as_before_in_half_the_memory() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        plain = _modbus(2000)
        middle = tracemalloc.take_snapshot()
        compacted = _modbus(2000)
        assert compact_models(compacted) == 2000
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    plain_bytes = sum(s.size_diff for s in middle.compare_to(before, "filename"))
    compacted_bytes = sum(s.size_diff for s in after.compare_to(middle, "filename"))
    assert compacted_bytes < 0.6 * plain_bytes, (compacted_bytes, plain_bytes)

    for a, b in zip(plain, compacted, strict=True):
        assert a == b
        assert hash(a) == hash(b)
        assert a.model_dump() == b.model_dump()
        assert b.model_fields_set == {"name", "table", "address", "type"}
    tag = compacted[7]
    assert (tag.address, tag.end, tag.scaled, tag.unit) == (14, 16, False, None)
    copy = tag.model_copy(update={"unit": "bar"})
    assert copy.unit == "bar"
    assert tag.unit is None
    assert "unit" in copy.model_fields_set
    assert (
        tag.model_fields_set
        == compacted[8].model_fields_set
        == {"name", "table", "address", "type"}
    )


def test_a_parsed_config_has_compacted_tags() -> None:
    config = parse_config(json.dumps({
        "gateway": {"name": "g"},
        "devices": [
            {"protocol": "modbus", "name": "m", "host": "127.0.0.1", "port": 502, "tags": [
                {"name": "a", "table": "holding_register", "address": 0, "type": "uint16"},
                {"name": "b", "table": "holding_register", "address": 1, "type": "uint16",
                 "unit": "bar"},
                {"name": "c", "table": "holding_register", "address": 2, "type": "uint16"},
            ]},
            {"protocol": "opcua", "name": "u", "endpoint": "opc.tcp://127.0.0.1:4840", "tags": [
                {"name": "x", "node_id": "ns=2;s=x"}, {"name": "y", "node_id": "ns=2;s=y"},
            ]},
        ],
    }))  # fmt: skip
    modbus, opcua = config.devices
    a, b, c = modbus.tags  # type: ignore[union-attr]
    assert a.model_fields_set is c.model_fields_set  # one set for equal sets
    assert b.model_fields_set is not a.model_fields_set
    assert b.unit == "bar"
    assert a.unit is None
    x, y = opcua.tags  # type: ignore[union-attr]
    assert isinstance(x, EdgeOpcUaTag)
    assert x.model_fields_set is y.model_fields_set
    assert (x.node_id, y.node_id) == ("ns=2;s=x", "ns=2;s=y")
