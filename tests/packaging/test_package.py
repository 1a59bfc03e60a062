"""The Debian package's tree, units and maintainer scripts, checked in seconds: the tree comes
from `build-deb.sh --skip-venv` (everything but the virtual environment); the slow tests in
`test_deb.py` check the real .deb."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pytest

from cli.agent_cmds import EX_CONFIG
from edge.config import load_config
from tests.packaging.conftest import (
    PACKAGING,
    ROOT,
    debian_version,
    dpkg_arch,
    require,
    unit_directives,
    verify_units,
)

UNITS = PACKAGING / "systemd"
SCRIPTS = ("postinst", "prerm", "postrm")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def control(stage: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in (stage / "DEBIAN" / "control").read_text().splitlines():
        if line and not line.startswith(" "):
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_make_deb_runs_the_build_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndeb:", 1)[1].split("\n\n", 1)[0]
    assert "bash packaging/build-deb.sh" in recipe


def test_packaging_is_not_a_python_package() -> None:
    # A top-level `packaging` package would shadow PyPA's `packaging` and break pip.
    assert not list(PACKAGING.rglob("*.py"))
    assert not (PACKAGING / "__init__.py").exists()


def test_the_staged_tree_has_every_file_where_debian_and_systemd_look(staged: Path) -> None:
    files = {
        "etc/tagway/config.yaml": 0o644,
        "etc/tagway/cloud.env": 0o640,  # the DSN may hold a password
        "lib/systemd/system/tagway.service": 0o644,
        "lib/systemd/system/tagway-cloud.service": 0o644,
        "opt/tagway/share/doc/README.md": 0o644,
        "DEBIAN/control": 0o644,
        "DEBIAN/conffiles": 0o644,
        "DEBIAN/md5sums": 0o644,
        "DEBIAN/postinst": 0o755,
        "DEBIAN/prerm": 0o755,
        "DEBIAN/postrm": 0o755,
    }
    for name, expected in files.items():
        assert (staged / name).is_file(), name
        assert mode(staged / name) == expected, f"{name}: {oct(mode(staged / name))}"
    assert str((staged / "usr/bin/tagway").readlink()) == "/opt/tagway/bin/tagway"
    # The state directory is made by postinst (owned by the tagway user), not shipped.
    assert not (staged / "var").exists()
    assert not (staged / "opt/tagway/bin").exists()  # --skip-venv


def test_conffiles_are_exactly_the_files_under_etc(staged: Path) -> None:
    conffiles = (staged / "DEBIAN/conffiles").read_text().split()
    shipped = sorted("/" + str(p.relative_to(staged)) for p in (staged / "etc").rglob("*")
                     if p.is_file())  # fmt: skip
    assert sorted(conffiles) == shipped == ["/etc/tagway/cloud.env", "/etc/tagway/config.yaml"]


def test_md5sums_cover_every_shipped_file_but_the_conffiles(staged: Path) -> None:
    listed = {}
    for line in (staged / "DEBIAN/md5sums").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    shipped = {
        str(p.relative_to(staged))
        for p in staged.rglob("*")
        if p.is_file() and not p.is_symlink() and p.parts[len(staged.parts)] != "DEBIAN"
    }
    assert set(listed) == shipped - {"etc/tagway/config.yaml", "etc/tagway/cloud.env"}  # fmt: skip


def test_control_names_the_version_the_architecture_and_python(staged: Path) -> None:
    fields = control(staged)
    assert fields["Package"] == "tagway"
    assert fields["Version"] == debian_version()
    assert fields["Architecture"] == dpkg_arch()
    # The venv's interpreter links point at /usr/bin/python3 of exactly this minor version.
    assert "python3 (>= 3.11~)" in fields["Depends"]
    assert "python3 (<< 3.12)" in fields["Depends"]
    assert int(fields["Installed-Size"]) > 0


def test_the_default_config_is_valid_and_keeps_state_in_var_lib(staged: Path) -> None:
    config = load_config(staged / "etc/tagway/config.yaml")
    assert config.gateway.state_dir == Path("/var/lib/tagway")
    assert config.outbox_path == Path("/var/lib/tagway/outbox.db")
    assert config.devices == ()
    assert config.cloud is None  # written by `tagway provision`
    text = (staged / "etc/tagway/config.yaml").read_text()
    assert "tagway config validate /etc/tagway/config.yaml" in text


def test_the_staged_tree_packs_with_dpkg_deb(staged: Path, tmp_path: Path) -> None:
    dpkg_deb = require("dpkg-deb")
    deb = tmp_path / "layout.deb"
    subprocess.run([dpkg_deb, "--root-owner-group", "-Zgzip", "--build", str(staged), str(deb)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    info = subprocess.run([dpkg_deb, "-I", str(deb), "conffiles"], check=True,
                          capture_output=True, text=True).stdout  # fmt: skip
    assert info.split() == ["/etc/tagway/config.yaml", "/etc/tagway/cloud.env"]
    listing = subprocess.run([dpkg_deb, "-c", str(deb)], check=True, capture_output=True,
                             text=True).stdout.splitlines()  # fmt: skip
    entries = {line.split()[-1] if "->" not in line else line.split()[-3]: line
               for line in listing}  # fmt: skip
    assert all(" root/root " in line for line in listing)
    assert entries["./etc/tagway/cloud.env"].startswith("-rw-r----- ")
    assert entries["./usr/bin/tagway"].endswith("-> /opt/tagway/bin/tagway")


# --- the systemd units ---


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    stub = tmp_path / "tagway"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    units = [UNITS / "tagway.service", UNITS / "tagway-cloud.service"]
    assert verify_units(units, stub, tmp_path) == ""


def test_a_misspelt_directive_makes_verify_complain(tmp_path: Path) -> None:
    # The check above can fail: systemd-analyze reports unknown keys (on stderr, exit 0).
    stub = tmp_path / "tagway"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    (tmp_path / "src").mkdir()
    bad = tmp_path / "src" / "tagway.service"
    bad.write_text((UNITS / "tagway.service").read_text().replace("ProtectHome=", "ProtectHom="))
    assert "Unknown key 'ProtectHom'" in verify_units([bad], stub, tmp_path)


@pytest.mark.parametrize("unit", ["tagway.service", "tagway-cloud.service"])
def test_the_units_expose_little_by_systemds_own_measure(unit: str, tmp_path: Path) -> None:
    analyze = require("systemd-analyze")
    copy = tmp_path / unit
    copy.write_text((UNITS / unit).read_text().replace("/opt/tagway/bin/tagway", "/bin/true"))
    result = subprocess.run([analyze, "security", "--offline=yes", str(copy)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    if found is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {result.stderr}")
    # 0 is a fully locked-down unit, 10 an unprotected one; below 2 systemd rates it "OK".
    assert float(found.group(1)) < 2.0, result.stdout


def test_the_agent_unit_is_notify_hardened_and_stops_looping_on_a_bad_config() -> None:
    unit = unit_directives(UNITS / "tagway.service")
    expected = {
        "Service.Type": ["notify"],
        "Service.ExecStart": [
            "/opt/tagway/bin/tagway run --config /etc/tagway/config.yaml --log-format json"
        ],
        "Service.User": ["tagway"],
        "Service.Restart": ["always"],
        "Service.RestartPreventExitStatus": [str(EX_CONFIG)],
        "Service.ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Service.ProtectSystem": ["strict"],
        "Service.ReadWritePaths": ["/var/lib/tagway /etc/tagway"],  # fleet: versions beside config
        "Service.NoNewPrivileges": ["yes"],
        "Service.PrivateTmp": ["yes"],
        "Service.ProtectHome": ["yes"],
        "Service.CapabilityBoundingSet": [""],
        "Service.RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "Service.SupplementaryGroups": ["dialout"],
        "Service.StateDirectory": ["tagway"],
        "Service.StateDirectoryMode": ["0700"],
        "Install.WantedBy": ["multi-user.target"],
    }
    for key, values in expected.items():
        assert unit.get(key) == values, key
    assert int(unit["Service.WatchdogSec"][0]) >= 10
    assert int(unit["Unit.StartLimitBurst"][0]) > 1
    assert int(unit["Unit.StartLimitIntervalSec"][0]) > 0
    # PrivateDevices would hide the RTU serial ports that the dialout group opens.
    assert "Service.PrivateDevices" not in unit


def test_the_cloud_unit_runs_as_its_own_user_with_its_settings_file() -> None:
    unit = unit_directives(UNITS / "tagway-cloud.service")
    assert unit["Service.User"] == ["tagway-cloud"]
    assert unit["Service.EnvironmentFile"] == ["/etc/tagway/cloud.env"]
    assert unit["Service.StateDirectory"] == ["tagway-cloud"]
    assert unit["Service.ReadWritePaths"] == ["/var/lib/tagway-cloud"]
    exec_start = unit["Service.ExecStart"][0]
    assert exec_start.startswith("/opt/tagway/bin/tagway cloud serve --database ")
    assert "--host " in exec_start
    assert "--port " in exec_start
    # Every variable the command line expands is set by the shipped settings file.
    settings = dict(
        line.split("=", 1)
        for line in (PACKAGING / "etc/cloud.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in re.findall(r"\$\{(\w+)\}", exec_start):
        assert settings.get(name), f"{name} is not set in cloud.env"
    assert settings["TAGWAY_CLOUD_DATABASE"] == "sqlite:////var/lib/tagway-cloud/cloud.db"


# --- maintainer scripts ---


@pytest.mark.parametrize("script", SCRIPTS)
def test_maintainer_scripts_are_valid_posix_shell(script: str) -> None:
    path = PACKAGING / "debian" / script
    assert path.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(path)], check=True, timeout=10)
    if (dash := require_optional("dash")) is not None:
        subprocess.run([dash, "-n", str(path)], check=True, timeout=10)


@pytest.mark.parametrize("script", SCRIPTS)
def test_maintainer_scripts_pass_shellcheck(script: str) -> None:
    shellcheck = require("shellcheck")
    result = subprocess.run([shellcheck, "--shell=sh", "--severity=style",
                             str(PACKAGING / "debian" / script)],
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_the_build_script_passes_shellcheck() -> None:
    shellcheck = require("shellcheck")
    result = subprocess.run([shellcheck, str(PACKAGING / "build-deb.sh")],
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout


def require_optional(tool: str) -> str | None:
    import shutil  # noqa: PLC0415

    return shutil.which(tool)


# --- the cloud container and compose file (built elsewhere; checked here) ---

DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (PACKAGING / "Containerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword, args.strip()))
    return out


def test_the_containerfile_is_a_multi_stage_build_run_by_a_non_root_user() -> None:
    steps = containerfile()
    assert {k for k, _ in steps} <= DOCKERFILE_INSTRUCTIONS
    assert all(k == k.upper() for k, _ in steps)
    froms = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    assert len(froms) == 2
    assert steps[froms[0]][1].endswith(" AS build")
    final = steps[froms[1] :]
    assert ("COPY", "--from=build /opt/tagway /opt/tagway") in final
    users = [args for k, args in final if k == "USER"]
    assert users == ["tagway-cloud"]
    assert final.index(("USER", "tagway-cloud")) < [k for k, _ in final].index("ENTRYPOINT")
    # Every COPY from the build context names something that exists in the repository.
    for keyword, args in steps[: froms[1]]:
        if keyword == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source


def test_the_containerfile_serves_the_cloud_and_checks_healthz() -> None:
    steps = dict(containerfile())
    entrypoint = json.loads(steps["ENTRYPOINT"])  # exec form: JSON, so signals reach tagway
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    assert entrypoint[2].startswith("exec tagway cloud serve --database ")
    assert "CMD" in steps["HEALTHCHECK"]
    health = json.loads(steps["HEALTHCHECK"].split("CMD", 1)[1])
    assert "/healthz" in " ".join(health)
    assert steps["EXPOSE"] == "8080"


def test_compose_runs_the_cloud_against_timescaledb_with_a_volume_and_healthchecks() -> None:
    import yaml  # noqa: PLC0415

    compose = yaml.safe_load((PACKAGING / "compose.yaml").read_text())
    db, cloud = compose["services"]["db"], compose["services"]["cloud"]
    assert db["image"].startswith("timescale/timescaledb:")
    volume, mount = db["volumes"][0].split(":", 1)
    assert mount == "/var/lib/postgresql/data"
    assert volume in compose["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert (PACKAGING / cloud["build"]["context"] / cloud["build"]["dockerfile"]).is_file()
    assert cloud["depends_on"]["db"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(cloud["healthcheck"]["test"])
    assert "@db:5432/" in cloud["environment"]["TAGWAY_CLOUD_DATABASE"]
    assert all(port.startswith("127.0.0.1:") for port in cloud["ports"])
    assert cloud["cap_drop"] == ["ALL"]


def test_compose_citus_runs_the_cloud_on_a_coordinator_and_two_workers() -> None:
    import yaml  # noqa: PLC0415

    compose = yaml.safe_load((PACKAGING / "compose.citus.yaml").read_text())
    services = compose["services"]
    nodes = ("coordinator", "worker1", "worker2")
    for name in nodes:
        node = services[name]
        assert node["image"].startswith("citusdata/citus:"), name
        volume, mount = node["volumes"][0].split(":", 1)
        assert (mount, volume in compose["volumes"]) == ("/var/lib/postgresql/data", True)
        assert "pg_isready" in " ".join(node["healthcheck"]["test"])
        # the nodes log in to each other with the password the cluster was made with
        assert node["environment"]["PGPASSWORD"] == node["environment"]["POSTGRES_PASSWORD"]
    setup = services["cluster"]
    assert setup["environment"]["PGHOST"] == "coordinator"
    calls = " ".join(setup["command"])
    assert "citus_set_coordinator_host('coordinator', 5432)" in calls
    assert all(f"citus_add_node('{w}', 5432)" in calls for w in nodes[1:])
    assert {setup["depends_on"][n]["condition"] for n in nodes} == {"service_healthy"}
    cloud = services["cloud"]
    assert cloud["depends_on"]["cluster"]["condition"] == "service_completed_successfully"
    assert "@coordinator:5432/" in cloud["environment"]["TAGWAY_CLOUD_DATABASE"]
    assert "@worker1:5432/" in cloud["environment"]["TAGWAY_CLOUD_TELEMETRY_DATABASE"]
    assert cloud["command"][0] == "--migrate-database"
    assert "@coordinator:5432/" in cloud["command"][1]
    assert (PACKAGING / cloud["build"]["context"] / cloud["build"]["dockerfile"]).is_file()
    assert all(port.startswith("127.0.0.1:") for port in cloud["ports"])
    assert cloud["cap_drop"] == ["ALL"]
    assert not any("ports" in services[n] for n in nodes)  # the database is not published
