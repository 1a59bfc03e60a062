"""Helpers for the remote-configuration tests: a gateway config that names the cloud, the
cloud's side of a push, and the channel's ``config`` event carried to the agent.

`deliver_channel` stands in for the edge side of the command channel (the two-way issue's
client, which dispatches the channel's events in the agent): it reads the real
``GET /v1/gateway/channel`` with the gateway's token and hands each ``config`` event to the
agent's remote configuration, as that client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from cloud.contract import DesiredConfig
from edge.agent import Agent
from tests.edge.cloud_harness import RunningCloud
from tests.edge.harness import config_data


def gateway_data(
    state_dir: Path, devices: list[dict[str, Any]], cloud: RunningCloud, *, probation: float = 5,
    managed_by: str = "cloud", **sections: Any,
) -> dict[str, Any]:  # fmt: skip
    """A config's sections: the test agent's, with the cloud and the fleet section."""
    token = state_dir.parent / "gateway.token"
    token.write_text(cloud.gateway_token)
    return config_data(
        state_dir, devices,
        cloud={"url": cloud.url, "gateway_id": cloud.gateway_id, "token_file": str(token),
               "retry_max_delay": 1.0},
        fleet={"managed_by": managed_by, "probation": probation, "status_interval": 5},
        **sections,
    )  # fmt: skip


def dump(data: dict[str, Any]) -> str:
    """The YAML text of a config."""
    return yaml.safe_dump(data, sort_keys=False)


class CloudUser:
    """The tenant admin pushing configs and watching rollouts."""

    def __init__(self, cloud: RunningCloud) -> None:
        self.cloud = cloud
        self.client = httpx.AsyncClient(
            base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.admin_key}"}, timeout=10
        )

    async def push(self, text: str, **target: Any) -> tuple[int, int]:
        """Store a version and roll it out (to the test gateway by default); (version, rollout)."""
        r = await self.client.post("/v1/configs", json={"document": text})
        r.raise_for_status()
        version = int(r.json()["version"])
        body = {"version": version, **(target or {"gateway_id": int(self.cloud.gateway_id)})}
        r = await self.client.post("/v1/rollouts", json=body)
        r.raise_for_status()
        return version, int(r.json()["id"])

    async def rollout(self, rollout_id: int) -> dict[str, Any]:
        """The rollout's document."""
        r = await self.client.get(f"/v1/rollouts/{rollout_id}")
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        return answer

    async def until_done(self, rollout_id: int, within: float = 30) -> dict[str, Any]:
        """Wait until the rollout is no longer running."""
        deadline = asyncio.get_running_loop().time() + within
        while (found := await self.rollout(rollout_id))["state"] == "running":
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"rollout still running: {found}")
            await asyncio.sleep(0.1)
        return found

    async def gateway_config(self, gateway_id: int | str | None = None) -> dict[str, Any]:
        """`GET /v1/gateways/{id}/config`."""
        r = await self.client.get(f"/v1/gateways/{gateway_id or self.cloud.gateway_id}/config")
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        return answer

    async def close(self) -> None:
        """Close the client."""
        await self.client.aclose()


@contextlib.asynccontextmanager
async def deliver_channel(cloud_url: str, token: str, agent: Agent) -> AsyncIterator[None]:
    """Carry the channel's ``config`` events to the agent while the block runs."""

    async def follow() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=cloud_url, timeout=httpx.Timeout(10, read=None)) as c:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    async with c.stream("GET", "/v1/gateway/channel", headers=headers) as stream:
                        event = ""
                        async for line in stream.aiter_lines():
                            if line.startswith("event:"):
                                event = line[6:].strip()
                            elif line.startswith("data:") and event == "config":
                                desired = DesiredConfig.model_validate(json.loads(line[5:]))
                                if agent.fleet is not None:
                                    agent.fleet.remote.offer(desired)
                await asyncio.sleep(0.2)

    task = asyncio.create_task(follow(), name="test-channel")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
