"""Config versions on disk and the probation's judgement, as pure units (real files in a
temporary directory; the agent's own trials are in test_remote_config.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edge.fleet.probation import Goal, Link, Observed, missing, watch
from edge.fleet.versions import ConfigVersions, Phase, Version, digest

OLD = "gateway: {name: gw}\n"
NEW = "gateway: {name: gw}\ndevices: []\n"


def _on_trial(tmp_path: Path, phase: Phase, *, in_place: str) -> ConfigVersions:
    path = tmp_path / "config.yaml"
    path.write_text(OLD)
    versions = ConfigVersions(path)
    good = versions.adopt_running()
    candidate = Version(version=7, digest=digest(NEW))
    versions.keep(candidate, NEW)
    versions.update(phase=phase, candidate=candidate, since=time.time(), last_good=good)
    path.write_text(in_place)
    return ConfigVersions(path)  # as the next process sees it


@pytest.mark.parametrize("phase", [Phase.APPLYING, Phase.PROBATION])
@pytest.mark.parametrize("in_place", [OLD, NEW])
def test_an_interrupted_trial_leaves_the_old_version_running(
    tmp_path: Path, phase: Phase, in_place: str
) -> None:
    versions = _on_trial(tmp_path, phase, in_place=in_place)
    report = versions.recover()
    assert report is not None
    assert report.outcome == "rolled_back"
    assert "version 7" in (report.reason or "")
    assert (tmp_path / "config.yaml").read_text() == OLD
    record = ConfigVersions(tmp_path / "config.yaml").record  # durable
    assert (record.phase, record.candidate) == (Phase.IDLE, None)
    assert record.running == Version(digest=digest(OLD))
    assert record.outcomes == {7: "rolled_back"}
    assert [p.outcome for p in record.pending] == ["rolled_back"]
    assert versions.recover() is None  # a second start has nothing left to do


def test_a_restart_the_new_config_asked_for_starts_its_probation(tmp_path: Path) -> None:
    versions = _on_trial(tmp_path, Phase.RESTARTING, in_place=NEW)
    assert versions.recover() is None
    assert versions.record.phase is Phase.PROBATION
    assert (tmp_path / "config.yaml").read_text() == NEW


def test_a_restart_that_finds_another_file_rolls_back(tmp_path: Path) -> None:
    versions = _on_trial(tmp_path, Phase.RESTARTING, in_place="gateway: {name: edited}\n")
    report = versions.recover()
    assert report is not None
    assert (tmp_path / "config.yaml").read_text() == OLD


def test_a_damaged_record_starts_fresh_from_the_running_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(OLD)
    (tmp_path / "config.yaml.fleet.json").write_text("{not json")
    versions = ConfigVersions(path)
    assert versions.recover() is None
    assert versions.adopt_running() == Version(digest=digest(OLD))
    assert (tmp_path / f"config.yaml.local-{digest(OLD)[:8]}").read_text() == OLD


def test_a_version_file_that_changed_is_never_put_in_place(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(OLD)
    versions = ConfigVersions(path)
    candidate = Version(version=3, digest=digest(NEW))
    versions.keep(candidate, NEW)
    versions.file_of(candidate).write_text("tampered: true\n")
    with pytest.raises(OSError, match="does not hold version 3"):
        versions.put_in_place(candidate)
    assert path.read_text() == OLD


def test_old_version_files_are_pruned_but_not_the_ones_in_use(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(OLD)
    versions = ConfigVersions(path)
    good = versions.adopt_running()
    for n in range(1, 10):
        versions.keep(Version(version=n, digest=digest(f"v: {n}\n")), f"v: {n}\n")
    running = Version(version=1, digest=digest("v: 1\n"))
    versions.update(running=running, last_good=good)
    versions.prune()
    left = {p.name for p in tmp_path.glob("config.yaml.*") if not p.name.endswith(".json")}
    assert "config.yaml.v1" in left  # running, though among the oldest
    assert f"config.yaml.local-{good.digest[:8]}" in left
    assert "config.yaml.v9" in left
    assert len(left) <= 6


def test_report_numbers_only_grow(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(OLD)
    versions = ConfigVersions(path)
    first = versions.next_seq()
    (tmp_path / "config.yaml.fleet.json").unlink()  # a lost record
    assert ConfigVersions(path).next_seq() > first


# ---------------------------------------------------------------------------------- probation


def test_what_a_goal_lacks_is_said_in_words() -> None:
    goal = Goal.of(connected_before=["pump1", "gone"], configured=["pump1", "boiler2"],
                   added=["boiler2"], uplink_after=100.0)  # fmt: skip
    assert goal.devices == {"pump1", "boiler2"}
    now = Observed(
        links={"pump1": Link(True), "boiler2": Link(False, "connection refused")},
        uplink_success=99.0, uplink_error="HTTP 503",
    )  # fmt: skip
    assert missing(goal, now) == [
        "device boiler2 did not connect (connection refused)",
        "the uplink did not reach the cloud (HTTP 503)",
    ]
    assert missing(goal, Observed({"pump1": Link(True), "boiler2": Link(True)}, 101.0)) == []


async def test_probation_passes_once_the_goal_holds_and_fails_at_its_deadline() -> None:
    goal = Goal(devices=frozenset({"pump1"}), uplink_after=None)
    started = time.monotonic()
    links = {"pump1": Link(False)}

    async def connect_later() -> None:
        await asyncio.sleep(0.5)
        links["pump1"] = Link(True)

    async with asyncio.TaskGroup() as group:
        group.create_task(connect_later())
        passed = await watch(goal, lambda: Observed(dict(links)), limit_s=5, settle_s=0.3)
    assert passed is None
    assert 0.7 < time.monotonic() - started < 3
    failed = await watch(goal, lambda: Observed({"pump1": Link(False, "timeout")}), limit_s=0.6)
    assert failed == "device pump1 did not connect (timeout) within 0.6 s"
