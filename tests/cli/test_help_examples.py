"""Every `Example:` in `tagway ... --help` runs, as a user would type it, against real parts: a
cloud (`tagway cloud serve` on SQLite, on a free port), the simulated plant the `sim plant`
example serves, the agent the `run` example runs on the config that example writes, with the
gateway provisioned by the `provision` example (test_help.py parses them; this runs them).

Each example is a `tagway` process; it must exit 0 (or the code its help documents: `rollout
status` exits 2 while the rollout runs; the watch of `tags --watch` ends with Ctrl-C, 130) and
never print a traceback. The examples build on each other in one chain per module (the cloud,
the tenant and its key, a claim token, the plant, the provisioned agent), so each costs about a
second. The ones that need another engine or minutes are marked slow: `cloud migrate
--distribute` (a Citus cluster), `demo --duration 120` (two minutes).

What is substituted, and nothing else:
- `/etc/tagway/config.yaml` and `/etc/tagway`: the files of this test's temporary directory
  (`/var/lib/tagway/outbox.db`: the agent's outbox there);
- `https://cloud.example.com` and `URL`: the local cloud; `KEY`: the tenant admin's API key the
  `cloud tenant create` example printed; `twc_...`: the claim token the `claim-token` example
  printed;
- the ids in `config history --gateway 17`, `rollout status 12` and `config diff 6 7`: the
  gateway, the rollout and the two versions the examples before created;
- `cloud serve` gets `--port` (the default 8000 may be taken on a shared machine);
- the PostgreSQL DSNs of `cloud migrate` and `cloud retention`: a throwaway database.
The plant's config gets, before the agent runs it, the alarm the `alarms --shelve` example names
and a local API on port 0 (8470 may be taken); so does the starter config of `tagway --help`'s
`init ... && run ...` (a free port). The groups' own examples (`tagway cloud --help`, `cloud
tenant --help`, ...) run too: the admin ones with $TAGWAY_CLOUD_DATABASE naming the database
the `cloud --help` example served, as their help says.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.cli.test_help import COMMANDS, _examples
from tests.conftest import EngineDatabases

pytestmark = pytest.mark.integration
TAGWAY = [sys.executable, "-m", "cli"]
ADMIN_KEY = "platform-key-for-the-examples"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def example(*path: str) -> list[str]:
    """The one example of `tagway <path> --help` (a command's or a group's), as words after
    `tagway`."""
    (words,) = _examples(path)
    return words


@dataclass
class Ran:
    """One example as it ran."""

    words: list[str]
    code: int
    out: str
    err: str

    def ok(self, *codes: int) -> Ran:
        assert self.code in (codes or (0,)), (self.words, self.code, self.out[-2000:],
                                              self.err[-2000:])  # fmt: skip
        assert "Traceback" not in self.out + self.err, (self.words, self.err[-3000:])
        return self


@dataclass
class Site:
    """The chain's parts: where things are, and what the examples printed."""

    root: Path
    env: dict[str, str]
    subs: dict[str, str] = field(default_factory=dict)
    cloud: str = ""
    api_key: str = ""
    gateway_id: int = 0
    background: list[tuple[list[str], subprocess.Popen[str], int]] = field(default_factory=list)

    def words(self, words: list[str], **extra: str) -> list[str]:
        subs = {**self.subs, **extra}
        return [subs.get(w, w) for w in words]

    def run(self, words: list[str], *, cwd: Path | None = None, timeout: float = 60,
            answer: str = "", **extra: str) -> Ran:  # fmt: skip
        argv = self.words(words, **extra)
        done = subprocess.run([*TAGWAY, *argv], cwd=cwd or self.root, env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=False,
                              input=answer)  # fmt: skip
        return Ran(argv, done.returncode, done.stdout, done.stderr)

    def start(self, words: list[str], *, cwd: Path, until: Callable[[], bool], stop: int,
              **extra: str) -> None:  # fmt: skip
        """Start a long-running example; wait until `until()`; stop it with `stop` later."""
        argv = self.words(words, **extra)
        proc = subprocess.Popen([*TAGWAY, *argv], cwd=cwd, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        self.background.append((argv, proc, stop))
        deadline = time.monotonic() + 60
        while not until():
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"tagway {shlex.join(argv)} exited {proc.returncode}: {err[-3000:]}")
            assert time.monotonic() < deadline, f"tagway {shlex.join(argv)} did not come up"
            time.sleep(0.1)

    def stop_all(self) -> list[Ran]:
        """Stop the long-running examples, last started first, as Ctrl-C or systemd would."""
        stopped = []
        for argv, proc, sig in reversed(self.background):
            proc.send_signal(sig)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            stopped.append(Ran(argv, proc.returncode, out, err))
        return stopped


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The chain: cloud, tenant, key, claim token, plant, provisioned agent, each an example."""
    root = tmp_path_factory.mktemp("examples")
    env = {**os.environ, "TAGWAY_PLATFORM_ADMIN_KEY": ADMIN_KEY,
           "TAGWAY_CLOUD_DATABASE": "sqlite:///cloud.db",
           "TAGWAY_CONFIG": str(root / "config.yaml")}  # fmt: skip
    for name in ("TAGWAY_API_KEY", "TAGWAY_CLAIM_TOKEN", "TAGWAY_API_TOKEN_FILE"):
        env.pop(name, None)
    site = Site(root=root, env=env)
    site.subs = {"/etc/tagway/config.yaml": str(root / "config.yaml"),
                 "/var/lib/tagway/outbox.db": str(root / "state" / "outbox.db")}  # fmt: skip
    try:
        port = _free_port()
        site.cloud = f"http://127.0.0.1:{port}"
        site.subs |= {"https://cloud.example.com": site.cloud, "URL": site.cloud}
        site.start([*example("cloud", "serve"), "--port", str(port)], cwd=root,
                   until=lambda: _healthy(site.cloud), stop=signal.SIGINT)  # fmt: skip
        tenant = site.run(example("cloud", "tenant", "create")).ok()
        site.api_key = re.search(r"admin API key .*: (\S+)", tenant.out)[1]  # type: ignore[index]
        site.subs["KEY"] = site.api_key
        site.run(example("cloud", "api-key", "create")).ok()
        token = site.run(example("cloud", "claim-token", "create")).ok()
        site.subs["twc_..."] = re.search(r"^(twc_\S+)$", token.out, re.M)[1]  # type: ignore[index]
        config = root / "config.yaml"
        site.start(example("sim", "plant"), cwd=root, until=config.exists, stop=signal.SIGINT)
        _prepare(config)
        provision = site.run(example("provision")).ok()
        site.gateway_id = int(re.search(r"as gateway (\d+)", provision.out)[1])  # type: ignore[index]
        discovery = root / "state" / "local_api.json"
        site.start(example("run"), cwd=root, until=lambda: _answers(site, discovery),
                   stop=signal.SIGTERM)  # fmt: skip
        yield site
    finally:
        stopped = site.stop_all()
    for ran in stopped:  # `run`, `sim plant` and `cloud serve` end cleanly when stopped
        ran.ok()


def _prepare(config: Path) -> None:
    """What the examples after need in the plant's config: the alarm `alarms --shelve` names,
    and a local API on a port of its own."""
    data = yaml.safe_load(config.read_text())
    data["alarms"] = [{"name": "pump1_vibration_high", "device": "pump1", "tag": "vibration",
                       "kind": "high", "limit": 7.1, "severity": "critical"}]  # fmt: skip
    data["local_api"] = {"port": 0}
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def _answers(site: Site, discovery: Path) -> bool:
    if not discovery.exists():
        return False
    try:
        drivers = httpx.get(json.loads(discovery.read_text())["url"] + "/v1/drivers").json()
    except (httpx.TransportError, ValueError, KeyError):
        return False
    return all(d["state"] == "connected" for d in drivers) and bool(drivers)


# ------------------------------------------------------------------- the agent's examples

AGENT_EXAMPLES = [("config", "validate"), ("status",), ("alarms",), ("writes",),
                  ("buffer", "stats"), ("buffer", "export"), ("buffer", "requeue-quarantine"),
                  ("config", "push"), ("config", "pull")]  # fmt: skip


@pytest.mark.parametrize("path", AGENT_EXAMPLES, ids=" ".join)
def test_agent_example_runs(site: Site, path: tuple[str, ...]) -> None:
    site.run(example(*path), timeout=120).ok()


def test_write_asks_then_writes_and_reads_back(site: Site) -> None:
    """The example as typed at the prompt: the question answered yes."""
    ran = site.run(example("write"), answer="y\n").ok()
    assert "read back" in ran.out, ran.out


def test_the_chain_examples_ran(site: Site) -> None:
    """cloud serve, tenant create, api-key create, claim-token create, sim plant, provision and
    run ran in the fixture (each checked there); the agent reads the plant and the cloud."""
    where = json.loads((site.root / "state" / "local_api.json").read_text())
    assert httpx.get(where["url"] + "/v1/uplink").json()["configured"] is True
    gateway = httpx.get(where["url"] + "/v1/gateway").json()
    assert gateway["gateway_id"] == str(site.gateway_id)


def test_tags_watch_refreshes_until_ctrl_c(site: Site) -> None:
    argv = site.words(example("tags"))
    proc = subprocess.Popen([*TAGWAY, *argv], cwd=site.root, env=site.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)  # fmt: skip
    assert proc.stdout is not None
    with proc:  # killed and its pipes closed whatever happens
        seen, deadline = "", time.monotonic() + 30
        while seen.count("device ") < 2 and time.monotonic() < deadline:  # two refreshes
            if select.select([proc.stdout], [], [], 0.2)[0]:
                seen += os.read(proc.stdout.fileno(), 65536).decode()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    Ran(argv, proc.returncode, seen + out, err).ok(130)
    assert seen.count("device ") >= 2, seen  # the header, once per refresh


def test_tui_opens_in_a_terminal_and_quits_with_q(site: Site) -> None:
    argv = site.words(example("tui"))
    main, terminal = pty.openpty()  # the TUI on a pseudo-terminal of 80x24
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**site.env, "TERM": "xterm-256color"}
    proc = subprocess.Popen([*TAGWAY, *argv], cwd=site.root, env=env, stdin=terminal,
                            stdout=terminal, stderr=terminal, start_new_session=True)  # fmt: skip
    os.close(terminal)
    screen = b""

    def read_until(done: Callable[[], bool], within: float) -> None:
        nonlocal screen
        deadline = time.monotonic() + within
        while not done() and time.monotonic() < deadline:
            if select.select([main], [], [], 0.2)[0]:
                try:
                    screen += os.read(main, 65536)
                except OSError:  # the terminal closed: the TUI has exited
                    return

    try:
        read_until(lambda: b"pump1" in screen, 30)
        assert b"pump1" in screen, screen[-2000:]
        os.write(main, b"q")
        read_until(lambda: proc.poll() is not None, 30)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    assert code == 0, screen[-2000:]
    assert b"Traceback" not in screen


# ------------------------------------------------------------------- the cloud's examples


def test_fleet_examples_push_follow_and_compare(site: Site) -> None:
    """cloud config push to the label the claim token gave, the rollout's status (0 done, 2
    while it runs), the gateway's history and the diff of the last two versions."""
    push = site.run(example("cloud", "config", "push"), cwd=site.root).ok()
    rollout = re.search(r"rollout (\d+) to", push.out)[1]  # type: ignore[index]
    version = int(re.search(r"stored as version (\d+)", push.out)[1])  # type: ignore[index]
    site.run(example("cloud", "rollout", "status"), **{"12": rollout}).ok(0, 2)
    history = site.run(example("cloud", "config", "history"), **{"17": str(site.gateway_id)}).ok()
    assert "assigned" in history.out or "applied" in history.out, history.out
    site.run(example("cloud", "config", "diff"), **{"6": str(version - 1), "7": str(version)}).ok()


def test_group_examples_of_the_fleet(site: Site) -> None:
    """The examples of `tagway cloud claim-token|config|rollout --help` (the groups' own)."""
    site.run(example("cloud", "claim-token")).ok()
    push = site.run(example("cloud", "config")).ok()
    rollout = re.search(r"rollout (\d+) to", push.out)[1]  # type: ignore[index]
    site.run(example("cloud", "rollout"), **{"12": rollout}).ok(0, 2)


def test_group_examples_of_the_cloud_admin(tmp_path: Path) -> None:
    """`tagway cloud --help` (serve), then `cloud tenant --help` and `cloud api-key --help` on
    the database it served, named by $TAGWAY_CLOUD_DATABASE as their help says."""
    here = alone(tmp_path)
    here.env |= {"TAGWAY_CLOUD_DATABASE": "sqlite:///cloud.db",
                 "TAGWAY_PLATFORM_ADMIN_KEY": ADMIN_KEY}  # fmt: skip
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    here.start([*example("cloud"), "--port", str(port)], cwd=tmp_path,
               until=lambda: _healthy(url), stop=signal.SIGINT)  # fmt: skip
    try:
        here.run(example("cloud", "tenant")).ok()
        here.run(example("cloud", "api-key")).ok()
    finally:
        stopped = here.stop_all()
    stopped[0].ok()


def test_the_first_example_init_and_run(tmp_path: Path) -> None:
    """`tagway --help`: init /etc/tagway && run -c /etc/tagway/config.yaml (the starter's local
    API moved off 8470 in between: other tests share this machine's loopback)."""
    here = alone(tmp_path)
    target = tmp_path / "etc-tagway"
    init, run = _examples(())
    here.run(init, **{"/etc/tagway": str(target)}).ok()
    config = target / "config.yaml"
    config.write_text(config.read_text().replace("port: 8470", f"port: {_free_port()}"))
    discovery = target / "state" / "local_api.json"
    here.start(run, cwd=tmp_path, until=discovery.exists, stop=signal.SIGTERM,
               **{"/etc/tagway/config.yaml": str(config)})  # fmt: skip
    (stopped,) = here.stop_all()
    stopped.ok()


def alone(root: Path) -> Site:
    """A site without the chain, for the examples that need none of it."""
    return Site(root=root, env={k: v for k, v in os.environ.items()
                                if not k.startswith("TAGWAY_")})  # fmt: skip


def test_init_writes_a_starter_config(tmp_path: Path) -> None:
    target = tmp_path / "etc-tagway"
    alone(tmp_path).run(example("init"), **{"/etc/tagway": str(target)}).ok()
    assert (target / "config.yaml").is_file()


@pytest.mark.postgres
def test_cloud_retention_on_postgresql(tmp_path: Path, postgres_dsn: str) -> None:
    here = alone(tmp_path)
    here.run(["cloud", "migrate", "--database", postgres_dsn], timeout=120).ok()
    here.run(example("cloud", "retention"), timeout=120,
             **{"postgresql://tagway_app@db/tagway": postgres_dsn}).ok()  # fmt: skip


@pytest.mark.slow
@pytest.mark.citus
def test_cloud_migrate_distributes_on_citus(
    tmp_path: Path, engine_databases: EngineDatabases
) -> None:
    dsn = engine_databases.database("citus")
    alone(tmp_path).run(example("cloud", "migrate"), timeout=300,
                        **{"postgresql://owner@coordinator/tagway": dsn}).ok()  # fmt: skip


@pytest.mark.slow
def test_demo_runs_its_duration(tmp_path: Path) -> None:
    alone(tmp_path).run(example("demo"), timeout=400).ok()


# ------------------------------------------------------------------- every example is run

RUN_HERE = {*AGENT_EXAMPLES, ("write",), ("tags",), ("tui",), ("init",), ("demo",),
            ("cloud", "serve"),
            ("cloud", "tenant", "create"), ("cloud", "api-key", "create"),
            ("cloud", "claim-token", "create"), ("sim", "plant"), ("provision",), ("run",),
            ("cloud", "config", "push"), ("cloud", "rollout", "status"),
            ("cloud", "config", "history"), ("cloud", "config", "diff"), ("cloud", "retention"),
            ("cloud", "migrate")}  # fmt: skip


def test_every_example_is_run_here() -> None:
    """A command added with an example must get a runner above."""
    assert set(COMMANDS) == RUN_HERE


# ------------------------------------------------------------------- mistakes on the same paths

MISTAKES = [
    ["write", "pump1", "no_such_tag", "5"],
    ["write", "pump1", "speed_setpoint", "1450"],  # beyond the plant's limits
    ["write", "pump9", "speed_setpoint", "45"],
    ["tags", "--device", "pump9"],
    ["alarms", "--shelve", "no_such_alarm", "--for", "2h", "--reason", "x"],
    ["alarms", "--shelve", "pump1_vibration_high", "--for", "banana", "--reason", "x"],
    ["status", "--config", "/nonexistent/config.yaml"],
    ["config", "validate", "/nonexistent/config.yaml"],
    ["run", "--config", "/nonexistent/config.yaml"],
    ["tui", "--config", "/nonexistent/config.yaml"],
    ["buffer", "stats", "--outbox", "/nonexistent/outbox.db"],
    ["buffer", "export", "/nonexistent/dir/backlog.csv"],
    ["cloud", "rollout", "status", "999", "--cloud", "URL", "--api-key", "KEY"],
    ["cloud", "config", "diff", "998", "999", "--cloud", "URL", "--api-key", "KEY"],
    ["cloud", "config", "history", "--gateway", "999", "--cloud", "URL", "--api-key", "KEY"],
    ["cloud", "config", "push", "missing.yaml", "--label", "site=plant-a", "--cloud", "URL",
     "--api-key", "KEY"],
    ["cloud", "claim-token", "create", "--cloud", "URL", "--api-key", "not-a-key"],
    ["cloud", "claim-token", "create", "--cloud", "http://127.0.0.1:1", "--api-key", "KEY"],
    ["cloud", "api-key", "create", "--tenant", "999", "--role", "viewer"],
    ["cloud", "tenant", "create", "acme", "--database", "sqlite:///cloud.db"],  # exists
    ["cloud", "retention", "--database", "postgresql://nobody@127.0.0.1:1/x", "--days", "90"],
    ["provision", "--cloud", "URL", "--claim-token", "twc_not-a-token", "--name", "press-3",
     "--config", "/nonexistent/config.yaml"],
    ["sim", "plant", "--scenario", "no_such_scenario"],
    ["init", "/proc/tagway"],
]  # fmt: skip


# A bounded set in the default run (one per kind of mistake); all of them under -m slow.
DEFAULT_MISTAKES = {
    "write pump1 speed_setpoint 1450", "tags --device pump9", "init /proc/tagway",
    "cloud rollout status 999 --cloud URL --api-key KEY", "sim plant --scenario no_such_scenario",
}  # fmt: skip


@pytest.mark.parametrize("words", [
    pytest.param(w, id=" ".join(w),
                 marks=() if " ".join(w) in DEFAULT_MISTAKES else pytest.mark.slow)
    for w in MISTAKES
])  # fmt: skip
def test_a_mistake_is_one_line_and_never_a_traceback(site: Site, words: list[str]) -> None:
    ran = site.run(words, answer="y\n", timeout=60)
    assert ran.code != 0, (ran.words, ran.out)
    assert "Traceback" not in ran.out + ran.err, ran.err[-3000:]
    said = ran.err.strip().splitlines()
    assert said, ran.out
    assert said[-1].startswith(("tagway: ", "Error: ")), ran.err  # tagway's line, or click's
    assert "internal error" not in ran.err, ran.err
