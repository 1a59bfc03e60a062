"""Finding and talking to a running agent's local API from the CLI and the TUI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx

from cli.errors import fail

if TYPE_CHECKING:  # pydantic is imported when an answer is parsed: `--help` stays fast
    from pydantic import BaseModel, TypeAdapter

    from edge.config import AgentConfig

M = TypeVar("M", bound="BaseModel")
T = TypeVar("T")

DEFAULT_CONFIG = Path(os.environ.get("TAGWAY_CONFIG", "/etc/tagway/config.yaml"))


def api_base(config: Path | None, api: str | None) -> tuple[str, httpx.BaseTransport | None]:
    """The local API's base URL and transport: `--api` wins, else the agent's discovery file."""
    if api:
        return api.rstrip("/"), None
    where = _discovery(config)
    if "socket" in where:
        return "http://agent", httpx.HTTPTransport(uds=where["socket"])
    return str(where["url"]), None


def api_token(config: Path | None, api: str | None) -> str | None:
    """The local API token that lets this user write and acknowledge: `TAGWAY_API_TOKEN_FILE`,
    else the file the agent's discovery names (None when neither can be read: reading works
    without it, acting is refused with the agent's reason)."""
    named = os.environ.get("TAGWAY_API_TOKEN_FILE")
    if named:
        path = Path(named)
    elif api and config is None:
        return None
    else:
        token_file = _discovery(config).get("token_file")
        if not token_file:
            return None
        path = Path(token_file)
    try:
        return path.read_text().strip() or None
    except PermissionError:
        fail(f"cannot read the local API token {path}: writing and acknowledging need it; "
             "run as root or as the agent's user")  # fmt: skip
    except OSError:
        return None


def fixed_url(cfg: AgentConfig) -> str | None:
    """The local API's URL as the config names it, None when only the discovery file knows it
    (port 0, or a unix socket)."""
    api = cfg.local_api
    return api.url() if api.socket is None and api.port else None


def _discovery(config: Path | None) -> dict[str, str]:
    from edge.config import load_config  # noqa: PLC0415 - only when no URL was given

    path = config or DEFAULT_CONFIG
    cfg = load_config(path)
    discovery = cfg.gateway.state_dir / "local_api.json"
    try:
        where = json.loads(discovery.read_text())
    except FileNotFoundError:
        fail(f"the agent for {path} is not running (no {discovery}); start it with `tagway run`")
    except PermissionError:
        # A packaged agent's state directory is its own (0700): an installer who is not root
        # still reads the agent at the fixed address its config names. Acting needs the token,
        # which stays the agent's (the agent then says so).
        if url := fixed_url(cfg):
            return {"url": url}
        fail(
            f"cannot read {discovery} (the agent's state directory is not this user's), "
            f"and {path} names no fixed local API port; run as root or the agent's user"
        )
    except (OSError, ValueError) as exc:
        fail(f"cannot read {discovery}: {exc}")
    if not isinstance(where, dict):
        fail(f"{discovery} is not the agent's discovery file")
    return {str(k): str(v) for k, v in where.items()}


class LocalClient:
    """A small synchronous client for the local API; answers are parsed with the models of
    `edge.api_contract`, so a field the agent no longer sends fails here, not in a print."""

    def __init__(self, config: Path | None = None, api: str | None = None, timeout: float = 5.0):
        base, transport = api_base(config, api)
        self.base = base
        headers = {"X-Tagway-User": _user()}
        token = api_token(config, api)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(base_url=base, transport=transport, timeout=timeout,
                                    headers=headers)  # fmt: skip

    def get(self, path: str, answer: type[M], **params: str | None) -> M:
        """GET one answer; a refused connection says the agent is not running."""
        from pydantic import TypeAdapter  # noqa: PLC0415 - see the top

        return self.get_as(path, TypeAdapter(answer), **params)

    def get_as(self, path: str, answer: TypeAdapter[T], **params: str | None) -> T:
        """GET an answer of any shape the contract names (a list of drivers, of tags...)."""
        try:
            response = self._client.get(path, params={k: v for k, v in params.items() if v})
        except httpx.ConnectError:
            fail(f"the agent is not answering at {self.base}; is `tagway run` running?")
        # /health answers 503 with its body when degraded: that is an answer, not a failure.
        if response.status_code >= 400 and response.status_code != 503:
            fail(f"{path}: HTTP {response.status_code}: {_detail(response)}")
        return _parse(path, response, answer)

    def delete(self, path: str, answer: type[M], **params: str) -> M:
        """DELETE and parse the answer."""
        try:
            response = self._client.delete(path, params=params)
        except httpx.ConnectError:
            fail(f"the agent is not answering at {self.base}; is `tagway run` running?")
        if response.status_code >= 400:
            fail(_detail(response))
        from pydantic import TypeAdapter  # noqa: PLC0415 - see the top

        return _parse(path, response, TypeAdapter(answer))

    def post(self, path: str, answer: type[M], body: BaseModel | None = None) -> M:
        """POST (a request model, or nothing) and parse the answer."""
        try:
            response = self._client.post(
                path, json=body.model_dump(mode="json") if body is not None else {}
            )
        except httpx.ConnectError:
            fail(f"the agent is not answering at {self.base}; is `tagway run` running?")
        if response.status_code >= 400:
            fail(_detail(response))
        from pydantic import TypeAdapter  # noqa: PLC0415 - see the top

        return _parse(path, response, TypeAdapter(answer))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _user() -> str:
    """Who runs this command, for the agent's audit (``uid 1000 alice``)."""
    import pwd  # noqa: PLC0415 - POSIX only, and only here

    uid = os.getuid()
    try:
        return f"uid {uid} {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def _parse(path: str, response: httpx.Response, answer: TypeAdapter[T]) -> T:
    from pydantic import ValidationError  # noqa: PLC0415 - see the top

    try:
        return answer.validate_json(response.content)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the answer"
        fail(f"{path}: the agent's answer does not fit this tagway ({where}: {first['msg']}); "
             "are the agent and the CLI the same version?")  # fmt: skip


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:200]
