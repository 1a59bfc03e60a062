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
from cli.logs import quiet_libraries
from cli.simconfig import (
    DEFAULT_PROTOCOLS,
    agent_devices,
    choose_entries,
    complete_config,
    parse_protocols,
)

_CONFIG_HEADER = """\
# Written by `tagway sim plant --config-out`: every device the simulated plant serves.
# Run it as it is (`tagway run --config FILE`); `tagway provision` adds the cloud section.
"""

sim_app = typer.Typer(
    rich_markup_mode=None, help="Run the simulated plant (firmware_sim).", no_args_is_help=True
)


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
        Path | None,
        typer.Option(help="Write a complete agent config for this plant here (every device)."),
    ] = None,
    protocols: Annotated[str, typer.Option(help="Protocol per device type.")] = "",
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Serve a simulated plant on real sockets and print where; optionally write a complete
    agent config that reads every device it serves (run the agent with it as it is).

    Example: tagway sim plant --devices 8 --scenario bearing_wear --config-out config.yaml
    """
    from firmware_sim.cli import describe, serving_line  # noqa: PLC0415
    from firmware_sim.faults import SCENARIOS  # noqa: PLC0415
    from firmware_sim.inventory import served_devices  # noqa: PLC0415
    from firmware_sim.plant import Plant, PlantConfig  # noqa: PLC0415

    if scenario not in SCENARIOS:
        fail(f"--scenario: no scenario {scenario!r}; known: {', '.join(sorted(SCENARIOS))}")
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
                served = served_devices(running)
                entries, notes = choose_entries(served, chosen)
                for note in notes:
                    typer.echo(f"note: {note}")
                sections = agent_devices(served, protocols=chosen, mqtt_url=mqtt_url)
                state = config_out.resolve().parent / "state"
                whole = complete_config(sections, state_dir=state)
                config_out.write_text(_CONFIG_HEADER + yaml.safe_dump(whole, sort_keys=False))
                names = ", ".join(e["name"] for e in entries)
                typer.echo(f"wrote an agent config for {names} to {config_out}")
                typer.echo(f"run it with: tagway run --config {config_out}")
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
        quiet_libraries("info")  # asyncua's INFO alone is a page per start
        options = DemoOptions(directory.resolve(), duration, wear_after, wear_minutes, devices,
                              cloud_port, tui)  # fmt: skip
        asyncio.run(run_demo(options))
