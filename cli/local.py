"""Finding and talking to a running agent's local API from the CLI and the TUI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from cli.errors import fail

DEFAULT_CONFIG = Path(os.environ.get("TAGWAY_CONFIG", "/etc/tagway/config.yaml"))


def api_base(config: Path | None, api: str | None) -> tuple[str, httpx.BaseTransport | None]:
    """The local API's base URL and transport: `--api` wins, else the agent's discovery file."""
    if api:
        return api.rstrip("/"), None
    from edge.config import load_config  # noqa: PLC0415 - only when no URL was given

    path = config or DEFAULT_CONFIG
    cfg = load_config(path)
    discovery = cfg.gateway.state_dir / "local_api.json"
    try:
        where = json.loads(discovery.read_text())
    except FileNotFoundError:
        fail(f"the agent for {path} is not running (no {discovery}); start it with `tagway run`")
    except (OSError, ValueError) as exc:
        fail(f"cannot read {discovery}: {exc}")
    if "socket" in where:
        return "http://agent", httpx.HTTPTransport(uds=where["socket"])
    return str(where["url"]), None


class LocalClient:
    """A small synchronous client for the local API."""

    def __init__(self, config: Path | None = None, api: str | None = None, timeout: float = 5.0):
        base, transport = api_base(config, api)
        self.base = base
        self._client = httpx.Client(base_url=base, transport=transport, timeout=timeout)

    def get(self, path: str, **params: Any) -> Any:
        """GET and decode JSON; a refused connection says the agent is not running."""
        try:
            response = self._client.get(path, params={k: v for k, v in params.items() if v})
        except httpx.ConnectError:
            fail(f"the agent is not answering at {self.base}; is `tagway run` running?")
        if response.status_code >= 400 and response.status_code != 503:
            fail(f"{path}: HTTP {response.status_code}: {_detail(response)}")
        return response.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST JSON and decode the answer."""
        try:
            response = self._client.post(path, json=body or {})
        except httpx.ConnectError:
            fail(f"the agent is not answering at {self.base}; is `tagway run` running?")
        if response.status_code >= 400:
            fail(_detail(response))
        return response.json()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:200]
