"""The layout's import rules hold, and a violation makes the check fail.

`make check` runs `lint-imports` on the real tree; here we prove the contracts have teeth by
copying the packages to a scratch directory, adding a forbidden import, and watching it fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["edge", "cloud", "protocols", "store_forward", "provisioning", "cli", "firmware_sim"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_real_tree_keeps_the_rules(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr


def test_edge_importing_cloud_beyond_the_contract_fails(tree: Path) -> None:
    (tree / "cloud" / "service_detail.py").write_text('"""A cloud internal."""\n')
    (tree / "edge" / "something.py").write_text("import cloud.service_detail  # forbidden\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "edge imports only" in result.stdout
    assert "edge.something -> cloud.service_detail" in result.stdout


def test_edge_may_import_the_wire_contract(tree: Path) -> None:
    (tree / "cloud" / "contract.py").write_text('"""Wire models."""\n')
    (tree / "edge" / "uplink_probe.py").write_text("import cloud.contract  # allowed\n")
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("protocols", "store_forward"),
        ("store_forward", "protocols"),
        ("firmware_sim", "protocols"),
        ("provisioning", "cloud"),
        ("cloud", "edge"),
    ],
)
def test_leaf_packages_stay_leaves(tree: Path, source: str, target: str) -> None:
    (tree / source / "leak.py").write_text(f"import {target}  # forbidden\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert f"{source}.leak -> {target}" in result.stdout


def test_pypa_packaging_is_not_shadowed() -> None:
    # packaging/ is a plain folder; importing `packaging` must still give PyPA's library.
    result = subprocess.run(
        [sys.executable, "-c", "import packaging.version, sys; print(packaging.version.__file__)"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    assert "site-packages" in result.stdout
    assert not (ROOT / "packaging" / "__init__.py").exists()
