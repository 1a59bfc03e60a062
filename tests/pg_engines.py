"""The PostgreSQL engines the cloud runs on, for tests and benchmarks: plain PostgreSQL,
TimescaleDB and a Citus cluster.

Plain PostgreSQL is the server `TAGWAY_TEST_PG_DSN` names (default 127.0.0.1:5432). TimescaleDB
and Citus come from the prebuilt builds in the shared directory (``shared/`` next to the checkout
or above it, or ``$TAGWAY_SHARED_DIR``) and run in throwaway clusters on loopback, each from a
private copy of the system's PostgreSQL 15 in its own temporary directory: installing their files
into the system's PostgreSQL would make every server of it (the one on 5432 that other tests use
too) list them as available, and `CREATE EXTENSION` on a server that does not preload them ends
the connection. The copy costs about 110 MB of /tmp and a few seconds.

A cluster lives in ``$TMPDIR/tagway-engines/<engine>-<pid>-<random>``; a later run stops and
removes the clusters of runs that died without doing it themselves (their pid is gone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psycopg

ROOT: Final = Path(__file__).resolve().parents[1]
DEFAULT_PG_DSN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
ENGINES: Final = ("postgres", "timescaledb", "citus")  # the engines the cloud suite runs on
_CLUSTERS: Final = ("timescaledb", "citus")  # the engines `running` starts itself
CITUS_WORKERS: Final = 2
TEST_SHARDS: Final = 4
_SYSTEM_PG_CONFIG: Final = "/usr/lib/postgresql/15/bin/pg_config"
_START_TIMEOUT_S: Final = 180


class EngineUnavailable(Exception):
    """The engine cannot run here; the message says why (a test skips with it, or fails in CI)."""


def shared_dir() -> Path | None:
    """The shared directory holding the prebuilt engines, or None."""
    explicit = os.environ.get("TAGWAY_SHARED_DIR")
    if explicit:
        return Path(explicit)
    for parent in ROOT.parents:
        candidate = parent / "shared"
        if (candidate / "timescaledb").is_dir() or (candidate / "citus").is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class EngineServer:
    """A running server (or cluster) of one engine, as its superuser.

    `nodes` are the admin DSNs of every node that needs a database of its own (Citus: the
    coordinator first, then the workers); plain PostgreSQL and TimescaleDB have one node.
    """

    engine: str
    admin_dsn: str
    nodes: tuple[str, ...] = field(default=())
    directory: Path | None = None

    def create_database(self, name: str, *, citus: bool = True) -> str:
        """A new, empty database ready for tagway's migrations; its owner's DSN. On Citus it
        is a Citus database (the extension on every node, the nodes registered) unless
        `citus` is false, when it is a plain database on every node (see `add_citus`)."""
        for node in self.nodes or (self.admin_dsn,):
            with psycopg.connect(node, autocommit=True, connect_timeout=10) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
        if self.engine == "citus" and citus:
            self.add_citus(name)
        return psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=name)

    def add_citus(self, name: str) -> None:
        """Make database `name` of every node one Citus database, as an operator does."""
        _make_citus_database(self.nodes, name)

    def drop_database(self, name: str) -> None:
        """Drop a database `create_database` made (on every node)."""
        for node in self.nodes or (self.admin_dsn,):
            with psycopg.connect(node, autocommit=True, connect_timeout=10) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _make_citus_database(nodes: tuple[str, ...], name: str) -> None:
    """Citus metadata is per database: the extension on every node (workers first), then the
    coordinator learns its own address and its workers'."""
    dsns = [psycopg.conninfo.make_conninfo(n, dbname=name) for n in nodes]
    for dsn in reversed(dsns):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION citus")
    coordinator, *workers = (psycopg.conninfo.conninfo_to_dict(d) for d in dsns)
    with psycopg.connect(dsns[0], autocommit=True) as conn:
        # 4 shards, not 32: every daily partition is one table per shard, and the tests make
        # dozens of days; how rows spread is the same (bench_citus.py measures with 32)
        conn.execute(f'ALTER DATABASE "{name}" SET citus.shard_count = {TEST_SHARDS}')
        conn.execute(
            "SELECT citus_set_coordinator_host('127.0.0.1', %s)", [int(coordinator["port"])]
        )
        for worker in workers:
            conn.execute("SELECT citus_add_node('127.0.0.1', %s)", [int(worker["port"])])


# ------------------------------------------------------------------------------ clusters


def _engines_home() -> Path:
    home = Path(tempfile.gettempdir()) / "tagway-engines"
    home.mkdir(exist_ok=True)
    home.chmod(0o1777)  # sticky and open: the servers run as `postgres` when we are root
    return home


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(engine: str, directory: Path) -> None:
    pg_config = directory / "pgroot" / _SYSTEM_PG_CONFIG.lstrip("/")
    env = os.environ | {"PG_CONFIG": str(pg_config)}
    shared = shared_dir()
    if shared is not None and pg_config.exists():
        script = "timescaledb" if engine == "timescaledb" else "citus"
        target = directory / "cluster"
        if target.exists():
            subprocess.run(
                [str(shared / script / "stop-cluster.sh"), str(target)],
                env=env,
                capture_output=True,
                check=False,
                timeout=120,
            )
    shutil.rmtree(directory, ignore_errors=True)


def remove_orphans() -> None:
    """Stop and remove the clusters of earlier runs that ended without cleaning up."""
    for directory in _engines_home().iterdir():
        engine, _, rest = directory.name.partition("-")
        pid = rest.partition("-")[0]
        if engine in _CLUSTERS and pid.isdigit() and not _alive(int(pid)):
            _stop(engine, directory)


def _private_postgres(directory: Path) -> Path:
    """Copy the system's PostgreSQL 15 into `directory`/pgroot; the copy's pg_config."""
    source = Path(os.environ.get("PG_CONFIG", _SYSTEM_PG_CONFIG))
    if not source.exists():
        raise EngineUnavailable(f"no PostgreSQL 15 at {source} to copy (install postgresql-15)")
    libdir = source.parents[1]  # /usr/lib/postgresql/15
    sharedir = Path(_run([str(source), "--sharedir"]).strip())
    root = directory / "pgroot"
    for tree in (libdir, sharedir):
        target = root / str(tree).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tree, target, symlinks=True)
    return root / str(source).lstrip("/")


def _run(command: list[str], env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, check=False, timeout=_START_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineUnavailable(f"{command[0]}: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise EngineUnavailable(f"{Path(command[0]).name} failed ({done.returncode}): {tail}")
    return done.stdout


def _script(engine: str, name: str) -> Path:
    shared = shared_dir()
    if shared is None:
        raise EngineUnavailable(
            f"no shared directory with the prebuilt {engine} (looked for shared/{engine} above"
            f" {ROOT}; set TAGWAY_SHARED_DIR)"
        )
    script = shared / engine / name
    if not script.exists():
        raise EngineUnavailable(f"{script} is missing: the shared directory has no {engine} build")
    return script


@contextlib.contextmanager
def running(engine: str) -> Iterator[EngineServer]:
    """A throwaway server of `engine` for the duration of the block.

    Plain PostgreSQL is the existing server of ``TAGWAY_TEST_PG_DSN``. Raises
    `EngineUnavailable` (with the reason) when the engine cannot run here.
    """
    if engine == "postgres":
        dsn = os.environ.get("TAGWAY_TEST_PG_DSN", DEFAULT_PG_DSN)
        try:
            psycopg.connect(dsn, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            raise EngineUnavailable(f"PostgreSQL not reachable at {dsn}: {exc}".strip()) from exc
        yield EngineServer(engine, dsn)
        return
    if engine not in _CLUSTERS:
        raise ValueError(f"unknown engine {engine!r}; one of postgres, {', '.join(_CLUSTERS)}")
    start = _script(engine, "private-cluster.sh" if engine == "timescaledb" else "start-cluster.sh")
    remove_orphans()
    directory = Path(tempfile.mkdtemp(prefix=f"{engine}-{os.getpid()}-", dir=_engines_home()))
    directory.chmod(0o755)
    try:
        yield _start(engine, start, directory)
    finally:
        _stop(engine, directory)


def _start(engine: str, start: Path, directory: Path) -> EngineServer:
    if engine == "timescaledb":
        dsn = _run([str(start), str(directory)]).strip().splitlines()[-1]
        return EngineServer(engine, dsn, (dsn,), directory)
    pg_config = _private_postgres(directory)
    env = os.environ | {"PG_CONFIG": str(pg_config)}
    _run([str(start.parent / "install.sh")], env)
    dsn = _run([str(start), str(directory / "cluster"), str(CITUS_WORKERS)], env)
    dsn = dsn.strip().splitlines()[-1]
    ports = _cluster_ports(directory / "cluster" / "cluster.env")
    nodes = tuple(psycopg.conninfo.make_conninfo(dsn, port=p) for p in ports)
    return EngineServer(engine, dsn, nodes, directory)


def _cluster_ports(env_file: Path) -> list[int]:
    values: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'")
    return [int(values["COORDINATOR_PORT"]), *(int(p) for p in values["WORKER_PORTS"].split())]


@contextlib.contextmanager
def without_preload(server: EngineServer) -> Iterator[str]:
    """A second server of `server`'s private PostgreSQL (the engine's files installed, so the
    extension is listed as available) that does not preload it; its superuser DSN."""
    assert server.directory is not None, "only a started cluster has a private PostgreSQL"
    bindir = server.directory / "pgroot" / str(Path(_SYSTEM_PG_CONFIG).parent).lstrip("/")
    data = Path(tempfile.mkdtemp(prefix="bare-", dir=server.directory))
    data.chmod(0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as postgres, like the scripts
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:  # a port free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
          "--no-sync"])  # fmt: skip
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
    _run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"),
          "-w", "-o", options, "start"])  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(data, ignore_errors=True)
