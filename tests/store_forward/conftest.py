"""Shared helpers for the outbox tests: an injectable clock and outbox factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from store_forward import Outbox, OutboxSettings, Synchronous


class FakeClock:
    """Wall-clock seconds that move only when a test says so (lease expiry without sleeping)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


OpenOutbox = Callable[..., Outbox]


@pytest.fixture
def open_outbox(db_path: Path, clock: FakeClock) -> Iterator[OpenOutbox]:
    """Open outboxes on `db_path` with the fake clock (NORMAL sync for speed unless given);
    all are closed at the end of the test."""
    opened: list[Outbox] = []

    def _open(**settings: object) -> Outbox:
        settings.setdefault("synchronous", Synchronous.NORMAL)
        outbox = Outbox(db_path, OutboxSettings.model_validate(settings), clock=clock)
        opened.append(outbox)
        return outbox

    yield _open
    for outbox in opened:
        outbox.close()
