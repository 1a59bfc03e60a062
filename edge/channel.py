"""The gateway's command channel: one outbound request the cloud answers with events.

The gateway never opens an inbound port. It keeps ``GET /v1/gateway/channel`` open (server-sent
events, its normal token) and the cloud sends there, within moments of each change:

- ``hello`` (who the cloud thinks is connected, its clock, the keepalive interval);
- ``config`` (the config version the cloud wants it to run) → `edge.fleet`;
- ``desired`` (the shadow's desired setpoints) → `edge.shadow`;
- ``command`` (each pending command, again on every connection until its result arrives)
  → `edge.commands`.

The cloud ends a connection after a few minutes; the channel reconnects at once. A connection
that fails before its ``hello`` (cloud down, 5xx, refused token) is retried with tenacity's
jittered exponential backoff (capped), the token renewed after a 401. Everything the cloud sends
is parsed strictly: a bad event is logged and counted, never an exception that stops the task.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from cloud.contract import ChannelCommand, ChannelHello, DesiredConfig, DesiredState
from edge.credentials import UplinkIdentity
from edge.errors import EdgeError

log = logging.getLogger(__name__)

_MAX_LINE = 4 * 1024 * 1024  # a desired document of 10,000 setpoints fits with room to spare


class ChannelDown(EdgeError):
    """The channel could not be opened (or was cut before the cloud said hello)."""


class ChannelState(enum.StrEnum):
    """Where the channel is: connecting → connected → (ended) connecting, or → backoff."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(slots=True)
class ChannelStatus:
    """What the local API shows of the channel."""

    state: ChannelState = ChannelState.STOPPED
    since: float | None = None
    connections: int = 0
    commands: int = 0
    bad_events: int = 0
    last_error: str | None = None

    def move(self, state: ChannelState, error: str | None = None) -> None:
        """Enter `state` (keeping the last error unless a new one is given)."""
        self.state, self.since = state, time.time()
        if error is not None:
            self.last_error = error


@dataclass(frozen=True, slots=True)
class ChannelHandlers:
    """What the agent does with each event (each returns at once; work happens elsewhere)."""

    command: Callable[[ChannelCommand], None]
    desired: Callable[[DesiredState], None] | None = None
    config: Callable[[DesiredConfig], None] | None = None


class CommandChannel:
    """Holds the channel open and hands its events to `handlers`.

    Args:
        base_url: the cloud's URL (the config's ``cloud.url``).
        identity: the gateway's token source.
        handlers: what to do with each event.
        connect_timeout: seconds to connect.
        retry_max_delay: cap of the backoff between failed connections.
        transport: an httpx transport (tests); the default network one otherwise.
    """

    def __init__(
        self,
        *,
        base_url: str,
        identity: UplinkIdentity,
        handlers: ChannelHandlers,
        connect_timeout: float = 5.0,
        retry_max_delay: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/gateway/channel"
        self.identity = identity
        self.handlers = handlers
        self.status = ChannelStatus()
        self._connect_timeout = connect_timeout
        self._retry_max_delay = retry_max_delay
        self._transport = transport
        self.connected = asyncio.Event()  # set while a connection has said hello

    async def run(self) -> None:
        """Keep the channel open until cancelled."""
        async with httpx.AsyncClient(transport=self._transport) as client:
            try:
                while True:
                    retrying = AsyncRetrying(
                        wait=wait_random_exponential(multiplier=0.2, max=self._retry_max_delay),
                        retry=retry_if_exception_type(ChannelDown),
                        before_sleep=lambda _: self.status.move(ChannelState.BACKOFF),
                    )
                    async for attempt in retrying:
                        with attempt:
                            await self._connection(client)
            finally:
                self.connected.clear()
                self.status.move(ChannelState.STOPPED)

    async def _connection(self, client: httpx.AsyncClient) -> None:
        """One connection: returns when it ended after a hello, raises `ChannelDown` before."""
        self.status.move(ChannelState.CONNECTING)
        try:
            token = await self.identity.token()
        except EdgeError as exc:  # an unreadable token file, a certificate being rotated
            self.status.move(ChannelState.BACKOFF, f"no token: {exc}")
            raise ChannelDown(f"no token: {exc}") from exc
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        # The cloud sends a keepalive every few seconds; a minute of silence is a dead link.
        timeout = httpx.Timeout(60.0, connect=self._connect_timeout)
        hello = False
        try:
            async with client.stream("GET", self.url, headers=headers, timeout=timeout) as answer:
                self._check(answer)
                async for kind, data in _events(answer):
                    if kind == "hello":
                        hello = self._hello(data)
                    elif hello:
                        self._dispatch(kind, data)
                    else:  # not the channel as the contract has it: nothing is acted on
                        self.status.bad_events += 1
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
            if not hello:
                self.status.move(ChannelState.BACKOFF, error)
                raise ChannelDown(error) from exc
            self.status.last_error = error
        except ChannelDown as exc:
            self.status.move(ChannelState.BACKOFF, str(exc))
            raise
        finally:
            self.connected.clear()
        if not hello:
            raise ChannelDown(f"{self.url}: the stream ended before the cloud said hello")

    def _check(self, answer: httpx.Response) -> None:
        if answer.status_code == 401:
            self.identity.renew()  # the next connection mints a fresh token
        if answer.status_code != 200:
            raise ChannelDown(f"{self.url}: HTTP {answer.status_code}")

    def _hello(self, data: str) -> bool:
        try:
            ChannelHello.model_validate_json(data)
        except ValidationError as exc:
            self.status.bad_events += 1
            raise ChannelDown(f"the cloud's hello does not parse: {exc}") from exc
        self.status.connections += 1
        self.status.move(ChannelState.CONNECTED)
        self.connected.set()
        return True

    def _dispatch(self, kind: str, data: str) -> None:
        handlers = self.handlers
        try:
            if kind == "command":
                self.status.commands += 1
                handlers.command(ChannelCommand.model_validate_json(data))
            elif kind == "desired" and handlers.desired is not None:
                handlers.desired(DesiredState.model_validate_json(data))
            elif kind == "config" and handlers.config is not None:
                handlers.config(DesiredConfig.model_validate_json(data))
        except (ValidationError, ValueError) as exc:
            self.status.bad_events += 1
            log.warning("channel: a %s event that does not parse was ignored: %s", kind,
                        str(exc)[:500])  # fmt: skip


async def _events(answer: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (event, data) pairs; comments (keepalives) skipped."""
    kind, data = "message", list[str]()
    async for line in answer.aiter_lines():
        if len(line) > _MAX_LINE:
            raise ChannelDown(f"an event line of {len(line)} characters")
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
