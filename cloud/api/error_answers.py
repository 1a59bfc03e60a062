"""The API's one error shape, and the OpenAPI entries that document it on every operation.

Every error is answered as ``{"error": {"code", "message", "details"}}`` (`ErrorBody`). Which
statuses an operation can answer follows from what it is (see `cloud.api.guard.RoutePolicy`):
every operation can answer 422 (a malformed parameter or body) and 503 (storage unavailable);
one that needs credentials 401, one that needs a role 403, one with a path parameter 404, one
that takes a body 413. `document_errors` writes exactly those into the OpenAPI document, so a new
endpoint is documented truthfully without listing them by hand; it lists the others it answers
(409, 410, 429, ...) in its own ``responses``.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from cloud.contract import ContractError
from cloud.errors import CloudError, RateLimited, StorageError

log = logging.getLogger("tagway.cloud")

HTTP_CODES: Final = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

DESCRIPTIONS: Final = {
    401: "Unauthenticated: no, unknown, revoked or malformed credentials",
    403: "Forbidden: the caller's role or kind does not allow this",
    404: "Not found (or another tenant's: existence elsewhere is never revealed)",
    409: "Conflict with existing state",
    410: "Gone",
    413: "Payload too large: the body exceeds this operation's limit",
    415: "Unsupported media type or encoding",
    422: "Invalid request: `details.path` names the bad parameter or field",
    429: "Over a rate limit or quota: retry after `Retry-After` seconds",
    503: "Storage unavailable, or a database time limit was reached; retry later",
}
ERROR_SCHEMA_REF: Final = {"$ref": "#/components/schemas/ErrorBody"}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    """The one error shape of the API."""
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status)


def answer_error(exc: CloudError | ContractError) -> JSONResponse:
    """The answer to one of our errors (a 429 carries Retry-After)."""
    if isinstance(exc, StorageError):
        log.error("storage error: %s", exc.message)
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


async def _cloud_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, CloudError | ContractError)  # noqa: S101 - registered for these only
    return answer_error(exc)


def _location(loc: Any) -> list[Any]:
    return list(loc) if isinstance(loc, list | tuple) else []


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this only
    errors = exc.errors()
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    details = {
        "path": _location(first.get("loc")),
        "errors": [{"path": _location(e.get("loc")), "message": str(e.get("msg"))} for e in errors],
    }
    return error_response(422, "invalid_request", str(first.get("msg")), details)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this only
    status = exc.status_code
    if status == 400:  # FastAPI's "error parsing the body": a malformed body, answered as one
        return error_response(422, "invalid_request", str(exc.detail), {"path": ["body"]})
    response = error_response(status, HTTP_CODES.get(status, "http_error"), str(exc.detail))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Answer our errors, validation errors and Starlette's HTTP errors in the one shape."""
    app.add_exception_handler(CloudError, _cloud_error)
    app.add_exception_handler(ContractError, _cloud_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)


def document_errors(route: APIRoute, statuses: set[int]) -> None:
    """Document `statuses` on `route` with the error schema (keeping its own descriptions)."""
    for status in sorted(statuses | {int(s) for s in route.responses if str(s).isdigit()}):
        if status < 400:
            continue
        entry = dict(route.responses.get(status) or route.responses.get(str(status)) or {})
        entry.pop("model", None)
        entry.setdefault("description", DESCRIPTIONS.get(status, "Error"))
        entry["content"] = {"application/json": {"schema": ERROR_SCHEMA_REF}}
        route.responses.pop(str(status), None)
        route.responses[status] = entry
