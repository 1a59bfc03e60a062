"""How `tagway status` words the uplink's last error (before: `health: ok` above an old
`last error: ...` with no time, which read as a current fault)."""

from __future__ import annotations

import time

from cli.agent_cmds import _uplink_error
from edge.api_contract import Uplink

AT = time.mktime((2026, 12, 3, 14, 5, 9, 0, 0, -1))


def test_an_error_the_uplink_has_sent_since_is_shown_as_recovered() -> None:
    up = Uplink(configured=True, state="idle", last_error="ConnectError: refused",
                last_error_at=AT, last_success=AT + 30)  # fmt: skip
    assert _uplink_error(up) == "recovered from the last error at 14:05:09: ConnectError: refused"


def test_a_current_error_says_when() -> None:
    up = Uplink(configured=True, state="backoff", last_error="503 Service Unavailable",
                last_error_at=AT, last_success=AT - 60)  # fmt: skip
    assert _uplink_error(up) == "last error at 14:05:09: 503 Service Unavailable"


def test_no_error() -> None:
    assert _uplink_error(Uplink(configured=True, state="idle", last_success=AT)) == "no error"
