"""Upgrades without the package manager: state files from an older release are opened by this
code with every chunk intact; a file from a newer release is refused, clearly, and left as it was.

`fixtures/outbox-v1.db` is an outbox as the schema-1 release leaves it after an outage (chunks
in every lane, an upload cut short); `fixtures/make_outbox_v1.py` regenerates it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import apsw
import pytest

from edge.alarm_store import SCHEMA_VERSION as ALARM_SCHEMA_VERSION
from edge.alarm_store import AlarmStore, AlarmStoreError
from edge.alarms import Alarm, AlarmState
from edge.chunk import decode_readings, decode_records
from store_forward import (
    SCHEMA_VERSION,
    Lane,
    Outbox,
    SchemaTooNew,
    read_schema_version,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TAGWAY = [sys.executable, "-m", "cli"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def previous_outbox(tmp_path: Path) -> Path:
    """A copy of the previous release's outbox (the fixture itself is never opened)."""
    state = tmp_path / "state"
    state.mkdir()
    return Path(shutil.copyfile(FIXTURES / "outbox-v1.db", state / "outbox.db"))


def with_user_version(path: Path, version: int) -> Path:
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA user_version={version:d}")
    conn.close()
    return path


def test_the_fixture_is_what_the_previous_release_wrote() -> None:
    manifest = json.loads((FIXTURES / "outbox-v1.json").read_text())
    assert manifest["schema_version"] == 1
    assert read_schema_version(FIXTURES / "outbox-v1.db") == 1
    lanes = {chunk["lane"] for chunk in manifest["chunks"]}
    assert lanes == {lane.value for lane in Lane}
    assert not (FIXTURES / "outbox-v1.db-wal").exists()  # everything is in the main file


def test_every_chunk_of_the_previous_release_survives_the_upgrade(previous_outbox: Path) -> None:
    expected = json.loads((FIXTURES / "outbox-v1.json").read_text())["chunks"]
    with Outbox(previous_outbox) as outbox:  # migrates in place to SCHEMA_VERSION
        stats = outbox.stats()
        lease = outbox.lease(max_bytes=1 << 30, max_chunks=10_000)
        assert not outbox.lease()  # nothing else left
    assert read_schema_version(previous_outbox) == SCHEMA_VERSION
    assert stats.chunks == len(expected)
    got = [
        {"id": int(c.id), "lane": c.lane.value, "count": c.count,
         "sha256": hashlib.sha256(c.payload).hexdigest()}
        for c in lease.chunks
    ]  # fmt: skip
    # The same chunks, byte for byte, and still in priority order: alarms, events, telemetry.
    assert got == expected
    for chunk in lease.chunks:
        if chunk.lane is Lane.TELEMETRY:
            readings = decode_readings(chunk.payload)
            assert len(readings) == chunk.count
            assert {r.tag for r in readings} == {"flow", "running", "vibration"}
        else:
            assert len(decode_records(chunk.payload)) == chunk.count


def test_an_outbox_from_a_newer_release_is_refused_and_left_untouched(
    previous_outbox: Path,
) -> None:
    future = with_user_version(previous_outbox, SCHEMA_VERSION + 1)
    before = digest(future)
    with pytest.raises(SchemaTooNew) as refused:
        Outbox(future)
    message = str(refused.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"knows only up to {SCHEMA_VERSION}" in message
    assert "newer tagway" in message
    assert (refused.value.found, refused.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert digest(future) == before
    assert read_schema_version(future) == SCHEMA_VERSION + 1


def test_alarm_states_survive_a_reopen_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "alarms.db"
    store = AlarmStore(path)
    store.save([Alarm(rule="pump1_flow_low", state=AlarmState.ACTIVE, raised_at=5,
                      acked_at=None, cleared_at=None, value=3.5)])  # fmt: skip
    store.close()
    reopened = AlarmStore(path)
    assert reopened.load()["pump1_flow_low"].state is AlarmState.ACTIVE
    reopened.close()
    with_user_version(path, ALARM_SCHEMA_VERSION + 1)
    before = digest(path)
    newer = rf"schema version {ALARM_SCHEMA_VERSION + 1}, but this tagway understands up"
    with pytest.raises(AlarmStoreError, match=newer):
        AlarmStore(path)
    assert digest(path) == before


async def run_agent(state: Path, tmp_path: Path) -> tuple[int, str]:
    config = tmp_path / "config.yaml"
    config.write_text(f"gateway:\n  name: gw\n  state_dir: {state}\nlocal_api:\n  port: 0\n")
    proc = await asyncio.create_subprocess_exec(
        *TAGWAY, "run", "--config", str(config), "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, err.decode()


async def test_tagway_run_refuses_an_outbox_from_a_newer_release_in_one_line(
    previous_outbox: Path, tmp_path: Path
) -> None:
    future = with_user_version(previous_outbox, SCHEMA_VERSION + 1)
    before = digest(future)
    code, err = await run_agent(future.parent, tmp_path)
    assert code == 78  # EX_CONFIG: systemd's RestartPreventExitStatus stops a restart loop
    expected = (
        f"tagway: error: {future} has outbox schema version {SCHEMA_VERSION + 1}, but this "
        f"tagway knows only up to {SCHEMA_VERSION}: it was written by a newer tagway. Upgrade "
        "tagway, or move the file away to start an empty outbox."
    )
    assert err.splitlines() == [expected]
    assert digest(future) == before


async def test_tagway_run_refuses_alarm_states_from_a_newer_release_in_one_line(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    AlarmStore(state / "alarms.db").close()
    with_user_version(state / "alarms.db", ALARM_SCHEMA_VERSION + 1)
    code, err = await run_agent(state, tmp_path)
    assert code == 78
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tagway: error: alarm state file {state / 'alarms.db'} has ")
    assert "written by a newer release" in lines[0]


def test_a_next_release_migration_runs_in_place_on_the_fixture_and_keeps_every_chunk(
    previous_outbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rehearsal of the first real upgrade: a schema-2 migration (here an extra index) is
    registered the way the next release will register it, and the schema-1 file is opened."""
    from store_forward import outbox as outbox_module  # noqa: PLC0415
    from store_forward import schema, stats  # noqa: PLC0415

    step = schema.Migration(SCHEMA_VERSION + 1, "rehearsal: index chunk ages",
                            "CREATE INDEX chunk_created ON chunk(created);")  # fmt: skip
    for module in (schema, outbox_module, stats):
        monkeypatch.setattr(module, "SCHEMA_VERSION", step.version)
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, step))
    expected = json.loads((FIXTURES / "outbox-v1.json").read_text())["chunks"]

    with Outbox(previous_outbox) as outbox:
        lease = outbox.lease(max_bytes=1 << 30, max_chunks=10_000)
    assert read_schema_version(previous_outbox) == step.version
    assert [hashlib.sha256(c.payload).hexdigest() for c in lease.chunks] == [
        e["sha256"] for e in expected
    ]
    conn = apsw.Connection(str(previous_outbox))
    applied = conn.execute("SELECT version, name FROM schema_migration ORDER BY version")
    assert [tuple(row) for row in applied] == [
        (1, "chunks, leases, lane counters, quarantine, recovery log"),
        *((m.version, m.name) for m in schema.MIGRATIONS[1:]),
    ]
    conn.close()

    # Rolling the package back: the schema-1 code refuses the migrated file.
    monkeypatch.undo()
    with pytest.raises(SchemaTooNew, match=f"schema version {step.version}, but this tagway"):
        Outbox(previous_outbox)
