"""The control API: a tiny HTTP/1.1 JSON server on loopback for tests, the demo and the CLI.

    GET    /health                 {"ok": true, "sim_time": ...}
    GET    /devices                what is served where (see `inventory`)
    GET    /values/<device>        the device's reported values
    GET    /counters               Modbus requests per device and function code, MQTT
                                   publishes per device and kind, OPC UA changes published
    POST   /counters/reset
    GET    /faults                 faults in force, with ids
    POST   /faults                 body: a fault (see `faults`), e.g.
                                   {"kind": "modbus_exception", "device": "pump1",
                                    "address": 0, "code": 2}   -> 201 {"id": 3}
    DELETE /faults[/<id>]          end one fault, or all
    POST   /scenario               body: {"name": "bearing_wear"} -> {"ids": [...]}
    POST   /write                  body: {"device": "pump1", "tag": "speed_setpoint", "value": 50}

One request per connection (`Connection: close`); bodies are limited to 64 KiB.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from firmware_sim.errors import SimError, UnknownDevice
from firmware_sim.faults import FAULT_ADAPTER
from firmware_sim.inventory import served_devices

if TYPE_CHECKING:
    from firmware_sim.plant import Plant

log = logging.getLogger(__name__)

_MAX_BODY: Final = 64 * 1024
_REASONS: Final = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    404: "Not Found",
    413: "Too Large",
}


class HttpError(SimError):
    """A request the control API answers with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlApi:
    """Serves the control routes for one plant."""

    def __init__(self, plant: Plant, *, host: str = "127.0.0.1", port: int = 0) -> None:
        """Control `plant` over HTTP on `host:port` (0 picks a free port)."""
        self.plant = plant
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind and accept requests."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting requests."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._answer(reader)
        except HttpError as exc:
            status, body = exc.status, {"error": str(exc)}
        payload = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the client left; nothing to tell it
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, Any]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise HttpError(400, "incomplete request head") from exc
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, path, _ = lines[0].split(" ", 2)
        except ValueError as exc:
            raise HttpError(400, f"bad request line {lines[0]!r}") from exc
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        length = int(headers.get("content-length", "0") or 0)
        if length > _MAX_BODY:
            raise HttpError(413, f"body over {_MAX_BODY} bytes")
        raw = await reader.readexactly(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from exc
        try:
            return self._route(method.upper(), path.split("?", 1)[0].rstrip("/"), body)
        except HttpError:
            raise
        except UnknownDevice as exc:
            raise HttpError(404, str(exc)) from exc
        except (SimError, ValidationError, KeyError, TypeError, ValueError) as exc:
            raise HttpError(400, str(exc)) from exc

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:  # noqa: PLR0911 - one return per route reads best
        plant = self.plant
        parts = path.strip("/").split("/")
        if (method, path) == ("GET", "/health"):
            return 200, {"ok": True, "sim_time": plant.model.sim_time}
        if (method, path) == ("GET", "/devices"):
            return 200, served_devices(plant)
        if method == "GET" and len(parts) == 2 and parts[0] == "values":
            return 200, {"device": parts[1], "values": plant.model.reported(parts[1])}
        if (method, path) == ("GET", "/counters"):
            return 200, plant.counters()
        if (method, path) == ("POST", "/counters/reset"):
            plant.reset_counters()
            return 200, {"ok": True}
        if (method, path) == ("GET", "/faults"):
            return 200, [
                {"id": r.id, "fault": r.fault.model_dump()} for r in plant.model.faults.active()
            ]
        if (method, path) == ("POST", "/faults"):
            record = plant.add_fault(FAULT_ADAPTER.validate_python(body))
            return 201, {"id": record.id}
        if method == "DELETE" and parts[0] == "faults":
            plant.clear_faults(int(parts[1]) if len(parts) == 2 else None)
            return 200, {"ok": True}
        if (method, path) == ("POST", "/scenario"):
            ids = [record.id for record in plant.apply_scenario(str(body["name"]))]
            return 200, {"ids": ids}
        if (method, path) == ("POST", "/write"):
            plant.model.write(str(body["device"]), str(body["tag"]), body["value"])
            return 200, {"ok": True}
        raise HttpError(404, f"no route {method} {path}")
