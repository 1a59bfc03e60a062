"""Helpers of the fleet tests: push a config, roll it out, act as the gateway reporting."""

from __future__ import annotations

from typing import Any

from cloud.contract import ConfigReport, StatusReport, config_digest
from tests.cloud.conftest import Cloud, now_us
from tests.cloud.live_support import batch_with_events

CONFIG = """\
# plant A, line 2
gateway: {name: gw, state_dir: /var/lib/tagway}
fleet: {managed_by: cloud, probation: 10}
mqtt_broker:
  users:
    - {username: tank1, password_hash: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"}
devices: []
"""


async def push(cloud: Cloud, token: str, document: str = CONFIG, **extra: Any) -> int:
    """Store a version; its number."""
    r = await cloud.client.post(
        "/v1/configs", json={"document": document, **extra}, headers=cloud.auth(token)
    )
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


async def rollout(cloud: Cloud, token: str, version: int, **target: Any) -> dict[str, Any]:
    """Start a rollout; its document."""
    r = await cloud.client.post(
        "/v1/rollouts", json={"version": version, **target}, headers=cloud.auth(token)
    )
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    return answer


class Reporter:
    """A gateway's reports, each in its own batch as the outbox would send them."""

    def __init__(self, cloud: Cloud, gateway: tuple[int, str]) -> None:
        self.cloud = cloud
        self.gateway = gateway
        self.seq = 0

    async def send(self, *events: Any) -> None:
        """Post the events in one batch."""
        self.seq += 1
        body = batch_with_events(self.gateway[0], 1_000 + self.seq, list(events))
        r = await self.cloud.post(self.gateway[1], body)
        assert r.status_code == 200, r.text

    def config(
        self, outcome: str, version: int | None, *, document: str = CONFIG, **extra: Any
    ) -> ConfigReport:
        """A config report about `document` (its digest)."""
        self.seq += 1
        fields: dict[str, Any] = {
            "type": "config", "seq": self.seq, "version": version,
            "digest": config_digest(document), "outcome": outcome,
            "running_version": version if outcome in ("applied", "probation") else None,
            "running_digest": config_digest(document), "managed": "cloud", "at": now_us(),
        }  # fmt: skip
        return ConfigReport(**(fields | extra))

    def status(self, **extra: Any) -> StatusReport:
        """A status document (healthy unless `extra` says otherwise)."""
        self.seq += 1
        fields: dict[str, Any] = {
            "type": "status", "seq": self.seq, "ts": now_us(), "agent_version": "0.1.0",
            "uptime_s": 12.5, "drivers": [{"name": "pump1", "state": "connected"}],
            "clock_synchronized": True, "clock_offset_s": 0.01,
        }  # fmt: skip
        return StatusReport(**(fields | extra))
