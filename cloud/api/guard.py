"""The request guard: what every request must pass before the app reads a byte of its body.

A 256 MiB body to an endpoint that needs no credentials, or a viewer's PATCH to an admin's
endpoint, used to be read in full before the answer (422, 403). The guard runs in front of the
app as ASGI middleware and, for the operation a request matches:

1. refuses NUL and lone surrogates in the path and query parameters (422, ``details.path``);
2. authenticates the bearer token and checks the caller against what the operation demands
   (`cloud.auth.Access`, read off its dependencies: `cloud.api.deps.ACCESS`), answering 401 or
   403 with the body unread; the principal is handed to the app (`request.state.principal`);
3. refuses a body over the operation's limit (413): by its Content-Length before reading, or as
   soon as the bytes read pass it;
4. for a JSON body, refuses nesting deeper than `max_json_depth`, more than `max_json_values`
   values, NaN/Infinity, and strings (keys too) holding NUL or lone surrogates (422, with the
   path), before FastAPI parses it.

The body limit of an operation: ``openapi_extra={"x-body-limit": "ingest"}`` names a limit
(`BODY_LIMITS`); otherwise an operation with credentials gets `max_json_body_bytes` and one
without gets `max_public_body_bytes`. An operation that takes the bearer token itself (verifies
it in its handler) declares its dependency `bearer_required`. New endpoints that use the
`cloud.api.deps` dependencies get all of this, and their OpenAPI error statuses, by themselves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.api.deps import ACCESS, Runtime, authenticate, bearer_required, bearer_token
from cloud.api.error_answers import answer_error
from cloud.auth import Access
from cloud.contract import (
    MAX_CONFIG_BYTES,
    ContractError,
    InvalidBatch,
    PayloadTooLarge,
    storable,
)
from cloud.contract.wire_decode import Malformed, TooLarge, check_json_shape
from cloud.errors import CloudError, InvalidRequest, Unauthenticated
from cloud.settings import CloudSettings
from cloud.storage.base import request_class

BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def body_limits(settings: CloudSettings) -> dict[str, int]:
    """The named body limits, in bytes."""
    return {
        "ingest": settings.limits.max_body_bytes,
        "json": settings.max_json_body_bytes,
        "public": settings.max_public_body_bytes,
        # A config document of MAX_CONFIG_BYTES, every character JSON-escaped at worst twice
        # over (quotes, backslashes, newlines), plus the object around it.
        "config": 2 * MAX_CONFIG_BYTES + 16_384,
    }


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What the guard demands of requests to one operation."""

    access: Access | None  # None: no credentials needed
    bearer: bool  # a bearer token must be present (the operation verifies it)
    body_limit: str | None  # a `BODY_LIMITS` name; None: the operation takes no body
    json_body: bool  # the body is JSON the guard checks (not a batch: the contract does that)
    path_params: bool
    writes: bool = False  # POST, PUT, PATCH or DELETE

    def error_statuses(self) -> set[int]:
        """The error statuses requests to the operation can get (for the OpenAPI document)."""
        statuses = {422, 503}
        if self.access is not None or self.bearer:
            statuses.add(401)
        if self.access is not None and self.access is not Access.ANY:
            statuses.add(403)
        if self.path_params:
            statuses.add(404)
        if self.body_limit is not None:
            statuses.add(413)
        if self.writes:  # a name taken, a revoked gateway, or a race the database caught
            statuses.add(409)
        return statuses


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every operation among `routes`, inside included routers too (recent FastAPI versions keep
    an included router as one route holding the original router)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from api_routes(inner.routes)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def route_policy(route: APIRoute) -> RoutePolicy:
    """The policy of an operation, from its dependencies, parameters and ``openapi_extra``."""
    calls = list(_calls(route.dependant))
    demands = [ACCESS[c] for c in calls if c in ACCESS]
    # The strictest demand wins: a role or kind over "any principal".
    access = next((a for a in demands if a is not Access.ANY), demands[0] if demands else None)
    named = (route.openapi_extra or {}).get("x-body-limit")
    takes_body = route.body_field is not None or named is not None
    default = "json" if access is not None else "public"
    return RoutePolicy(
        access=access,
        bearer=bearer_required in calls,
        body_limit=(named or default) if takes_body else None,
        json_body=takes_body and named is None,
        path_params=bool(route.dependant.path_params),
        writes=bool((route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}),
    )


class RequestGuard:
    """ASGI middleware applying each operation's `RoutePolicy` before its body is read."""

    def __init__(self, app: ASGIApp, *, settings: CloudSettings) -> None:
        self.app = app
        self.settings = settings
        self.limits = body_limits(settings)
        self._policies: dict[int, RoutePolicy] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request; pass it on with its (bounded) body, or answer the error."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = request_class.set(_request_class(scope))
        try:
            await self._guarded(scope, receive, send)
        finally:
            request_class.reset(token)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope)
        if route is None:  # 404 and 405 need no body
            await self.app(scope, receive, send)
            return
        policy = self._policy(route)
        try:
            _check_parameters(scope)
            await self._authorize(scope, policy)
            body = await self._read_body(scope, receive, policy)
        except (CloudError, ContractError) as exc:
            scope["route"] = route  # so the refusal is counted under its operation
            await answer_error(exc)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _route(self, scope: Scope) -> APIRoute | None:
        app = scope.get("app")
        if not isinstance(app, FastAPI):
            return None
        for route in api_routes(app.router.routes):
            if route.matches(scope)[0] is Match.FULL:
                return route
        return None

    def _policy(self, route: APIRoute) -> RoutePolicy:
        found = self._policies.get(id(route))
        if found is None:
            found = self._policies[id(route)] = route_policy(route)
        return found

    async def _authorize(self, scope: Scope, policy: RoutePolicy) -> None:
        if policy.access is None and not policy.bearer:
            return
        request = Request(scope)
        token = bearer_token(request)
        if policy.access is None:
            if token is None:
                raise Unauthenticated("send an Authorization: Bearer <token> header")
            return
        rt: Runtime = scope["app"].state.runtime
        principal = await authenticate(rt, token)
        policy.access.check(principal)
        scope.setdefault("state", {})["principal"] = principal

    async def _read_body(self, scope: Scope, receive: Receive, policy: RoutePolicy) -> bytes:
        if policy.body_limit is None and scope["method"] not in BODY_METHODS:
            return b""
        limit = self.limits[policy.body_limit or "public"]
        declared = Request(scope).headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if policy.json_body and body:
            self._check_json(body)
        return body

    def _check_json(self, body: bytes) -> None:
        settings = self.settings
        try:
            check_json_shape(
                body, max_depth=settings.max_json_depth, max_values=settings.max_json_values
            )
        except Malformed as exc:
            raise InvalidBatch(str(exc), path=exc.path) from exc
        except TooLarge as exc:
            raise PayloadTooLarge(str(exc), details={"limit": exc.limit}) from exc
        try:
            document = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            return  # FastAPI answers a body that is not JSON (422 json_invalid)
        bad = _unstorable(document, ["body"])
        if bad is not None:
            raise InvalidRequest(
                "strings may not hold NUL characters or lone surrogates, and numbers must be"
                " finite",
                path=bad,
            )


def _refuse_constant(_: str) -> float:
    return float("nan")  # found by `_unstorable`, with its path


def _unstorable(value: Any, path: list[str | int]) -> list[str | int] | None:
    """The path of the first string (or key) that cannot be stored, or of a non-finite number."""
    if isinstance(value, str):
        return None if storable(value) else path
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _unstorable(item, [*path, i])
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if not storable(key):
                return [*path, key.encode("utf-8", "backslashreplace").decode()]
            found = _unstorable(item, [*path, key])
            if found is not None:
                return found
    return None


def _check_parameters(scope: Scope) -> None:
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
        if not storable(name) or not storable(value):
            raise InvalidRequest(
                "query parameters may not hold NUL characters or invalid UTF-8",
                path=["query", name if storable(name) else "?"],
            )
    if not storable(scope.get("path", "")):
        raise InvalidRequest("the path may not hold NUL characters or invalid UTF-8", path=["path"])


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"body exceeds the limit of {limit} bytes", details={"limit": limit})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the client's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _request_class(scope: Scope) -> str:
    """The class whose database limits the request gets (`cloud.settings.DbClasses`)."""
    if scope["path"] == "/v1/ingest":
        return "ingest"
    return "read" if scope["method"] in ("GET", "HEAD") else "admin"
