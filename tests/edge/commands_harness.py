"""Helpers for the two-way tests on the gateway: an agent that holds the command channel to a
real cloud (the FastAPI app on loopback, SQLite), and a cloud user who sends it commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.edge.cloud_harness import RunningCloud
from tests.edge.harness import config_data


def cloud_section(state_dir: Path, cloud: RunningCloud) -> dict[str, Any]:
    """The config's cloud section for the test gateway (its interim token in a file)."""
    token = state_dir.parent / "gateway.token"
    token.write_text(cloud.gateway_token)
    return {"url": cloud.url, "gateway_id": cloud.gateway_id, "token_file": str(token),
            "retry_max_delay": 1.0}  # fmt: skip


def gateway_config(
    state_dir: Path, devices: list[dict[str, Any]], cloud: RunningCloud, **sections: Any
) -> dict[str, Any]:
    """An agent config's sections with the cloud."""
    return config_data(state_dir, devices, cloud=cloud_section(state_dir, cloud), **sections)


class Operator:
    """A cloud user (the tenant's admin key) sending commands to the test gateway."""

    def __init__(self, cloud: RunningCloud) -> None:
        self.cloud = cloud
        self.gateway = cloud.gateway_id
        self.client = httpx.AsyncClient(
            base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.admin_key}"}, timeout=10
        )

    async def __aenter__(self) -> Operator:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.aclose()

    async def command(self, kind: str, args: dict[str, Any] | None = None,
                      **extra: Any) -> dict[str, Any]:  # fmt: skip
        """Queue a command; the cloud's answer."""
        body: dict[str, Any] = {"kind": kind, **extra}
        if args is not None:
            body["args"] = args
        r = await self.client.post(f"/v1/gateways/{self.gateway}/commands", json=body)
        assert r.status_code == 201, r.text
        answer: dict[str, Any] = r.json()
        return answer

    async def get(self, path: str, **params: Any) -> Any:
        """GET a cloud resource as the admin."""
        r = await self.client.get(path, params=params)
        r.raise_for_status()
        return r.json()

    async def finished(self, command_id: int, within: float = 20) -> dict[str, Any]:
        """Wait until the command left queued/delivered; the command."""
        deadline = asyncio.get_running_loop().time() + within
        path = f"/v1/gateways/{self.gateway}/commands/{command_id}"
        while (found := await self.get(path))["state"] in ("queued", "delivered"):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"command still {found['state']}: {found}")
            await asyncio.sleep(0.05)
        answer: dict[str, Any] = found
        return answer
