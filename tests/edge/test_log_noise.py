"""What the agent writes to the journal at INFO: what an operator acts on (state changes,
errors, reloads, a periodic one-line summary), not a line per HTTP request (before: one httpx
``POST /v1/ingest "HTTP/1.1 200 OK"`` line per second, and transitions.core's INFO)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.logs import setup
from edge.agent import Agent
from firmware_sim.plant import Plant
from tests.edge.harness import agent_config, modbus_devices


@pytest.fixture
def journal() -> Iterator[io.StringIO]:
    """What `tagway run --log-format json` writes to stderr; the logging setup restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in ("httpx", "httpcore", "transitions")}
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


def _setup(journal: io.StringIO, level: str) -> None:
    setup("json", level)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(journal)  # stderr, caught here


def _logged(journal: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in journal.getvalue().splitlines()]


def test_per_request_and_state_machine_info_stays_out_of_the_journal(journal: io.StringIO) -> None:
    _setup(journal, "info")
    logging.getLogger("httpx").info('HTTP Request: POST http://cloud/v1/ingest "HTTP/1.1 200 OK"')
    logging.getLogger("transitions.core").info("Finished processing state connecting")
    logging.getLogger("httpx").warning("the cloud answered slowly")
    logging.getLogger("edge.agent").info("config reloaded from /etc/tagway/config.yaml")
    assert [(r["logger"], r["message"]) for r in _logged(journal)] == [
        ("httpx", "the cloud answered slowly"),
        ("edge.agent", "config reloaded from /etc/tagway/config.yaml"),
    ]


def test_at_debug_everything_is_there(journal: io.StringIO) -> None:
    _setup(journal, "debug")
    logging.getLogger("httpx").info('HTTP Request: POST http://cloud/v1/ingest "HTTP/1.1 200 OK"')
    assert [r["logger"] for r in _logged(journal)] == ["httpx"]


@pytest.mark.integration
async def test_the_agent_logs_a_one_line_summary(
    tmp_path: Path, plant: Plant, caplog: pytest.LogCaptureFixture
) -> None:
    config = agent_config(tmp_path, modbus_devices(plant))
    agent = Agent(config, summary_every=1.0)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="edge.agent")
    task = asyncio.create_task(agent.run(stop), name="agent-under-test")
    try:
        for _ in range(200):
            lines = [r.getMessage() for r in caplog.records if "summary:" in r.getMessage()]
            if any("devices 3/3 connected" in line for line in lines):
                break
            await asyncio.sleep(0.1)
        line = next(line for line in lines if "devices 3/3 connected" in line)
        assert line.startswith("summary: devices 3/3 connected, ")
        assert "readings/s accepted, no cloud (backlog " in line
        assert line.endswith("0 alarms needing attention")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
