"""The gateway's side of the cloud's config endpoints (plain HTTPS requests with its token).

The desired version arrives on the command channel; the document is fetched here, as are the
uploads of a drifted file and of the file ``tagway config push`` adopts. Failures are
`CloudUnreachable` (try again later) or `CloudRefused` (the cloud said no; its message says why).
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from cloud.contract import ConfigDocument, config_digest
from edge.credentials import UplinkIdentity
from edge.errors import EdgeError


class CloudConfigError(EdgeError):
    """Root of the config client's errors."""


class CloudUnreachable(CloudConfigError):
    """The cloud did not answer (network, timeout, 5xx): worth another try later."""


class CloudRefused(CloudConfigError):
    """The cloud answered no (404: nothing assigned, 4xx: a refusal); the message is its own."""


class CloudConfigClient:
    """Fetches and uploads config documents as this gateway.

    Args:
        base_url: the cloud's URL (the config's ``cloud.url``).
        identity: the gateway's token source.
        timeout: seconds per request.
        client: an httpx client to use (tests); one is created per request otherwise.
    """

    def __init__(
        self,
        *,
        base_url: str,
        identity: UplinkIdentity,
        timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.timeout = timeout
        self._client = client

    async def fetch(self, version: int | None) -> ConfigDocument:
        """The document of `version` (None: the one the cloud wants this gateway to run),
        checked against its digest."""
        path = "/v1/gateway/config" if version is None else f"/v1/gateway/config/{version}"
        data = await self._request("GET", path)
        try:
            document = ConfigDocument.model_validate(data)
        except ValidationError as exc:
            raise CloudRefused(f"the cloud's config document does not parse: {exc}") from exc
        if config_digest(document.document) != document.digest:
            raise CloudRefused(f"config version {document.version} arrived damaged")
        return document

    async def upload_local(self, text: str) -> None:
        """Show the cloud the file as it is on the gateway (drift)."""
        await self._request("PUT", "/v1/gateway/config/local", {"document": text})

    async def adopt(self, text: str, *, comment: str | None = None) -> int:
        """Make the file on the gateway a new cloud version assigned to it; its number."""
        body = {"document": text, "comment": comment or "tagway config push"}
        data = await self._request("POST", "/v1/gateway/config", body)
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, int):
            raise CloudRefused("the cloud's answer names no version")
        return version

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {await self.identity.token()}"}
        try:
            if self._client is not None:
                response = await self._client.request(
                    method, self.base_url + path, json=body, headers=headers, timeout=self.timeout
                )
            else:
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    response = await client.request(
                        method, self.base_url + path, json=body, headers=headers
                    )
        except httpx.HTTPError as exc:
            raise CloudUnreachable(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise CloudUnreachable(f"{method} {path}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise CloudRefused(_message(response))
        return None if response.status_code == 204 else _json(response)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise CloudRefused(f"the cloud answered something that is not JSON: {exc}") from exc


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['message']} (HTTP {response.status_code}, {error['code']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
