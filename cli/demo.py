"""`tagway demo`: the whole product on embedded defaults, in one process.

1. the cloud service on SQLite in the demo directory, on a free port;
2. a tenant, an admin API key and a claim token, with which the gateway is provisioned exactly as
   an installer would (`tagway provision`: its key made locally, a certificate from the cloud);
3. the simulated plant (pumps over Modbus, the boiler over OPC UA, tanks over MQTT through the
   gateway's embedded broker), with bearing wear starting on pump1 after a while;
4. the agent, configured from what the plant serves, with the shipped anomaly model and alarms;
5. a short guide: the cloud URL and key, a curl that returns live telemetry, the TUI command.

Everything runs until Ctrl-C (or `--duration`) and stops cleanly: the agent flushes its outbox.
Every run starts from a fresh demo directory (the previous run's cloud database, gateway identity
and outbox are removed first), so a second `make demo` starts just like the first; a lock file
keeps two demos from sharing one directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import typer
import uvicorn
import yaml
from pydantic import SecretStr

from cli.errors import fail, refusal
from cli.simconfig import agent_devices
from edge.local_api import QuietServer

if TYPE_CHECKING:
    from cli.tui.app import TagwayApp
    from edge.agent import Agent

log = logging.getLogger("tagway.demo")


@dataclass
class DemoOptions:
    """What the demo was asked to do."""

    directory: Path
    duration: float | None
    wear_after: float
    wear_minutes: float
    devices: int
    cloud_port: int
    tui: bool


def free_port() -> int:
    """A port that was free a moment ago (for the embedded broker, whose port the config names)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_cloud(directory: Path, port: int, admin_key: str) -> AsyncIterator[str]:
    """The cloud service on SQLite under uvicorn; yields its URL."""
    from cloud.api.app import create_app  # noqa: PLC0415 - the composition root wires it
    from cloud.settings import CloudSettings  # noqa: PLC0415

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = CloudSettings(
        database_url=f"sqlite:///{directory / 'cloud.db'}",
        platform_admin_key=SecretStr(admin_key),
        public_url=url,  # the audience of the gateway's tokens
    )
    server = QuietServer(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="demo-cloud")
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.contextmanager
def fresh_directory(directory: Path) -> Iterator[None]:
    """Hold the demo directory's lock and clear what a previous run left (its tenant, gateway
    identity and outbox would otherwise clash with this run's)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "demo.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            fail(f"another demo is running in {directory} (pid {lock.read().strip() or '?'}); "
                 "stop it, or give this one its own directory with --dir")  # fmt: skip
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        for stale in ("gateway", "demo.json", "cloud.db", "cloud.db-wal", "cloud.db-shm",
                      "cloud.db.master-key"):  # fmt: skip
            path = directory / stale
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        yield


async def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        fail(f"the demo cloud refused a setup step: {refusal(response)}")
    return dict(response.json())


async def enrol(cloud: str, platform_key: str) -> dict[str, str]:
    """Create the demo tenant, its admin API key and a single-use claim token."""
    platform = {"Authorization": f"Bearer {platform_key}"}
    async with httpx.AsyncClient(base_url=cloud, timeout=10) as client:
        r = await client.post("/v1/tenants", json={"name": "demo"}, headers=platform)
        tenant = (await _checked(r))["id"]
        body = {"name": "demo-admin", "role": "admin"}
        r = await client.post(f"/v1/tenants/{tenant}/api-keys", json=body, headers=platform)
        admin_key = (await _checked(r))["token"]
        admin = {"Authorization": f"Bearer {admin_key}"}
        claim = {"expires_in_s": 3600, "max_uses": 1, "site": "demo plant"}
        r = await client.post("/v1/claim-tokens", json=claim, headers=admin)
        claim_token = (await _checked(r))["token"]
    return {"tenant": str(tenant), "api_key": admin_key, "claim_token": claim_token}


async def provision(cloud: str, claim_token: str, config_path: Path) -> str:
    """Enrol the gateway exactly as an installer would, with `tagway provision`'s code (on a
    thread, since it makes blocking HTTP calls to the cloud that this event loop serves);
    the line saying who it is now."""
    from cli.provision_cmds import enroll  # noqa: PLC0415

    lines = await asyncio.to_thread(
        enroll, cloud=cloud, claim_token=claim_token, name=None, config=config_path,
        force=True, timeout=30.0,
    )  # fmt: skip
    return lines[0]


def agent_config(
    options: DemoOptions, served: list[dict[str, Any]], *, broker_port: int,
    gateway_password: str, sim_password: str,
) -> dict[str, Any]:  # fmt: skip
    """The demo agent's configuration, as the YAML file it is written to."""
    from edge.models import PUMP_FEATURES, pump_anomaly_path, suggested_threshold  # noqa: PLC0415
    from protocols.mqtt.broker import hash_password  # noqa: PLC0415

    devices = agent_devices(
        served, poll_interval=1.0,
        mqtt_url=f"mqtt://gateway:{gateway_password}@127.0.0.1:{broker_port}",
    )  # fmt: skip
    pumps = [d["name"] for d in devices if d.get("device_type") == "pump"]
    model_path = pump_anomaly_path()
    threshold = suggested_threshold(model_path) or 1.0
    state_dir = options.directory / "gateway"
    return {
        "gateway": {"name": "demo-gateway", "state_dir": str(state_dir)},
        "outbox": {"quota": "256MiB"},
        "report": {"deadband_percent": 0.5, "heartbeat": 30},
        "local_api": {"port": 0},
        "mqtt_broker": {"host": "127.0.0.1", "port": broker_port, "users": [
            {"username": "sim", "password_hash": hash_password(sim_password),
             "publish": ["plant/#"]},
            {"username": "gateway", "password_hash": hash_password(gateway_password),
             "publish": [], "subscribe": ["plant/#"]},
        ]},
        "devices": devices,
        "models": [{"name": "pump_anomaly", "path": str(model_path), "devices": pumps,
                    "inputs": list(PUMP_FEATURES), "outputs": ["anomaly_score"],
                    "alarm": {"threshold": threshold, "severity": "high", "on_delay": 10,
                              "message": "bearing wear suspected: vibration and heat do not "
                                         "match flow and load"}}],
        "alarms": [
            {"name": f"{p}.vibration_high", "device": p, "tag": "vibration", "kind": "high",
             "limit": 7.1, "hysteresis": 0.5, "on_delay": 5, "severity": "critical",
             "message": f"{p}: vibration above 7.1 mm/s (ISO 10816 zone D)"} for p in pumps
        ] + [
            {"name": f"{d['name']}.stale", "device": d["name"], "tag": _first_tag(d),
             "kind": "stale", "stale": 60, "severity": "medium"}
            for d in devices if d["protocol"] != "mqtt"
        ],
    }  # fmt: skip


def _first_tag(device: dict[str, Any]) -> str:
    return str(device["tags"][0]["name"])


def guide(cloud: str, enrolment: dict[str, str], config_path: Path, options: DemoOptions) -> str:
    """What the person who ran `make demo` reads."""
    key = enrolment["api_key"]
    return f"""
tagway demo is running (everything below is SIMULATED data).

  cloud        {cloud}        (OpenAPI: {cloud}/docs)
  API key      {key}
  agent config {config_path}
  logs         {options.directory / "demo.log"}

Live telemetry from the cloud's REST API:
  curl -s -H "Authorization: Bearer {key}" {cloud}/v1/devices
  curl -s -H "Authorization: Bearer {key}" {cloud}/v1/devices/1/latest

The plant engineer's view, in a second terminal:
  .venv/bin/tagway tui --config {config_path}
  .venv/bin/tagway status --config {config_path}

Bearing wear starts on pump1 after {options.wear_after:g} s; the anomaly alarm follows within
minutes. Ctrl-C stops everything cleanly.
"""


async def run_demo(options: DemoOptions) -> None:
    """Run the demo until Ctrl-C or `options.duration`."""
    from edge.agent import Agent  # noqa: PLC0415
    from edge.config import load_config  # noqa: PLC0415
    from firmware_sim.faults import BearingWear  # noqa: PLC0415
    from firmware_sim.inventory import served_devices  # noqa: PLC0415
    from firmware_sim.plant import Plant  # noqa: PLC0415

    options.directory.mkdir(parents=True, exist_ok=True)
    state_dir = options.directory / "gateway"
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    platform_key = secrets.token_urlsafe(24)
    broker_port = free_port()
    sim_password, gateway_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    async with contextlib.AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(
            serve_cloud(options.directory, options.cloud_port, platform_key)
        )
        enrolment = await enrol(cloud, platform_key)
        plant = await stack.enter_async_context(Plant(
            devices=options.devices, seed=7, tick_s=0.5, control_port=None,
            mqtt_url=f"mqtt://sim:{sim_password}@127.0.0.1:{broker_port}",
        ))  # fmt: skip
        config = agent_config(
            options, served_devices(plant), broker_port=broker_port,
            gateway_password=gateway_password, sim_password=sim_password,
        )  # fmt: skip
        config_path = state_dir / "config.yaml"
        config_path.write_text("# Written by `tagway demo`.\n" + yaml.safe_dump(config))
        typer.echo(await provision(cloud, enrolment["claim_token"], config_path))
        cfg = load_config(config_path)
        agent = Agent(cfg, config_path=config_path)
        agent_task = asyncio.create_task(agent.run(stop), name="demo-agent")
        await _started(agent, agent_task)
        (options.directory / "demo.json").write_text(json.dumps({
            "cloud": cloud, "api_key": enrolment["api_key"], "config": str(config_path),
        }))  # fmt: skip
        text = guide(cloud, enrolment, config_path, options)
        typer.echo(text)
        wear = asyncio.create_task(_wear_later(plant, options, BearingWear), name="demo-wear")
        if options.tui:
            await _run_tui_until(stop, state_dir / "local_api.json", options.duration, text)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), options.duration)
        typer.echo("stopping: agent first (it flushes its outbox), then the plant and the cloud")
        stop.set()
        wear.cancel()
        await asyncio.gather(wear, return_exceptions=True)
        await asyncio.wait_for(agent_task, 20)


async def _run_tui_until(
    stop: asyncio.Event, discovery: Path, duration: float | None, notice: str
) -> None:
    """The TUI in this terminal, until the person quits it, Ctrl-C, or the demo's duration. It
    opens on the guide (the terminal's own text is hidden while the TUI holds the screen)."""
    app = demo_tui(discovery, notice)
    shown = asyncio.create_task(app.run_async(), name="demo-tui")
    stopped = asyncio.create_task(stop.wait(), name="demo-stop")
    await asyncio.wait({shown, stopped}, timeout=duration, return_when="FIRST_COMPLETED")
    if not shown.done():
        app.exit()
    await shown
    stopped.cancel()
    await asyncio.gather(stopped, return_exceptions=True)


def demo_tui(discovery: Path, notice: str) -> TagwayApp:
    """The TUI as the demo opens it: on the guide, over the overview of the demo's agent."""
    from cli.tui.app import TagwayApp  # noqa: PLC0415 - Textual only when asked for
    from cli.tui.client import AgentClient, DiscoveryFile  # noqa: PLC0415

    return TagwayApp(AgentClient(locator=DiscoveryFile(discovery)), notice=notice)


async def _started(agent: Agent, task: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(agent.ready.wait())
    done, _ = await asyncio.wait({ready, task}, timeout=30, return_when="FIRST_COMPLETED")
    if task in done:
        ready.cancel()
        task.result()
    if ready not in done:
        raise RuntimeError("the agent did not start within 30 s; see demo.log")


async def _wear_later(plant: Any, options: DemoOptions, fault: Any) -> None:
    await asyncio.sleep(options.wear_after)
    plant.add_fault(fault(device="pump1", minutes_to_failure=options.wear_minutes))
    log.info("bearing wear started on pump1 (%g minutes to failure)", options.wear_minutes)
    typer.echo(f"bearing wear started on pump1 ({options.wear_minutes:g} minutes to failure)")
