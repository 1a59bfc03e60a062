"""`python -m firmware_sim plant ...`: run the simulated plant until interrupted.

Prints what it serves and where, then one machine-readable line starting with `{"serving"`
holding every bound port, so scripts and tests can parse it. Ports default to 0 (chosen at run
time). `tagway sim` wraps this later.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from firmware_sim.errors import SimError
from firmware_sim.faults import SCENARIOS
from firmware_sim.plant import Plant, PlantConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m firmware_sim")
    commands = parser.add_subparsers(dest="command", required=True)
    plant = commands.add_parser("plant", help="serve a simulated plant over Modbus, OPC UA, MQTT")
    add = plant.add_argument
    add("--devices", type=int, default=4, help="devices, in groups of pump, pump, tank, boiler")
    add("--tags-per-device", type=int, help="pad each device with generated tags up to this many")
    add("--seed", type=int, default=1)
    add("--tick", type=float, default=0.5, help="wall seconds between model steps")
    add("--time-scale", type=float, default=1.0, help="simulated seconds per wall second")
    add("--host", default="127.0.0.1")
    add("--modbus-port", type=int, default=0, help="first device's port (others follow); 0: any")
    add("--modbus-framing", choices=["socket", "rtu"], default="socket")
    add(
        "--modbus-frames",
        action="store_true",
        help="serve registers frozen at start from prepared responses (cheap, for benchmarks; "
        "no faults, no writes)",
    )
    add("--no-modbus", action="store_true")
    add("--opcua-port", type=int, default=0)
    add("--opcua-security", choices=["none", "basic256sha256"], default="none")
    add("--opcua-cert-dir", type=Path)
    add("--opcua-trust-dir", type=Path)
    add(
        "--opcua-publish",
        type=float,
        default=0.25,
        help="most seconds between OPC UA publishes (writes, faults); every tick publishes too",
    )
    add("--no-opcua", action="store_true")
    add("--mqtt-url", help="mqtt://[user:password@]host:port; MQTT devices are off without it")
    add("--mqtt-interval", type=float, default=1.0)
    add("--mqtt-batch", type=int, default=1)
    add("--mqtt-topic-prefix", default="plant")
    add("--control-port", type=int, default=0)
    add("--scenario", default="normal", choices=sorted(SCENARIOS))
    add("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    add("--inventory", type=Path, help="write what is served where (JSON) to this file")
    return parser


def config_from_args(args: argparse.Namespace) -> PlantConfig:
    """The plant configuration the command-line flags ask for."""
    return PlantConfig(
        devices=args.devices,
        tags_per_device=args.tags_per_device,
        seed=args.seed,
        tick_s=args.tick,
        time_scale=args.time_scale,
        host=args.host,
        modbus=not args.no_modbus,
        modbus_port=args.modbus_port,
        modbus_framing=args.modbus_framing,
        modbus_frames=args.modbus_frames,
        opcua=not args.no_opcua,
        opcua_port=args.opcua_port,
        opcua_security=args.opcua_security,
        opcua_cert_dir=args.opcua_cert_dir,
        opcua_trust_dir=args.opcua_trust_dir,
        opcua_publish_s=args.opcua_publish,
        mqtt_url=args.mqtt_url,
        mqtt_interval_s=args.mqtt_interval,
        mqtt_batch=args.mqtt_batch,
        mqtt_topic_prefix=args.mqtt_topic_prefix,
        control_port=args.control_port,
        scenario=args.scenario,
    )


def describe(plant: Plant) -> list[str]:
    """Human lines saying what is served where."""
    cfg = plant.config
    tags = sum(len(m.tags) for m in plant.model.maps.values())
    headline = (
        f"firmware_sim: SIMULATED plant, {cfg.devices} devices, {tags} tags, seed {cfg.seed}, "
        f"scenario {cfg.scenario}"
    )
    lines = [headline]
    if plant.modbus is not None:
        for name, dev in plant.modbus.devices.items():
            lines.append(
                f"  modbus  {name:<10} {dev.host}:{dev.port} unit {dev.unit_id} "
                f"({dev.framing}, {len(plant.model.maps[name].tags)} tags)"
            )
    if plant.opcua is not None:
        lines.append(f"  opcua   {plant.opcua.endpoint} (security {plant.opcua.security})")
    if plant.mqtt is not None:
        broker = plant.mqtt.broker
        lines.append(
            f"  mqtt    {broker.host}:{broker.port} topics "
            f"{cfg.mqtt_topic_prefix}/<device>/telemetry every {cfg.mqtt_interval_s} s"
        )
    if plant.control is not None:
        lines.append(f"  control http://{cfg.host}:{plant.control.port}/")
    return lines


def serving_line(plant: Plant) -> str:
    """The one machine-readable line: every bound port."""
    document: dict[str, Any] = {"serving": True, "simulated": True, **plant.ports}
    if plant.opcua is not None:
        document["opcua_endpoint"] = plant.opcua.endpoint
    if plant.config.mqtt_url is not None:
        document["mqtt_url"] = plant.config.mqtt_url
    document["devices"] = list(plant.model.devices)
    return json.dumps(document)


async def run(config: PlantConfig, duration: float | None, inventory: Path | None) -> None:
    """Serve the plant until SIGINT/SIGTERM, `duration` seconds, or a failure inside it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Plant(config) as plant:
        if inventory is not None:
            document = json.dumps(plant.served_devices(), indent=2)
            await asyncio.to_thread(inventory.write_text, document)
        print("\n".join(describe(plant)), flush=True)  # noqa: T201 - the command's output
        print(serving_line(plant), flush=True)  # noqa: T201
        stopped = asyncio.create_task(stop.wait(), name="sim-cli-signal")
        failed = asyncio.create_task(plant.wait(), name="sim-cli-plant")
        try:
            await asyncio.wait({stopped, failed}, timeout=duration, return_when="FIRST_COMPLETED")
        finally:
            stopped.cancel()
            failed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopped


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
        asyncio.run(run(config, args.duration, args.inventory))
    except (SimError, ValidationError) as exc:
        print(f"firmware_sim: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return 0
