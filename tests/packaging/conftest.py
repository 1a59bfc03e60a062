"""Fixtures for the package tests: the staged tree (seconds) and the built .deb (minutes, once
per session, only for tests marked slow)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
BUILD = PACKAGING / "build-deb.sh"


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def debian_version() -> str:
    """The package version build-deb.sh derives (PEP 440 pre-releases sort first: ~rc1)."""
    return re.sub(r"\.?(a|b|rc|dev)(\d+)", r"~\1\2", project_version())


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def build(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_CONSTRAINTS_FROM": sys.executable}
    result = subprocess.run(
        ["bash", str(BUILD), *args], capture_output=True, text=True, timeout=timeout, env=env,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package tree without the virtual environment (`build-deb.sh --skip-venv`)."""
    require("dpkg")
    stage = tmp_path_factory.mktemp("stage") / "root"
    build("--skip-venv", "--stage-dir", str(stage), timeout=60)
    return stage


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real package, built once per session exactly as `make deb` builds it
    (`TAGWAY_TEST_DEB=path` uses one already built from this checkout instead)."""
    require("dpkg-deb")
    if prebuilt := os.environ.get("TAGWAY_TEST_DEB"):
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("dist")
    result = build("--out", str(out), timeout=1500)
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb == out / f"tagway_{debian_version()}_{dpkg_arch()}.deb"
    return deb


def dpkg_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def unit_directives(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> every value it is given (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def verify_units(units: list[Path], executable: Path, tmp: Path) -> str:
    """`systemd-analyze verify` output for copies of `units` whose ExecStart names
    `executable` instead of /opt/tagway/bin/tagway (verify checks that the binary exists)."""
    analyze = require("systemd-analyze")
    copies = []
    for unit in units:
        copy = tmp / unit.name
        copy.write_text(unit.read_text().replace("/opt/tagway/bin/tagway", str(executable)))
        copies.append(str(copy))
    result = subprocess.run(
        [analyze, "verify", *copies], capture_output=True, text=True, timeout=60, check=False
    )
    return (result.stdout + result.stderr).strip() + (
        f"\n(exit {result.returncode})" if result.returncode else ""
    )
