"""How the CLI reports failures: one clear line on stderr, never a traceback for a user mistake.

Every library package has one error root (the import rules forbid a shared one): `EdgeError`,
`OutboxError`, `ProtocolError`, `ProvisioningError`, `ContractError`. This module maps them by
type, root by root, and turns each into a line naming what was wrong and where. Anything else is
a bug: it gets one line too, and the traceback only with ``TAGWAY_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    import httpx


class CliError(Exception):
    """A user-facing failure with its exit code; the message is the whole story."""

    def __init__(self, message: str, *, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _roots() -> tuple[type[Exception], ...]:
    # Imported here, not at the top: `tagway --help` must not pay for numpy and cryptography.
    from cloud.contract import ContractError  # noqa: PLC0415
    from edge.errors import EdgeError  # noqa: PLC0415
    from protocols.errors import ProtocolError  # noqa: PLC0415
    from provisioning.errors import ProvisioningError  # noqa: PLC0415
    from store_forward import OutboxError  # noqa: PLC0415

    return (CliError, EdgeError, OutboxError, ProtocolError, ProvisioningError, ContractError)


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Stop the command with one line on stderr."""
    raise CliError(message, code=code)


def report(exc: BaseException) -> int:
    """Print `exc` as the CLI shows errors; return the exit code."""
    import httpx  # noqa: PLC0415

    from edge.config_loader import ConfigError  # noqa: PLC0415

    if isinstance(exc, ConfigError):
        for issue in exc.issues:
            typer.echo(f"tagway: {issue}", err=True)
        return 1
    if isinstance(exc, _roots()):
        typer.echo(f"tagway: error: {exc}", err=True)
        return exc.code if isinstance(exc, CliError) else 1
    if isinstance(exc, httpx.HTTPStatusError):
        # The server was reached and said no: say what it said, not "cannot reach".
        typer.echo(f"tagway: error: {refusal(exc.response)}", err=True)
        return 1
    if isinstance(exc, httpx.HTTPError):
        typer.echo(f"tagway: error: cannot reach {_url(exc)}: {exc}", err=True)
        return 1
    if isinstance(exc, PermissionError | FileNotFoundError | IsADirectoryError):
        typer.echo(f"tagway: error: {exc.strerror}: {exc.filename}", err=True)
        return 1
    typer.echo(f"tagway: internal error: {type(exc).__name__}: {exc}", err=True)
    if os.environ.get("TAGWAY_DEBUG"):
        traceback.print_exception(exc, file=sys.stderr)
    else:
        typer.echo("tagway: set TAGWAY_DEBUG=1 to see the traceback, and please report it",
                   err=True)  # fmt: skip
    return 70  # EX_SOFTWARE


def refusal(response: httpx.Response) -> str:
    """One line for an HTTP error answer: what was asked, the status, and the server's own
    message (tagway's ``{"error": {"code", "message"}}`` when it has one)."""
    try:
        where = f"{response.request.method} {response.request.url}"
    except RuntimeError:  # a response built without its request
        where = "the server"
    try:
        error = response.json()["error"]
        said = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        said = response.text.strip()[:200] or "no explanation given"
    return f"{where} answered HTTP {response.status_code}: {said}"


def _url(exc: Exception) -> str:
    try:
        return str(exc.request.url)  # type: ignore[attr-defined]
    except (RuntimeError, AttributeError):
        return "the server"
