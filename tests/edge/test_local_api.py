"""The local API against its contract: every answer is exactly a model of `edge.api_contract`,
the OpenAPI at `/docs` is that module, and `/metrics` is Prometheus text a scraper can parse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from edge import api_contract as contract
from tests.edge.harness import agent_config, running_agent

pytestmark = pytest.mark.integration

ANSWERS: dict[str, Any] = {
    "/health": contract.Health,
    "/v1/gateway": contract.Gateway,
    "/v1/drivers": list[contract.Driver],
    "/v1/tags": list[contract.TagValue],
    "/v1/alarms": list[contract.Alarm],
    "/v1/outbox": contract.Outbox,
    "/v1/uplink": contract.Uplink,
    "/v1/dead-letters": contract.DeadLetters,
}


def exactly(answer: Any, raw: Any) -> None:
    """`raw` parses as `answer` and is exactly its JSON form: no field the contract lacks, none
    it names missing."""
    parsed = TypeAdapter(answer).validate_python(raw)
    assert TypeAdapter(answer).dump_python(parsed, mode="json") == raw


def dead_modbus(name: str) -> dict[str, Any]:
    """A Modbus device nobody answers for: it shows up as a driver, connecting."""
    tag = {"name": "flow", "table": "holding_register", "address": 0, "type": "float32"}
    return {"protocol": "modbus", "name": name, "host": "127.0.0.1", "port": 1,
            "timeout": 0.2, "reconnect_base": 0.1, "reconnect_cap": 0.2, "tags": [tag]}  # fmt: skip


async def test_every_answer_is_exactly_a_contract_model_and_docs_are_served(
    tmp_path: Path,
) -> None:
    config = agent_config(tmp_path / "state", [dead_modbus("pump1")])
    async with running_agent(config) as running:
        for path, answer in ANSWERS.items():
            response = await running.api.get(path)
            assert response.status_code in (200, 503), path
            exactly(answer, response.json())
        docs = await running.api.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
        schema = (await running.api.get("/openapi.json")).json()
    components = set(schema["components"]["schemas"])
    assert {"Gateway", "Driver", "TagValue", "Alarm", "Outbox", "Uplink", "WriteRequest"} <= (
        components
    )
    gateway = schema["paths"]["/v1/gateway"]["get"]["responses"]["200"]["content"]
    assert gateway["application/json"]["schema"] == {"$ref": "#/components/schemas/Gateway"}


async def test_metrics_escape_label_values_and_parse(tmp_path: Path) -> None:
    odd = 'pump "A"\\1\nline'
    config = agent_config(tmp_path / "state", [dead_modbus(odd)])
    async with running_agent(config) as running:
        text = (await running.api.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    connected = families["tagway_driver_connected"]
    assert [(s.labels, s.value) for s in connected.samples] == [({"device": odd}, 0.0)]
    assert families["tagway_readings_received"].type == "counter"
    assert 'device="pump \\"A\\"\\\\1\\nline"' in text
