"""`tagway cloud config push | history | diff` and `tagway cloud rollout status`, run as an
engineer runs them: the CLI in a subprocess against the cloud served on a port-0 socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.contract import config_digest
from tests.cli.test_cli import tagway
from tests.cloud.conftest import Start
from tests.cloud.fleet_support import Reporter

pytestmark = pytest.mark.integration

GOOD = """\
gateway: {name: gw, state_dir: STATE}
fleet: {managed_by: cloud, probation: 5}
"""


async def test_push_validates_first_then_stores_and_rolls_out(
    make_live: Start, tmp_path: Path
) -> None:
    cloud = await make_live()
    url = str(cloud.client.base_url).rstrip("/")
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant, "press-4")
    key = ("--cloud", url, "--api-key", tenant.admin)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("STATE", str(tmp_path)) + "outbox: {quota: lots}\n")
    code, out, err = await tagway("cloud", "config", "push", str(bad), "--gateway", str(gw[0]),
                                  *key)  # fmt: skip
    assert code == 1
    assert f"{bad}:3: outbox.quota" in err
    assert "Traceback" not in err
    assert (await cloud.get(tenant.admin, "/v1/configs")).json() == []  # nothing was sent

    good = tmp_path / "config.yaml"
    good.write_text(GOOD.replace("STATE", str(tmp_path)))
    code, out, err = await tagway("cloud", "config", "push", str(good), "--gateway", str(gw[0]),
                                  "--comment", "first", *key)  # fmt: skip
    assert code == 0, err
    assert "stored as version" in out
    version = (await cloud.get(tenant.admin, "/v1/configs")).json()[0]
    assert (version["comment"], version["digest"]) == ("first", config_digest(good.read_text()))
    rollout = (await cloud.get(tenant.admin, "/v1/rollouts")).json()[0]
    code, out, _ = await tagway("cloud", "rollout", "status", str(rollout["id"]), *key)
    assert code == 2  # still running
    assert "press-4" in out

    gateway = Reporter(cloud, gw)
    await gateway.send(gateway.config("applied", version["version"], document=good.read_text()))
    code, out, _ = await tagway("cloud", "rollout", "status", str(rollout["id"]), *key)
    assert code == 0
    assert "completed" in out
    code, out, _ = await tagway("cloud", "config", "history", "--gateway", str(gw[0]), *key)
    assert code == 0
    lines = out.splitlines()
    assert "applied" in lines[1]
    assert "assigned" in lines[2]

    good.write_text(good.read_text().replace("probation: 5", "probation: 8"))
    code, _, err = await tagway("cloud", "config", "push", str(good), "--label", "site=x", *key)
    assert code == 0, err
    code, out, _ = await tagway("cloud", "config", "diff", str(version["version"]),
                                str(version["version"] + 1), *key)  # fmt: skip
    assert "-fleet: {managed_by: cloud, probation: 5}" in out
    assert "+fleet: {managed_by: cloud, probation: 8}" in out
    code, _, err = await tagway("cloud", "config", "push", str(good), *key)
    assert code == 1
    assert "exactly one target" in err
