"""The agent's collector settings (issue 23): start-up objects frozen out of every collection,
young collections far rarer than CPython's default, and cycles still collected."""

from __future__ import annotations

import gc
import platform
from collections.abc import Iterator

import pytest

from edge.collector import GEN0_THRESHOLD, limit_malloc_arenas, settle_after_start


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored")
def test_settling_freezes_start_up_and_raises_the_young_threshold() -> None:
    settle_after_start()
    assert gc.get_freeze_count() > 1000  # this test process's modules, at least
    assert gc.get_threshold()[0] == GEN0_THRESHOLD

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle made after start-up is still garbage the collector finds
    del a, b
    assert gc.collect() >= 2


def test_malloc_arenas_are_capped_on_glibc() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc arenas are glibc's")
    assert limit_malloc_arenas(8) is True  # a cap well above what a test process uses
