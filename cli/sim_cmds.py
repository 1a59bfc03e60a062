"""`tagway sim` and `tagway demo`: the simulated plant, alone or with the whole product."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
import yaml

from cli.errors import fail
from cli.simconfig import DEFAULT_PROTOCOLS, agent_devices, parse_protocols

sim_app = typer.Typer(help="Run the simulated plant (firmware_sim).", no_args_is_help=True)


@sim_app.command("plant")
def plant(
    devices: Annotated[
        int, typer.Option(help="Devices, in groups of pump, pump, tank, boiler.")
    ] = 4,
    tags_per_device: Annotated[
        int | None, typer.Option(help="Pad devices to this many tags.")
    ] = None,
    scenario: Annotated[
        str, typer.Option(help="Fault scenario (normal, bearing_wear, ...).")
    ] = "normal",
    seed: Annotated[int, typer.Option(help="Seed of the plant's noise.")] = 1,
    modbus_port: Annotated[int, typer.Option(help="First Modbus port (0: any).")] = 0,
    opcua_port: Annotated[int, typer.Option(help="OPC UA port (0: any).")] = 0,
    mqtt_url: Annotated[str | None, typer.Option(help="Broker URL for the MQTT devices.")] = None,
    config_out: Annotated[
        Path | None, typer.Option(help="Write agent device sections here.")
    ] = None,
    protocols: Annotated[str, typer.Option(help="Protocol per device type.")] = "",
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Serve a simulated plant on real sockets and print where; optionally write the agent's
    device configuration for it.

    Example: tagway sim plant --devices 8 --scenario bearing_wear --config-out devices.yaml
    """
    from firmware_sim.cli import describe, serving_line  # noqa: PLC0415
    from firmware_sim.inventory import served_devices  # noqa: PLC0415
    from firmware_sim.plant import Plant, PlantConfig  # noqa: PLC0415

    try:
        chosen = parse_protocols(protocols) if protocols else DEFAULT_PROTOCOLS
    except ValueError as exc:
        fail(f"--protocols: {exc}")
    config = PlantConfig(
        devices=devices, tags_per_device=tags_per_device, scenario=scenario, seed=seed,
        modbus_port=modbus_port, opcua_port=opcua_port, mqtt_url=mqtt_url,
    )  # fmt: skip

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with Plant(config) as running:
            typer.echo("\n".join(describe(running)))
            typer.echo(serving_line(running))
            if config_out is not None:
                sections = agent_devices(served_devices(running), protocols=chosen,
                                         mqtt_url=mqtt_url)  # fmt: skip
                config_out.write_text(yaml.safe_dump({"devices": sections}, sort_keys=False))
                typer.echo(f"wrote the agent's device sections to {config_out}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)

    asyncio.run(serve())


def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo keeps its files.")
    ] = Path(".demo"),
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    tui: Annotated[
        bool, typer.Option("--tui/--no-tui", help="Open the TUI in this terminal.")
    ] = False,
    wear_after: Annotated[float, typer.Option(help="Seconds before bearing wear starts.")] = 60.0,
    wear_minutes: Annotated[float, typer.Option(help="Minutes from wear start to failure.")] = 10.0,
    devices: Annotated[int, typer.Option(help="Simulated devices.")] = 4,
    cloud_port: Annotated[int, typer.Option(help="The cloud's port (0: any free one).")] = 0,
) -> None:
    """Run the whole product on embedded defaults: cloud, simulated plant, gateway agent.

    Every run starts afresh in --dir. It prints the cloud URL, an API key and a curl for live
    data, and runs until Ctrl-C; --tui opens the terminal UI here as well.
    Example: tagway demo --duration 120
    """
    from cli.demo import DemoOptions, fresh_directory, run_demo  # noqa: PLC0415

    with fresh_directory(directory):
        handler = logging.FileHandler(directory / "demo.log", mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        logging.getLogger().handlers[:] = [handler]
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("asyncua").setLevel(logging.WARNING)  # its INFO: a page per start
        options = DemoOptions(directory.resolve(), duration, wear_after, wear_minutes, devices,
                              cloud_port, tui)  # fmt: skip
        asyncio.run(run_demo(options))
