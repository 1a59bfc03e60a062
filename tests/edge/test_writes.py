"""The write door (`edge.writes`): limits, rate, audit and the local API's token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config import ConfigError, EdgeModbusTag
from edge.writes import check_value
from firmware_sim.plant import Plant
from tests.edge.harness import agent_config, modbus_devices, running_agent


def tag(**fields: Any) -> EdgeModbusTag:
    base = {"name": "sp", "table": "holding_register", "address": 0, "type": "int16"}
    return EdgeModbusTag.model_validate(base | fields)


def test_a_tag_without_limits_or_not_writable_takes_no_write() -> None:
    assert "not writable" in (check_value("d", tag(min=0, max=10), 5) or "")
    reason = check_value("d", tag(writable=True), 5)
    assert reason is not None
    assert "has no limits" in reason


def test_numbers_must_be_inside_min_and_max() -> None:
    limited = tag(writable=True, min=-5, max=10)
    assert check_value("d", limited, -5) is None
    assert check_value("d", limited, 10.0) is None
    assert check_value("d", limited, 10.5) == "10.5 is outside the limits of d.sp (-5 to 10)"
    assert "takes a number" in (check_value("d", limited, True) or "")
    assert "takes a number" in (check_value("d", limited, "7") or "")
    assert "outside" in (check_value("d", limited, float("nan")) or "")


def test_allowed_values_do_not_confuse_true_with_one() -> None:
    flag = tag(writable=True, allowed=[True, False])
    assert check_value("d", flag, True) is None
    assert "not an allowed value" in (check_value("d", flag, 1) or "")
    modes = tag(writable=True, allowed=[0, 1, 2])
    assert check_value("d", modes, 2) is None
    assert "not an allowed value" in (check_value("d", modes, True) or "")


def test_min_without_max_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="'min' and 'max' go together"):
        tag(writable=True, min=0)
    with pytest.raises(ValueError, match="above 'max'"):
        tag(writable=True, min=5, max=1)
    assert ConfigError  # the loader wraps the same message with the file and field path


@pytest.mark.integration
async def test_rate_limit_refusals_and_the_token_on_the_local_api(tmp_path: Path) -> None:
    async with Plant(devices=1, seed=3, tick_s=0.1, opcua=False, control_port=None) as plant:
        devices = modbus_devices(plant)
        for t in devices[0]["tags"]:
            if t["name"] == "speed_setpoint":
                t["max_rate"] = 2
        config = agent_config(tmp_path, devices)
        async with running_agent(config) as running:

            async def polled() -> bool:
                return bool(await running.get("/v1/tags?device=pump1&tag=speed_setpoint"))

            await running.wait_for(polled)
            body = {"device": "pump1", "tag": "speed_setpoint", "value": 20}
            for value in (20, 30):
                r = await running.api.post("/v1/write", json=body | {"value": value})
                assert r.status_code == 200, r.text
                assert r.json()["read_back"] == pytest.approx(value)
            r = await running.api.post("/v1/write", json=body | {"value": 40})
            assert r.status_code == 409
            assert "max_rate is 2 per minute" in r.json()["detail"]
            assert plant.model.reported("pump1")["speed_setpoint"] == pytest.approx(30)

            # Without the token: refused before anything happens; reading stays open.
            async with httpx.AsyncClient(base_url=str(running.api.base_url)) as anonymous:
                r = await anonymous.post("/v1/write", json=body)
                assert r.status_code == 401
                assert "local_api.token" in r.json()["detail"]
                r = await anonymous.post("/v1/alarms/any/ack")
                assert r.status_code == 401
                r = await anonymous.get("/v1/writes")
                assert r.status_code == 200
            audit = r.json()
            assert [(w["value"], w["outcome"]) for w in audit] == [
                (40, "refused"), (30, "written"), (20, "written")]  # fmt: skip
            assert audit[2]["old"] is not None  # the last value read before the write
            assert audit[1]["who"] == "local test"
            assert (tmp_path / "local_api.token").stat().st_mode & 0o777 == 0o600
