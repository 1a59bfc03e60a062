"""The cloud-side view of the config as `tagway status` and the TUI overview show it."""

from __future__ import annotations

from cli.agent_cmds import describe_remote
from cli.tui.panes import config_line
from edge.api_contract import RemoteConfig

NOW = 1_800_000_000.0


def test_a_cloud_managed_gateway_after_a_passed_probation() -> None:
    remote = RemoteConfig(managed_by="cloud", version=7, last_good_version=7, outcome="applied",
                          outcome_version=7, at=NOW - 120)  # fmt: skip
    assert remote.probation == "passed"
    assert config_line(remote, NOW).plain == (
        "cloud-managed  running version 7  probation of version 7 passed 2m00s ago"
    )
    assert describe_remote(remote).startswith("cloud-managed, running version 7; last: applied 7")


def test_a_rolled_back_version_says_why_and_drift_shows() -> None:
    remote = RemoteConfig(managed_by="cloud", version=None, outcome="rolled_back",
                          outcome_version=8, at=NOW - 5, reason="device boiler9 did not connect",
                          drift=False)  # fmt: skip
    line = config_line(remote, NOW).plain
    assert "running local file" in line
    assert "probation of version 8 failed" in line
    assert "(device boiler9 did not connect)" in line
    assert "(device boiler9 did not connect)" in describe_remote(remote)
    drifted = RemoteConfig(managed_by="cloud", drift=True, outcome="drift")
    assert "edited here (drift from the cloud)" in config_line(drifted, NOW).plain


def test_a_trial_in_progress() -> None:
    remote = RemoteConfig(managed_by="cloud", version=6, phase="probation", candidate=7)
    assert remote.probation == "running"
    assert config_line(remote, NOW).plain.endswith("trying version 7: probation")
    assert describe_remote(remote).endswith("trying version 7: probation")
