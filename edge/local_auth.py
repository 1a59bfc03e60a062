"""Who may act through the local API: reading stays open on loopback, acting needs the token.

Writing a setpoint and acknowledging an alarm change the plant, and loopback is shared by every
program and user on the box. The agent keeps a random token in `<state_dir>/local_api.token`
(mode 0600, owned by the agent's user, kept across restarts); a client proves it may act by
sending it as ``Authorization: Bearer <token>``. Who can read the file is who can act: root and
the tagway user (`tagway write`, `tagway alarms --ack` and the TUI read it themselves).
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Final

TOKEN_FILE: Final = "local_api.token"  # noqa: S105 - a file name, not a secret
_CLAIMED = re.compile(r"[^\w .@:/-]")


def token_path(state_dir: Path) -> Path:
    """Where the agent keeps the token."""
    return state_dir / TOKEN_FILE


def ensure_token(state_dir: Path) -> str:
    """The agent's token: the file's, or a new one written with mode 0600."""
    path = token_path(state_dir)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if len(text) >= 32:
        path.chmod(0o600)  # a file copied in with wider rights is narrowed again
        return text
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    path.chmod(0o600)
    return token


def authorized(header: str | None, token: str) -> bool:
    """True when an ``Authorization`` header carries the token."""
    if header is None or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), token.encode())


def claimed_user(header: str | None) -> str:
    """Who the client says it is (``X-Tagway-User``), cleaned for the audit: the token says
    the client may act; this only names the person for the record."""
    name = _CLAIMED.sub("", header or "")[:100].strip()
    return f"local {name}" if name else "local token holder"
