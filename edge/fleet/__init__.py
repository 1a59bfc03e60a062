"""Fleet management on the gateway: remote configuration with probation and rollback, and the
status document the cloud judges the gateway's health by.

- `edge.fleet.versions`: the version files and the record next to the config file (crash-safe);
- `edge.fleet.probation`: what a new config must show, and the wait for it;
- `edge.fleet.remote`: a trial (validate, apply, probation, roll back) and local edits;
- `edge.fleet.status`: the status document, on change and at least every interval;
- `edge.fleet.cloud_client`: the cloud's config endpoints (fetch, drift upload, adopt).

`Fleet` ties them to a running agent: its reports go into the outbox's event lane like every
other event, so they survive outages and kill -9.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from cloud.contract import AnyEvent
from edge.fleet.cloud_client import CloudConfigClient
from edge.fleet.probation import Link, Observed
from edge.fleet.remote import EX_RESTART, AgentHooks, RemoteConfig
from edge.fleet.status import StatusReporter
from edge.fleet.versions import ConfigVersions
from edge.reload import ReloadResult
from edge.runtime import Runtime, event_emitter

__all__ = ["EX_RESTART", "Fleet", "observe"]


def observe(rt: Runtime) -> Observed:
    """The devices' links and the uplink's last success, as probation judges them."""
    links = {}
    for name, slot in rt.supervisor.slots.items():
        links[name] = Link(connected=slot.healthy, last_error=slot.error().current)
    uplink = rt.uplink.status if rt.uplink is not None else None
    return Observed(
        links=links,
        uplink_success=uplink.last_success if uplink is not None else None,
        uplink_error=uplink.last_error if uplink is not None else None,
    )


class Fleet:
    """Remote configuration and status reports of one running agent.

    Args:
        runtime: the agent's resources.
        versions: the config file's versions and record.
        reload: the agent's reload (the SIGHUP path).
        restart: stop the agent with `EX_RESTART` (systemd starts it again).
    """

    def __init__(
        self,
        *,
        runtime: Runtime,
        versions: ConfigVersions,
        reload: Callable[[], Awaitable[ReloadResult]],
        restart: Callable[[], None],
    ) -> None:
        self.runtime = runtime
        client = None
        cloud = runtime.config.current.cloud
        if cloud is not None and runtime.identity is not None:
            client = CloudConfigClient(base_url=cloud.url, identity=runtime.identity,
                                       timeout=cloud.read_timeout)  # fmt: skip
        hooks = AgentHooks(
            config=lambda: runtime.config.current, reload=reload,
            observe=lambda: observe(runtime), emit=self.emit, restart=restart,
        )  # fmt: skip
        self.remote = RemoteConfig(versions=versions, hooks=hooks, cloud=client)
        self.status = StatusReporter(runtime=runtime, versions=versions, emit=self.emit)

    async def emit(self, events: Sequence[AnyEvent]) -> None:
        """Put events into the outbox's event lane (committed when this returns)."""
        await event_emitter(self.runtime.outbox, self.runtime.uplink)(events)

    async def run(self) -> None:
        """Remote configuration and status reports, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.remote.run(), name="fleet-remote-config")
            group.create_task(self.status.run(), name="fleet-status")
