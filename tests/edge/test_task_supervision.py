"""An auxiliary task that fails (a bug, an unforeseen library error) is logged, counted and
restarted: the drivers keep polling and readings keep reaching the outbox."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cli.agent_cmds import StatusReport, _print_status
from edge.api_contract import DRIVERS, Gateway, Health, Outbox, Uplink
from edge.clock import ClockSync
from edge.supervisor import TaskSupervisor
from firmware_sim.plant import Plant
from protocols.backoff import BackoffPolicy
from tests.edge.harness import agent_config, modbus_devices, running_agent

pytestmark = pytest.mark.integration


async def test_a_failing_auxiliary_task_is_restarted_and_the_agent_keeps_reading(
    tmp_path: Path,
    plant: Plant,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    original = ClockSync.run
    calls = 0

    async def fails_once(self: ClockSync) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected clock task bug")
        await original(self)

    monkeypatch.setattr(ClockSync, "run", fails_once)
    caplog.set_level(logging.ERROR, logger="edge.supervisor")
    config = agent_config(tmp_path, modbus_devices(plant))
    async with running_agent(config) as running:
        tasks = running.agent.runtime.supervisor.tasks

        async def restarted() -> bool:
            return tasks.restarts.get("clock") == 1 and calls == 2

        await running.wait_for(restarted, within=5)
        failures = [r for r in caplog.records if r.getMessage() == "task clock failed; restarting"]
        assert len(failures) == 1
        assert failures[0].levelno == logging.ERROR
        assert failures[0].exc_info is not None
        assert "injected clock task bug" in tasks.last_failure["clock"]

        # The drivers still poll and readings are still committed after the failure.
        before = (await running.get("/v1/outbox"))["lanes"]["telemetry"]["readings"]

        async def more_committed() -> bool:
            outbox = await running.get("/v1/outbox")
            return bool(outbox["lanes"]["telemetry"]["readings"] > before + 50)

        await running.wait_for(more_committed, within=5)
        metrics = (await running.api.get("/metrics")).text
        assert 'tagway_task_restarts_total{task="clock"} 1.0' in metrics
        assert 'tagway_task_restarts_total{task="uns"}' not in metrics  # only the tasks it runs
        shown = {t["name"]: t for t in (await running.get("/v1/gateway"))["tasks"]}
        assert shown["clock"]["restarts"] == 1
        assert "injected clock task bug" in shown["clock"]["last_failure"]
        assert shown["summary"]["restarts"] == 0
        report = StatusReport(
            health=Health.model_validate((await running.api.get("/health")).json()),
            gateway=Gateway.model_validate(await running.get("/v1/gateway")),
            drivers=DRIVERS.validate_python(await running.get("/v1/drivers")),
            uplink=Uplink.model_validate(await running.get("/v1/uplink")),
            outbox=Outbox.model_validate(await running.get("/v1/outbox")),
            alarms=(),
        )
        capsys.readouterr()
        _print_status(report)  # what `tagway status` prints
        printed = capsys.readouterr().out
        assert "! task clock failed, restarts 1 (last: RuntimeError: injected" in printed


async def test_a_stop_stops_a_supervised_task_and_is_not_counted_as_a_failure() -> None:
    started = asyncio.Event()
    starts = 0

    async def forever() -> None:
        nonlocal starts
        starts += 1
        started.set()
        if starts == 1:  # a retried stop would start it again: then it ends at once
            await asyncio.sleep(3600)

    async def returns() -> None:
        return None

    async with asyncio.TaskGroup() as group:
        tasks = TaskSupervisor(group=group, backoff=BackoffPolicy(base=0.01, cap=0.01))
        done = tasks.start("returns", returns)
        task = tasks.start("forever", forever)
        await started.wait()
        task.cancel()
    assert task.cancelled()  # the CancelledError went through tenacity, not retried
    assert starts == 1
    assert done.done()  # a task that ends normally is not restarted
    assert not done.cancelled()
    assert tasks.restarts == {"returns": 0, "forever": 0}
    assert tasks.last_failure == {}
