"""The connection state machine and backoff every driver shares."""

from __future__ import annotations

import random

import pytest

from protocols.backoff import Backoff, BackoffPolicy
from protocols.driver import ConnectionState, DriverCounters, InvalidTransition, Link


def test_link_counts_reconnects_not_the_first_connect() -> None:
    link = Link("pump1")
    link.to(ConnectionState.CONNECTING)
    link.to(ConnectionState.CONNECTED)
    assert link.reconnects == 0
    link.to(ConnectionState.BACKOFF, error="connection reset")
    assert link.last_error == "connection reset"
    failed_at = link.last_error_at
    link.to(ConnectionState.CONNECTING)
    link.to(ConnectionState.CONNECTED)
    assert link.reconnects == 1
    assert link.last_error is None  # healthy: the error is history
    assert (link.recovered_from, link.last_error_at) == ("connection reset", failed_at)


def test_link_refuses_transitions_the_table_forbids() -> None:
    link = Link("pump1")
    with pytest.raises(InvalidTransition, match=r"pump1: idle -> connected"):
        link.to(ConnectionState.CONNECTED)
    link.to(ConnectionState.CLOSED)
    with pytest.raises(InvalidTransition):
        link.to(ConnectionState.CONNECTING)


def test_backoff_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(BackoffPolicy(base=0.5, factor=2.0, cap=4.0), rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(50)]
    assert max(delays) <= 4.0
    assert min(delays) >= 0.05
    assert len({round(d, 6) for d in delays}) > 40  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_backoff_survives_a_week_of_failures() -> None:
    backoff = Backoff(BackoffPolicy(cap=30.0))
    backoff.attempt = 10_000_000
    assert backoff.next_delay() <= 30.0


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid backoff policy"):
        BackoffPolicy(base=10.0, cap=1.0)


def test_counters_as_dict() -> None:
    counters = DriverCounters(requests=3, dropped=1)
    assert counters.as_dict()["dropped"] == 1
