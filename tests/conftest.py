"""Suite-wide fixtures: leak detection and a throwaway PostgreSQL database.

- Every test fails if it leaves asyncio tasks running or threads alive: a long-running agent
  cannot afford either, so the tests refuse them too (the pymodbus habit).
- `postgres_dsn` creates a fresh database for the test session on the server named by
  `TAGWAY_TEST_PG_DSN` and drops it afterwards. `engine_databases` does the same on each
  PostgreSQL engine the cloud runs on (plain, TimescaleDB, Citus; see `tests.pg_engines`),
  starting TimescaleDB and Citus clusters on first use. Without a reachable server the tests
  that need it skip with the reason, except under `CI=true`, where they fail: CI must never go
  green by skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.pg_engines import EngineServer, EngineUnavailable, running

# A shell starts a background job (`make test &`, `nohup`) with SIGINT ignored, and every process
# a test starts inherits that: the tests that press Ctrl-C on the CLI would wait for nothing.
# With Python's own handler here, children start with the default disposition again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

# Threads that libraries start once per process and keep by design; they are not leaks of a test.
_PROCESS_WIDE_THREADS = ("asyncio_", "ThreadPoolExecutor-", "pydevd", "Dummy-")


def in_ci() -> bool:
    """True when running under CI (CI=true), where missing services must fail, not skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip with the reason locally; fail under CI so a missing service is never hidden."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: refusing to skip)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    leaked: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leaked = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith(_PROCESS_WIDE_THREADS)
        ]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"test leaked threads: {[t.name for t in leaked]}")


@pytest.fixture(autouse=True)
def _no_leaked_tasks(request: pytest.FixtureRequest) -> None:
    # Async tests only: pull in the async checker so that it is torn down after the
    # test's own fixtures (teardown is last-in, first-out).
    if asyncio.iscoroutinefunction(getattr(request.node, "function", None)):
        request.getfixturevalue("_leaked_task_check")


@pytest.fixture
async def _leaked_task_check() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    for _ in range(20):  # let cancelled tasks finish unwinding
        leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not leaked:
            return
        await asyncio.sleep(0.01)
    names = [t.get_name() + " " + repr(t.get_coro()) for t in leaked]
    for task in leaked:
        task.cancel()
    pytest.fail(f"test leaked asyncio tasks: {names}")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a fresh, empty database; dropped at the end of the session."""
    import psycopg  # noqa: PLC0415 - only the PostgreSQL tests pay for the import

    admin_dsn = os.environ.get("TAGWAY_TEST_PG_DSN", DEFAULT_PG_DSN)
    name = f"tagway_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        skip_or_fail(f"PostgreSQL not reachable at {admin_dsn}: {exc}".strip())
        return
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class EngineDatabases:
    """Per engine, started on first use: its server and one migrated database for the session.

    Every test that talks to PostgreSQL goes through the one instance of the session (the
    fixture below lives here, at the root, so that tests/cli, tests/cloud and tests/provisioning
    share it instead of each starting its own clusters).
    """

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._servers: dict[str, EngineServer] = {}
        self._migrated: dict[str, str] = {}
        self._unavailable: dict[str, str] = {}

    def server(self, engine: str) -> EngineServer:
        """The engine's running server; skips (fails under CI) when it cannot run here."""
        if engine in self._unavailable:
            skip_or_fail(self._unavailable[engine])
        if engine not in self._servers:
            try:
                self._servers[engine] = self._stack.enter_context(running(engine))
            except EngineUnavailable as exc:
                self._unavailable[engine] = f"{engine}: {exc}"
                skip_or_fail(self._unavailable[engine])
        return self._servers[engine]

    def database(self, engine: str, prefix: str = "tagway_test") -> str:
        """A new empty database on the engine (dropped at the end of the session)."""
        server = self.server(engine)
        name = f"{prefix}_{secrets.token_hex(4)}"
        dsn = server.create_database(name)
        self._stack.callback(server.drop_database, name)
        return dsn

    def migrated(self, engine: str) -> str:
        """The engine's session database with the schema applied (the owner's DSN)."""
        if engine not in self._migrated:
            from cloud.settings import CloudSettings  # noqa: PLC0415 - PostgreSQL tests only
            from cloud.storage.pg_migrate import apply_migrations  # noqa: PLC0415

            dsn = self.database(engine)
            asyncio.run(apply_migrations(dsn, CloudSettings()))
            self._migrated[engine] = dsn
        return self._migrated[engine]


@pytest.fixture(scope="session")
def engine_databases() -> Iterator[EngineDatabases]:
    """The engines' servers and databases; all stopped and dropped at the end of the session."""
    with contextlib.ExitStack() as stack:
        yield EngineDatabases(stack)
