"""`tagway cloud tenant create` and `api-key create` act on the database the service uses, never
on a new empty file (before: without --database they created ./tagway-cloud.db wherever they
were run, and handed out keys no server knew)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import cloud_cmds
from cli.app import app


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without a cloud database, no $TAGWAY_CLOUD_DATABASE, no cloud.env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAGWAY_CLOUD_DATABASE", raising=False)
    monkeypatch.setattr(cloud_cmds, "CLOUD_ENV", tmp_path / "etc" / "cloud.env")
    return tmp_path


def _tagway(*args: str) -> tuple[int, str, str]:
    """The command as a user runs it, in the current directory (/etc/tagway/cloud.env is not on
    this machine; the packaged case is below)."""
    env = {k: v for k, v in os.environ.items() if k != "TAGWAY_CLOUD_DATABASE"}
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env,
        check=False, timeout=120,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def _in_process(*args: str) -> tuple[int, str, str]:
    """The command in this process, so it sees the patched `CLOUD_ENV`."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _make_database(url: str) -> None:
    code, _, err = _tagway("cloud", "migrate", "--database", url)  # what serve does at start
    assert code == 0, err


def test_without_a_database_it_refuses_and_creates_nothing(here: Path) -> None:
    code, out, err = _tagway("cloud", "tenant", "create", "acme2")
    assert code == 1
    assert out == ""
    assert err.startswith("tagway: error: which cloud database? Give --database")
    assert "TAGWAY_CLOUD_DATABASE" in err
    assert list(here.iterdir()) == []  # no ./tagway-cloud.db
    code, _, err = _tagway("cloud", "api-key", "create", "--tenant", "1", "--role", "viewer")
    assert code == 1
    assert "which cloud database?" in err


def test_a_database_that_is_not_there_is_refused(here: Path) -> None:
    code, _, err = _tagway("cloud", "tenant", "create", "acme2", "--database",
                           f"sqlite:///{here / 'typo.db'}")  # fmt: skip
    assert code == 1
    assert f"no cloud database at {here / 'typo.db'}" in err
    assert not (here / "typo.db").exists()


def test_it_finds_the_database_serve_uses_here(here: Path) -> None:
    _make_database("sqlite:///tagway-cloud.db")  # `tagway cloud serve` without --database
    code, out, err = _tagway("cloud", "tenant", "create", "acme2", "--json")
    assert code == 0, err
    created = json.loads(out)
    with sqlite3.connect(here / "tagway-cloud.db") as db:
        names = [r[0] for r in db.execute("SELECT name FROM tenants")]
    assert names == ["acme2"]
    assert created["name"] == "acme2"


def test_on_a_packaged_cloud_host_it_uses_the_services_database(here: Path) -> None:
    service_db = here / "var" / "cloud.db"
    service_db.parent.mkdir()
    _make_database(f"sqlite:///{service_db}")
    cloud_cmds.CLOUD_ENV.parent.mkdir()
    cloud_cmds.CLOUD_ENV.write_text(
        f"# settings\nTAGWAY_CLOUD_DATABASE=sqlite:///{service_db}\nTAGWAY_CLOUD_PORT=8080\n"
    )
    code, _, err = _in_process("cloud", "tenant", "create", "plant-b")
    assert code == 0, err
    with sqlite3.connect(service_db) as db:
        assert [r[0] for r in db.execute("SELECT name FROM tenants")] == ["plant-b"]
    assert not (here / "tagway-cloud.db").exists()
