"""The real package, built once per session as `make deb` builds it (minutes: marked slow).

Inspected with dpkg-deb (files, permissions, conffiles, maintainer scripts), unpacked into a
throwaway root (`dpkg-deb -x`), and run from there: a private mount namespace lays the unpacked
tree over /usr/bin, /etc and /opt, so `tagway` runs through its real symlink, shebang and
interpreter links, and validates the shipped /etc/tagway/config.yaml.
"""

from __future__ import annotations

import marshal
import os
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.packaging.conftest import (
    debian_version,
    project_version,
    require,
    verify_units,
)

pytestmark = pytest.mark.slow


def dpkg_deb(*args: str) -> str:
    return subprocess.run([require("dpkg-deb"), *args], check=True, capture_output=True,
                          text=True, timeout=300).stdout  # fmt: skip


@pytest.fixture(scope="module")
def listing(built_deb: Path) -> dict[str, tuple[str, str]]:
    """Path in the package -> (mode string, owner), symlinks as 'path -> target'."""
    out = {}
    for line in dpkg_deb("-c", str(built_deb)).splitlines():
        perms, owner, *_ = line.split(maxsplit=5)
        name = line.split(maxsplit=5)[5]
        out[name.removeprefix("./")] = (perms, owner)
    return out


@pytest.fixture(scope="module")
def unpacked(built_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    dpkg_deb("-x", str(built_deb), str(root))
    return root


def test_control_conffiles_and_maintainer_scripts(built_deb: Path) -> None:
    info = dpkg_deb("-I", str(built_deb))
    assert " Package: tagway\n" in info
    assert f" Version: {debian_version()}\n" in info
    for script in ("postinst", "prerm", "postrm"):
        # dpkg-deb -I marks executable control members with '*'.
        assert any(line.split()[-3:] == ["*", script, "#!/bin/sh"]
                   for line in info.splitlines()), script  # fmt: skip
    conffiles = dpkg_deb("-I", str(built_deb), "conffiles").split()
    assert conffiles == ["/etc/tagway/config.yaml", "/etc/tagway/cloud.env"]
    postinst = dpkg_deb("-I", str(built_deb), "postinst")
    assert "deb-systemd-helper enable tagway.service" in postinst


def test_files_and_permissions(listing: dict[str, tuple[str, str]]) -> None:
    assert all(owner == "root/root" for _, owner in listing.values())
    assert listing["usr/bin/tagway -> /opt/tagway/bin/tagway"][0].startswith("l")
    assert listing["opt/tagway/bin/tagway"][0] == "-rwxr-xr-x"
    assert listing["opt/tagway/bin/python3 -> /usr/bin/python3"][0].startswith("l")
    assert listing["etc/tagway/config.yaml"][0] == "-rw-r--r--"
    assert listing["etc/tagway/cloud.env"][0] == "-rw-r-----"
    assert listing["lib/systemd/system/tagway.service"][0] == "-rw-r--r--"
    assert listing["lib/systemd/system/tagway-cloud.service"][0] == "-rw-r--r--"
    assert "opt/tagway/pyvenv.cfg" in listing
    assert not [name for name in listing if name.startswith("var/")]  # postinst makes it
    # No file is writable by anyone but root.
    assert not [name for name, (perms, _) in listing.items()
                if perms[0] != "l" and perms[8] == "w"]  # fmt: skip


def test_the_venv_names_opt_tagway_and_never_the_build_directory(unpacked: Path) -> None:
    venv = unpacked / "opt/tagway"
    assert (venv / "bin/tagway").read_text().startswith("#!/opt/tagway/bin/python")
    config = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in config
    for path in [venv / "pyvenv.cfg", *(p for p in (venv / "bin").iterdir() if p.is_file())]:
        assert str(unpacked) not in path.read_text(errors="replace"), path
        assert "/stage/" not in path.read_text(errors="replace"), path
    # Byte-code is shipped (the unit's /opt is read-only) and names the installed sources.
    pyc = next((venv / "lib").glob("python3.*/site-packages/cli/__pycache__/app.*.pyc"))
    code = marshal.loads(pyc.read_bytes()[16:])  # noqa: S302 - byte-code this test built
    assert code.co_filename.startswith("/opt/tagway/lib/python3.")


def test_the_units_verify_against_the_installed_command(unpacked: Path, tmp_path: Path) -> None:
    units = sorted((unpacked / "lib/systemd/system").glob("*.service"))
    assert [u.name for u in units] == ["tagway-cloud.service", "tagway.service"]
    assert verify_units(units, unpacked / "opt/tagway/bin/tagway", tmp_path) == ""


def overlay_script(unpacked: Path, command: str) -> str:
    """Shell that lays the unpacked package over /usr/bin, /etc and /opt, then runs `command`."""
    return (
        "set -e; "
        f"mount -t overlay overlay -o 'lowerdir={unpacked}/usr/bin:/usr/bin' /usr/bin; "
        f"mount -t overlay overlay -o 'lowerdir={unpacked}/etc:/etc' /etc; "
        "mount -t tmpfs tmpfs /opt; mkdir /opt/tagway; "
        f"mount --bind '{unpacked}/opt/tagway' /opt/tagway; {command}"
    )


def clean_env() -> dict[str, str]:
    # Without PYTHONPATH (and run from /): nothing may come from this source tree.
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def run_installed(unpacked: Path, command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` as if the package were installed: in a private mount namespace, the
    unpacked /usr/bin and /etc are laid over the real ones (read-only overlays) and the unpacked
    /opt/tagway is mounted at /opt/tagway. Nothing of it is visible outside the command."""
    return subprocess.run(
        [require("unshare"), "--mount", "--propagation", "private", "sh", "-c",
         overlay_script(unpacked, command)],
        capture_output=True, text=True, timeout=120, check=False, cwd="/", env=clean_env(),
    )  # fmt: skip


def test_the_installed_command_runs_and_validates_the_shipped_config(unpacked: Path) -> None:
    probe = run_installed(unpacked, "test -L /usr/bin/tagway")
    if probe.returncode != 0:
        pytest.skip(f"cannot overlay the unpacked root here: {probe.stderr.strip()}")
    for command in ("/opt/tagway/bin/tagway --version", "tagway --version"):
        version = run_installed(unpacked, command)
        assert (version.returncode, version.stdout) == (0, f"tagway {project_version()}\n")
    validate = run_installed(unpacked, "tagway config validate /etc/tagway/config.yaml")
    assert validate.returncode == 0, validate.stderr
    assert (
        validate.stdout == "/etc/tagway/config.yaml: ok (0 devices, 0 tags, 0 alarms, 0 models)\n"
    )
    # The venv holds its own dependencies: nothing is imported from the build machine's paths.
    where = run_installed(
        unpacked, "/opt/tagway/bin/python -c 'import apsw, numpy, cli; "
        "print(apsw.__file__, numpy.__file__, cli.__file__)'"
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(p.startswith("/opt/tagway/lib/") for p in where.stdout.split())


def test_the_installed_agent_starts_as_the_unit_runs_it_and_signals_ready(
    unpacked: Path, tmp_path: Path
) -> None:
    """The unit's command line, from the package, under the notify protocol: READY=1 comes,
    the watchdog is fed, and SIGTERM stops it cleanly."""
    if run_installed(unpacked, "true").returncode != 0:
        pytest.skip("cannot overlay the unpacked root here")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"gateway:\n  name: gw\n  state_dir: {tmp_path / 'state'}\nlocal_api:\n  port: 0\n"
    )
    with tempfile.TemporaryDirectory(prefix="tgw-") as short:
        path = str(Path(short) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(60)
            agent = start_installed(
                unpacked, f"exec /opt/tagway/bin/tagway run --config '{config}' --log-format json",
                {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
            )  # fmt: skip
            try:
                while b"READY=1" not in sock.recv(4096):
                    pass  # a watchdog ping may come first
                sock.settimeout(5)
                assert sock.recv(4096) == b"WATCHDOG=1"
            finally:
                agent.send_signal(signal.SIGTERM)
                _, logs = agent.communicate(timeout=30)
    assert agent.returncode == 0, logs[-2000:]
    assert (tmp_path / "state" / "outbox.db").is_file()


def start_installed(unpacked: Path, command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Like `run_installed`, but in the background; `exec` in `command` makes the started
    process the one that signals reach."""
    return subprocess.Popen(
        [require("unshare"), "--mount", "--propagation", "private", "sh", "-c",
         overlay_script(unpacked, command)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/",
        env={**clean_env(), **env},
    )  # fmt: skip
