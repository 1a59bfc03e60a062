"""Helpers for agent tests: configs generated from what the simulated plant serves, and an
agent running in the background with a client on its local API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from edge.agent import Agent
from edge.config import AgentConfig, parse_config
from edge.credentials import UplinkIdentity
from firmware_sim.model import layout
from firmware_sim.plant import Plant
from firmware_sim.register_map import load_map


def modbus_devices(plant: Plant, *, interval: float = 0.2) -> list[dict[str, Any]]:
    """Agent device sections for every Modbus device the plant serves, from its register maps;
    writable tags get limits (0 to 100 for numbers, true/false for booleans)."""
    ports = plant.ports["modbus"]
    out = []
    for name, kind in layout(plant.config.devices):
        regmap = load_map(kind)
        required = ("name", "table", "address", "type")
        tags = [
            t.model_dump(exclude_none=True, exclude_defaults=True)
            | t.model_dump(include=set(required))
            | write_limits(t.writable, t.type)
            for t in regmap.tags
        ]
        out.append({
            "protocol": "modbus", "name": name, "host": "127.0.0.1", "port": ports[name],
            "unit_id": regmap.unit_id, "simulated": True, "timeout": 0.5,
            "reconnect_base": 0.1, "reconnect_cap": 0.5,
            "poll_groups": [{"name": "default", "interval": interval}], "tags": tags,
        })  # fmt: skip
    return out


def write_limits(writable: bool, kind: str) -> dict[str, Any]:
    """The limits tests give a writable tag."""
    if not writable:
        return {}
    return {"allowed": [True, False]} if kind in ("bool", "bit") else {"min": 0, "max": 100}


def agent_config(state_dir: Path, devices: list[dict[str, Any]], **sections: Any) -> AgentConfig:
    """A config with the local API on a free port and fast flushes."""
    return parse_config(yaml.safe_dump(config_data(state_dir, devices, **sections)), source="test")


def config_data(state_dir: Path, devices: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    """The sections of `agent_config`, to write into a config file."""
    return {
        "gateway": {"name": "test-gw", "state_dir": str(state_dir)},
        "outbox": {"flush_interval": 0.1, "quota": "64MiB"},
        "report": {"every_reading": True},
        "local_api": {"port": 0},
        "devices": devices,
        **sections,
    }


class RunningAgent:
    """An agent running in a background task, with an HTTP client on its local API."""

    def __init__(self, agent: Agent, api: httpx.AsyncClient) -> None:
        self.agent = agent
        self.api = api

    async def get(self, path: str) -> Any:
        response = await self.api.get(path)
        response.raise_for_status()
        return response.json()

    async def wait_for(self, predicate: Callable[[], Any], within: float = 15.0) -> None:
        """Poll an async predicate until it is truthy."""
        deadline = asyncio.get_running_loop().time() + within
        while not await predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_agent(
    config: AgentConfig, identity: UplinkIdentity | None = None, *, config_path: Path | None = None
) -> AsyncIterator[RunningAgent]:
    """Run an agent until the block ends, then stop it as SIGTERM would."""
    agent = Agent(config, identity=identity, config_path=config_path)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent-under-test")
    try:
        ready = asyncio.create_task(agent.ready.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=20, return_when="FIRST_COMPLETED")
        if task in done:
            ready.cancel()
            task.result()  # raises what killed it
        assert ready in done, "agent did not become ready"
        where = json.loads((config.gateway.state_dir / "local_api.json").read_text())
        token = Path(where["token_file"]).read_text().strip()  # noqa: ASYNC240 - tiny, once
        headers = {"Authorization": f"Bearer {token}", "X-Tagway-User": "test"}
        async with httpx.AsyncClient(base_url=where["url"], timeout=10, headers=headers) as api:
            yield RunningAgent(agent, api)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
