"""A loopback TCP proxy that can cut the link: a failing switch between gateway and server."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards connections on a free 127.0.0.1 port to `target_port`.

    `cut()` closes every forwarded connection at once (both ends see the link die) and, while
    `blocked`, new connections are accepted and closed immediately: the server stays up, the
    network between is down. `freeze()` stops forwarding on the open connections without closing
    them: a half-open link that only a keep-alive can detect.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blocked = False
        self.accepted = 0  # connections accepted (and forwarded or refused)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._flowing: set[asyncio.Event] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    def url(self, path: str = "/tagway-test") -> str:
        """The endpoint URL through the proxy."""
        return f"opc.tcp://127.0.0.1:{self.port}{path}"

    def cut(self) -> None:
        """Drop every open connection."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for flowing in self._flowing:
            flowing.set()

    def freeze(self) -> None:
        """Stop forwarding on every open connection, leaving them open; new ones still work."""
        for flowing in self._flowing:
            flowing.clear()
        self._flowing = set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})
        flowing = asyncio.Event()
        flowing.set()
        self._flowing.add(flowing)
        for src, dst, name in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            task = asyncio.create_task(
                self._pump(src, dst, flowing), name=f"proxy-{name}-{self.port}"
            )
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                await flowing.wait()  # frozen: hold everything, close nothing
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
