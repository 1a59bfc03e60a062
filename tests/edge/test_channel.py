"""The channel client's handling of what a cloud sends: a hostile or broken answer is counted
and survived, never an exception that stops the agent (unit tests on an in-memory transport;
the real cloud is in test_commands.py)."""

from __future__ import annotations

import asyncio
import json

import httpx

from cloud.contract import ChannelCommand, DesiredState
from edge.channel import ChannelHandlers, ChannelState, CommandChannel
from edge.credentials import UplinkIdentity

HELLO = json.dumps({"gateway_id": 1, "server_time": 1, "keepalive_s": 1.0})
COMMAND = json.dumps({"id": 7, "command": {"kind": "ping"}, "created_at": 1, "created_by": "key 1",
                      "expires_at": 2, "expires_in_s": 60.0})  # fmt: skip


def _sse(*events: tuple[str, str]) -> bytes:
    return b"".join(f"event: {k}\ndata: {d}\n\n".encode() for k, d in events) + b": keepalive\n\n"


async def _run(answers: list[httpx.Response], renewed: list[int]) -> tuple[
        list[ChannelCommand], list[DesiredState], CommandChannel]:  # fmt: skip
    commands: list[ChannelCommand] = []
    desired: list[DesiredState] = []
    served = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t0k"
        if not answers:
            served.set()
            return httpx.Response(503)
        return answers.pop(0)

    async def token() -> str:
        return "t0k"

    identity = UplinkIdentity(gateway_id="1", token=token, renew=lambda: renewed.append(1))
    channel = CommandChannel(
        base_url="http://cloud", identity=identity, retry_max_delay=0.05,
        handlers=ChannelHandlers(command=commands.append, desired=desired.append),
        transport=httpx.MockTransport(handler),
    )  # fmt: skip
    task = asyncio.create_task(channel.run())
    await asyncio.wait_for(served.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return commands, desired, channel


async def test_bad_events_are_counted_and_good_ones_still_delivered() -> None:
    desired = json.dumps({"version": 3, "setpoints": {}, "server_time": 5})
    body = _sse(("hello", HELLO), ("command", "{not json"), ("command", '{"id": -1}'),
                ("desired", desired), ("command", COMMAND), ("surprise", "{}"))  # fmt: skip
    renewed: list[int] = []
    commands, states, channel = await _run([httpx.Response(200, content=body)], renewed)
    assert [c.id for c in commands] == [7]
    assert [d.version for d in states] == [3]
    assert channel.status.bad_events == 2
    assert channel.status.connections == 1
    assert channel.status.state is ChannelState.STOPPED


async def test_a_refused_token_is_renewed_and_a_stream_without_hello_retried() -> None:
    renewed: list[int] = []
    answers = [
        httpx.Response(401),
        httpx.Response(200, content=_sse(("command", COMMAND))),  # no hello: not trusted
        httpx.Response(200, content=_sse(("hello", "[]"))),  # a hello that does not parse
        httpx.Response(200, content=_sse(("hello", HELLO), ("command", COMMAND))),
    ]
    commands, _, channel = await _run(answers, renewed)
    assert renewed == [1]
    assert [c.id for c in commands] == [7]  # only from the connection that said hello
    assert channel.status.connections == 1
    assert channel.status.last_error is not None
