"""An async client for the agent's local API, made for a UI that must outlive the agent.

Every call finds the agent again when the last one failed: an agent restarted on port 0 gets a new
port and rewrites its discovery file, and the TUI follows it without being restarted.

Errors:

    AgentClientError        root of this module's errors
     ├── AgentUnavailable   nobody answers: no discovery file, connection refused, timeout
     └── AgentRefused       the agent answered, but with an error or an answer we cannot read
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import httpx
from pydantic import ValidationError

from cli.tui.model import AlarmsEvent, ReadingsEvent, Snapshot, StreamEvent
from edge.api_contract import (
    ALARM_CHANGES,
    ALARMS,
    DRIVERS,
    TAGS,
    AckResult,
    DeadLetters,
    Gateway,
    Health,
    Outbox,
    Shelved,
    ShelveRequest,
    Unshelved,
    Uplink,
    WriteRequest,
    WriteResult,
)


class AgentClientError(Exception):
    """Root of the TUI client's errors."""


class AgentUnavailable(AgentClientError):
    """No agent answers where we looked (`where` says where that was)."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(message)
        self.where = where


class AgentRefused(AgentClientError):
    """The agent answered with an error status, or with something we could not read."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the local API listens: a base URL, or a unix socket."""

    url: str
    socket: str | None = None
    token: str | None = None  # the local API token: acknowledging and writing need it


class Locator(Protocol):
    """Finds the agent's local API; asked again after every failure."""

    @property
    def where(self) -> str:
        """Where we look, for messages."""
        ...

    async def locate(self) -> Endpoint:
        """The endpoint, or `AgentUnavailable`."""
        ...


@dataclass(frozen=True, slots=True)
class FixedUrl:
    """A local API URL given on the command line (`--api`)."""

    url: str
    token_file: Path | None = None

    @property
    def where(self) -> str:
        """The URL."""
        return self.url

    async def locate(self) -> Endpoint:
        """The URL as given."""
        token = await _read_token(self.token_file) if self.token_file is not None else None
        return Endpoint(self.url.rstrip("/"), token=token)


@dataclass(frozen=True, slots=True)
class DiscoveryFile:
    """The `<state_dir>/local_api.json` a running agent writes."""

    path: Path

    @property
    def where(self) -> str:
        """The file."""
        return str(self.path)

    async def locate(self) -> Endpoint:
        """Read the file (off the event loop: the state dir may sit on a slow card)."""
        try:
            text = await asyncio.to_thread(self.path.read_text)
        except FileNotFoundError:
            raise AgentUnavailable(f"no {self.path}", where=str(self.path)) from None
        except OSError as exc:
            raise AgentUnavailable(f"cannot read {self.path}: {exc}", where=str(self.path)) from exc
        try:
            where = json.loads(text)
            named = where.get("token_file")
            token = await _read_token(Path(named)) if named else None
            if "socket" in where:
                return Endpoint("http://agent", socket=str(where["socket"]), token=token)
            return Endpoint(str(where["url"]).rstrip("/"), token=token)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # The agent may be writing it right now; the next attempt reads it whole.
            raise AgentUnavailable(f"{self.path} is unreadable", where=str(self.path)) from exc


async def _read_token(path: Path) -> str | None:
    """The local API token, or None when this user may not read it (then the TUI shows, and
    the agent refuses, what needs it)."""
    try:
        return (await asyncio.to_thread(path.read_text)).strip() or None
    except OSError:
        return None


class AgentClient:
    """The local API as the TUI uses it.

    Args:
        locator: where to find the agent (`FixedUrl` or `DiscoveryFile`).
        timeout: seconds for one request.
    """

    def __init__(self, *, locator: Locator, timeout: float = 5.0) -> None:
        self.locator = locator
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._endpoint: Endpoint | None = None
        self._closed = False
        # The poll and the stream both open the connection; one must not replace (and leak)
        # the pool the other is already using.
        self._opening = asyncio.Lock()

    @property
    def where(self) -> str:
        """Where the agent is (its URL once found), for messages."""
        return self._endpoint.url if self._endpoint is not None else self.locator.where

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool for good: later calls raise `AgentUnavailable`."""
        self._closed = True
        await self._drop()

    async def _drop(self) -> None:
        http, self._http, self._endpoint = self._http, None, None
        if http is not None:
            await http.aclose()

    async def snapshot(self) -> Snapshot:
        """One consistent-enough view of the agent: all read endpoints, fetched concurrently."""
        paths = ("/v1/gateway", "/health", "/v1/drivers", "/v1/tags", "/v1/alarms",
                 "/v1/outbox", "/v1/uplink", "/v1/dead-letters")  # fmt: skip
        http = await self._connection()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._get(http, p), name=f"tui-get{p}") for p in paths]
        except ExceptionGroup as failed:
            raise _first(failed.exceptions) from None
        gateway, health, drivers, tags, alarms, outbox, uplink, dead = (t.result() for t in tasks)
        try:
            return Snapshot(
                gateway=Gateway.model_validate_json(gateway),
                health=Health.model_validate_json(health),
                drivers=DRIVERS.validate_json(drivers), tags=TAGS.validate_json(tags),
                alarms=ALARMS.validate_json(alarms), outbox=Outbox.model_validate_json(outbox),
                uplink=Uplink.model_validate_json(uplink),
                dead_letters=DeadLetters.model_validate_json(dead),
            )  # fmt: skip
        except ValidationError as exc:
            raise AgentRefused(f"unexpected answer from the agent: {exc}") from exc

    async def acknowledge(self, alarm: str) -> bool:
        """Acknowledge an alarm; False when there was nothing to acknowledge."""
        http = await self._connection()
        try:
            response = await http.post(f"/v1/alarms/{alarm}/ack")
        except httpx.HTTPError as exc:
            raise await self._unavailable(exc) from exc
        body = _decode(response, f"/v1/alarms/{alarm}/ack")
        try:
            return AckResult.model_validate_json(body).acknowledged
        except ValidationError as exc:
            raise AgentRefused(f"unexpected answer from the agent: {exc}") from exc

    async def shelve(self, alarm: str, *, duration_s: float, reason: str, by: str) -> Shelved:
        """Shelve an alarm for `duration_s`; AgentRefused says why when the agent refuses."""
        request = ShelveRequest(duration_s=duration_s, reason=reason, by=by)
        path = f"/v1/alarms/{alarm}/shelve"
        http = await self._connection()
        try:
            response = await http.post(path, json=request.model_dump(mode="json"))
        except httpx.HTTPError as exc:
            raise await self._unavailable(exc) from exc
        try:
            return Shelved.model_validate_json(_decode(response, path))
        except ValidationError as exc:
            raise AgentRefused(f"unexpected answer from the agent: {exc}") from exc

    async def unshelve(self, alarm: str, *, by: str) -> bool:
        """Put a shelved alarm back; False when it was not shelved."""
        path = f"/v1/alarms/{alarm}/shelve"
        http = await self._connection()
        try:
            response = await http.delete(path, params={"by": by})
        except httpx.HTTPError as exc:
            raise await self._unavailable(exc) from exc
        try:
            return Unshelved.model_validate_json(_decode(response, path)).unshelved
        except ValidationError as exc:
            raise AgentRefused(f"unexpected answer from the agent: {exc}") from exc

    async def write(self, device: str, tag: str, value: float | int | bool | str) -> WriteResult:
        """Write a setpoint through the agent's write door; AgentRefused carries the agent's
        reason (outside the limits, not writable, no token)."""
        request = WriteRequest(device=device, tag=tag, value=value)
        http = await self._connection()
        try:
            response = await http.post("/v1/write", json=request.model_dump(mode="json"),
                                       timeout=max(self.timeout, 15.0))  # fmt: skip
        except httpx.HTTPError as exc:
            raise await self._unavailable(exc) from exc
        if response.status_code >= 400:
            try:
                reason = str(response.json().get("detail", response.text))
            except ValueError:
                reason = response.text[:200]
            raise AgentRefused(reason, status=response.status_code)
        try:
            return WriteResult.model_validate_json(response.content)
        except ValidationError as exc:
            raise AgentRefused(f"unexpected answer from the agent: {exc}") from exc

    async def follow(self, on_event: Callable[[StreamEvent], Awaitable[None] | None]) -> None:
        """Deliver live stream events to `on_event` until the stream ends or fails."""
        http = await self._connection()
        # The agent sends a keepalive every second; ten silent seconds mean it is gone.
        timeout = httpx.Timeout(self.timeout, read=10.0)
        try:
            async with http.stream("GET", "/v1/stream", timeout=timeout) as response:
                if response.status_code != 200:
                    raise AgentRefused(f"/v1/stream: HTTP {response.status_code}",
                                       status=response.status_code)  # fmt: skip
                parser = SseParser()
                async for line in response.aiter_lines():
                    for event in parser.feed(line):
                        result = on_event(event)
                        if result is not None:
                            await result
        except httpx.HTTPError as exc:
            raise await self._unavailable(exc) from exc

    async def _connection(self) -> httpx.AsyncClient:
        if self._closed:
            raise AgentUnavailable("the client is closed", where=self.locator.where)
        async with self._opening:
            if self._http is None:
                endpoint = await self.locator.locate()
                transport = (
                    httpx.AsyncHTTPTransport(uds=endpoint.socket) if endpoint.socket else None
                )
                headers = {"X-Tagway-User": "tui"}
                if endpoint.token is not None:
                    headers["Authorization"] = f"Bearer {endpoint.token}"
                self._http = httpx.AsyncClient(
                    base_url=endpoint.url, transport=transport, timeout=self.timeout,
                    headers=headers,
                )  # fmt: skip
                self._endpoint = endpoint
            return self._http

    async def _get(self, http: httpx.AsyncClient, path: str) -> bytes:
        try:
            response = await http.get(path)
        except httpx.HTTPError as exc:
            raise await self._unavailable(exc) from exc
        return _decode(response, path)

    async def _unavailable(self, exc: httpx.HTTPError) -> AgentClientError:
        where = self.where
        await self._drop()  # find the agent afresh next time: it may come back on another port
        if isinstance(exc, httpx.TransportError):
            return AgentUnavailable(f"no answer at {where} ({type(exc).__name__})", where=where)
        return AgentRefused(f"{where}: {exc}")


def _decode(response: httpx.Response, path: str) -> bytes:
    """The answer's body, for the contract's models to parse (JSON errors are theirs to name)."""
    # /health answers 503 with its JSON body when degraded; that is an answer, not a failure.
    if response.status_code >= 400 and not (path == "/health" and response.status_code == 503):
        raise AgentRefused(f"{path}: HTTP {response.status_code}: {response.text[:200]}",
                           status=response.status_code)  # fmt: skip
    return response.content


def _first(errors: Iterable[BaseException]) -> BaseException:
    """The error to report from a failed gather: an unavailable agent explains the rest."""
    found = list(errors)
    for error in found:
        if isinstance(error, AgentUnavailable):
            return error
    for error in found:
        if isinstance(error, AgentClientError):
            return error
    return found[0]


class SseParser:
    """Server-sent events, line by line, into stream events (comments and unknown kinds skipped)."""

    def __init__(self) -> None:
        self._kind = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[StreamEvent]:
        """Take one line (without its newline); yields an event when a blank line ends one."""
        if line.startswith(":"):
            return
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._kind = value
            elif name == "data":
                self._data.append(value)
            return
        kind, data = self._kind, "\n".join(self._data)
        self._kind, self._data = "message", []
        if not data:
            return
        try:
            if kind == "reading":
                yield ReadingsEvent(TAGS.validate_json(data))
            elif kind == "alarm":
                yield AlarmsEvent(ALARM_CHANGES.validate_json(data))
        except ValidationError as exc:
            raise AgentRefused(f"/v1/stream: unreadable {kind} event") from exc
