"""The README's "Installing on a gateway" block, walked as printed, on the .deb built from this
checkout (`build-deb.sh`, as `make deb` builds it), by an installer who is not root.

What is real: the commands are read from the README's fenced block (a changed README changes
what runs) and each runs with bash, unchanged, as a user `installer` who may use sudo; `sudo` and
`sudoedit` are the real ones (sudoedit copies the file, runs the editor, copies it back);
`apt install ./tagway_..._amd64.deb` is the real apt and dpkg, so the real postinst creates the
users, the state directory and the enablement; `tagway` is the installed /usr/bin/tagway and
its /opt/tagway virtual environment; the agent reads a simulated plant (firmware_sim, Modbus
over loopback) with the installed config; `systemd-analyze verify` checks the installed unit.

Where it happens: a private mount namespace in which /usr, /etc, /var and /opt are overlays
whose writes land in this test's temporary directory, and /run and /home are empty tmpfs. The
package, the users and the sudoers entry exist only there; the machine never sees them.

What is emulated, because PID 1 here is not systemd (`ps -p 1`), and so substituted:
- `systemctl start|stop` and `journalctl -u` are tests/packaging/fixtures/systemd_stand_in.py,
  laid over /usr/bin/systemctl and /usr/bin/journalctl inside the namespace: it runs the
  installed unit's ExecStart as its User and Group with its Environment, WorkingDirectory,
  UMask and StateDirectory, owns the NOTIFY_SOCKET and returns from `start` on READY=1, and
  keeps the service's output for `journalctl -u`. The sandbox directives, Restart= and the
  watchdog's kill are not emulated. Where systemd is PID 1 the test skips instead (it would
  start the real service on the real machine).
- The editor `sudoedit` runs (SUDO_EDITOR) is a script that does what the comment says, "add
  your devices": it puts the simulated plant's devices into `devices:` and moves the local API
  off 8470 to a free port (other tests on this machine share its loopback).
- `sudo journalctl -u tagway -f` follows until the test interrupts it after a few seconds.
Nothing else in the block is changed; the deb's file name is checked against the README's.
Every step must exit 0, except that `tagway status` may exit 1 when its only problems are
devices still connecting (READY=1 comes when the local API answers, before the drivers have
connected; on a busy machine the installer can be that quick).

After the block it checks what the block is for: the agent runs as `tagway:tagway`, reads every
device of the plant (`tagway status --json`, as the installer), only the agent's own process
notifies the service manager (READY=1, STOPPING=1), `/var/lib/tagway` is `tagway:tagway 700`,
and `systemctl stop` ends it with exit 0. Not covered, because only systemd can: the unit's
sandbox (a directive that kept the agent from its files would pass here), Restart= and the
watchdog.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cli.test_readme_walk import readme_block
from tests.packaging.conftest import require

pytestmark = [pytest.mark.slow, pytest.mark.integration]
STAND_IN = Path(__file__).with_name("fixtures") / "systemd_stand_in.py"
FOLLOW_S = 4.0

EDITOR = """\
#!/usr/bin/python3
# SUDO_EDITOR for the walk: "add your devices" (and a local API port of this test's own).
import json, pathlib, sys
here = pathlib.Path(__file__).parent
devices = json.loads((here / "devices.json").read_text())
port = (here / "port").read_text().strip()
path = pathlib.Path(sys.argv[-1])
lines = path.read_text().splitlines()
lines = ["devices: " + json.dumps(devices) if l == "devices:" else l for l in lines]
lines = ["  port: " + port if l.strip() == "port: 8470" else l for l in lines]
path.write_text("\\n".join(lines) + "\\n")
"""

SETUP = r"""
set -eu
T=$1
for d in usr etc var opt; do
    mkdir -p "$T/ov/$d/upper" "$T/ov/$d/work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/ov/$d/upper,workdir=$T/ov/$d/work" "/$d"
done
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /home
S=/usr/lib/systemd-stand-in
mkdir -p $S && cp "$T/stand_in.py" $S/stand_in.py
for tool in systemctl journalctl; do
    mv /usr/bin/$tool $S/$tool.real
    printf '#!/bin/sh\nexec /usr/bin/python3 %s/stand_in.py %s "$@"\n' $S $tool > /usr/bin/$tool
    chmod 0755 /usr/bin/$tool
done
useradd --create-home --shell /bin/bash installer
echo 'installer ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/installer
chmod 0440 /etc/sudoers.d/installer
cp "$T/home/"* /home/installer/ && chown -R installer: /home/installer
# Whatever happens below, the agent the walk starts does not outlive it.
trap 'systemctl stop tagway >/dev/null 2>&1 || true' EXIT
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_installer(command: str, *, timeout: float, out: str) -> str:
    """Shell that runs `command` with bash as `installer` in its home, output to `out`.*"""
    env = (
        "HOME=/home/installer USER=installer LOGNAME=installer LANG=C.UTF-8 "
        "PATH=/usr/local/bin:/usr/bin:/bin SUDO_EDITOR=/home/installer/add-devices"
    )
    run = f"timeout -s INT -k 5 {timeout} runuser -u installer -- env -i {env} bash -c"
    return (
        f"if (cd /home/installer && {run} {shlex.quote(command)}) > $T/out/{out}.stdout "
        f"2> $T/out/{out}.stderr; then echo 0; else echo $?; fi > $T/out/{out}.rc\n"
    )


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[list[dict[str, object]]]:
    """Two simulated pumps over Modbus; the devices of the config it writes."""
    config = tmp_path / "plant.yaml"
    sim = subprocess.Popen(
        [sys.executable, "-m", "cli", "sim", "plant", "--devices", "2", "--config-out",
         str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert sim.stdout is not None
    try:
        for line in sim.stdout:
            if line.startswith("wrote an agent config"):
                break
        else:
            pytest.fail(f"the simulated plant did not start (exit {sim.wait()})")
        yield yaml.safe_load(config.read_text())["devices"]
    finally:
        sim.send_signal(signal.SIGINT)
        sim.communicate(timeout=30)


def test_the_install_block_runs_as_printed(
    built_deb: Path, plant: list[dict[str, object]], tmp_path: Path
) -> None:
    pid1 = subprocess.run(["ps", "-p", "1", "-o", "comm="], capture_output=True, text=True,
                          check=False).stdout.strip()  # fmt: skip
    if pid1 == "systemd":
        pytest.skip("systemd runs here: the walk would start the real service on this machine")
    if os.geteuid() != 0:
        pytest.skip("installing a package, even in a private namespace, needs root")
    for tool in ("unshare", "sudo", "sudoedit", "apt", "runuser", "setpriv", "useradd"):
        require(tool)
    commands = readme_block("Installing on a gateway")
    assert [c.split()[:3] for c in commands] == [
        ["sudo", "apt", "install"], ["sudoedit", "/etc/tagway/config.yaml"],
        ["tagway", "config", "validate"], ["sudo", "systemctl", "start"], ["tagway", "status"],
        ["sudo", "journalctl", "-u"],
    ], "the README's install block changed: walk the new one here"  # fmt: skip
    named = commands[0].split()[-1].removeprefix("./")
    assert named == built_deb.name, f"the README installs {named}; make deb builds {built_deb.name}"

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(built_deb, home / built_deb.name)
    (home / "add-devices").write_text(EDITOR)
    (home / "add-devices").chmod(0o755)
    (home / "devices.json").write_text(json.dumps(plant))
    port = _free_port()
    (home / "port").write_text(str(port))
    shutil.copy(STAND_IN, tmp_path / "stand_in.py")
    (tmp_path / "out").mkdir()

    script = SETUP
    for n, command in enumerate(commands):
        follow = " -f" in command
        script += as_installer(command, timeout=FOLLOW_S if follow else 600, out=f"step{n}")
        if n == commands.index(next(c for c in commands if c.startswith("sudo systemctl"))):
            script += "cat /run/systemd-stand-in/tagway.service.pid > $T/out/pid || true\n"
            script += "cat /run/systemd-stand-in/tagway.service.manager > $T/out/manager || true\n"
            script += "ps -o user=,group= -p $(cat $T/out/pid) > $T/out/owner || true\n"
    # After the block: the agent reads the plant, the unit verifies, and it stops cleanly.
    script += textwrap.dedent("""\
        for i in $(seq 60); do
            runuser -u installer -- tagway status --json > $T/out/status.json 2>&1 || true
            grep -q '"connected"' $T/out/status.json && break
            sleep 0.5
        done
        systemd-analyze verify /lib/systemd/system/tagway.service > $T/out/verify 2>&1 \\
            && echo 0 > $T/out/verify.rc || echo $? > $T/out/verify.rc
        stat -c '%U:%G %a' /var/lib/tagway > $T/out/state
        if systemctl stop tagway; then echo 0; else echo $?; fi > $T/out/stop.rc
        cat /run/systemd-stand-in/tagway.service.result > $T/out/exit 2>/dev/null || true
        cp /run/systemd-stand-in/tagway.service.notifications $T/out/notifications || true
    """)
    try:
        done = subprocess.run(
            [require("unshare"), "--mount", "--propagation", "private", "bash", "-c", script,
             "walk", str(tmp_path)], capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        out = tmp_path / "out"

        def step(n: int) -> tuple[int, str, str]:
            return (int((out / f"step{n}.rc").read_text()), (out / f"step{n}.stdout").read_text(),
                    (out / f"step{n}.stderr").read_text())  # fmt: skip

        for n in range(len(commands) - 1):
            rc, stdout, stderr = step(n)
            assert "Traceback" not in stdout + stderr, commands[n]
            if commands[n] == "tagway status" and rc == 1:
                # READY=1 comes once the local API answers, and the drivers start then: on a
                # busy machine a device may still be connecting when `tagway status` asks, and
                # status exits 1 while health is not ok. That and nothing else is tolerated.
                problems = [line for line in stdout.splitlines() if line.startswith("  ! ")]
                assert problems, stdout
                assert all(p.endswith(" is connecting") for p in problems), stdout
                continue
            assert rc == 0, (commands[n], stdout[-2000:], stderr[-2000:])
        assert "Setting up tagway" in step(0)[1]
        names = [str(d["name"]) for d in plant]
        assert step(2)[1] == f"/etc/tagway/config.yaml: ok ({len(names)} devices, " + \
            step(2)[1].split(" devices, ", 1)[1]  # fmt: skip
        assert all(name in step(4)[1] for name in names), step(4)[1]
        # journalctl -f followed until interrupted (timeout's SIGINT: 124); one JSON per line.
        rc, journal, stderr = step(len(commands) - 1)
        assert rc == 124, stderr
        assert "Traceback" not in stderr
        lines = [json.loads(line) for line in journal.splitlines()]
        assert lines
        assert all(isinstance(line, dict) for line in lines)
        assert (out / "owner").read_text().split() == ["tagway", "tagway"]
        status = json.loads((out / "status.json").read_text())
        assert {d["name"]: d["state"] for d in status["drivers"]} == dict.fromkeys(
            names, "connected"
        ), status["drivers"]
        assert (out / "verify.rc").read_text().strip() == "0", (out / "verify").read_text()
        assert (out / "state").read_text().strip() == "tagway:tagway 700"
        assert (out / "stop.rc").read_text().strip() == "0"
        assert (out / "exit").read_text().strip() == "0"  # SIGTERM: a clean stop
        notifications = (out / "notifications").read_text().splitlines()
        main = (out / "pid").read_text().strip()
        assert any("READY=1" in n for n in notifications)
        assert any("STOPPING=1" in n for n in notifications)
        # Only the agent speaks for the service (before: timedatectl, run by the clock check,
        # inherited NOTIFY_SOCKET and sent ERRNO=112).
        assert all(n.startswith(f"pid {main}: ") for n in notifications), notifications
    finally:
        _kill_leftovers(tmp_path / "out")
        shutil.rmtree(tmp_path / "ov", ignore_errors=True)


def _kill_leftovers(out: Path) -> None:
    """The agent and its stand-in manager run in sessions of their own: if the walk was killed
    before its EXIT trap stopped them, they would keep running (as the namespace's `tagway`
    user, whose uid the next test's `userdel` then finds busy)."""
    for name in ("pid", "manager"):
        try:
            pid = int((out / name).read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"tagway" in command or b"stand_in" in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
