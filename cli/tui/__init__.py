"""The plant engineer's terminal UI (Textual) over the agent's local API.

`tagway tui` finds the agent the way the other commands do (`--api URL`, else the discovery file
in the config's state directory) and keeps retrying while the agent is not running.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cli.tui.client import Locator

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The agent's config file (default $TAGWAY_CONFIG or /etc/tagway/config.yaml).",
    ),
]
ApiOpt = Annotated[
    str | None, typer.Option("--api", help="The local API URL, e.g. http://127.0.0.1:8470.")
]


def tui(config: ConfigOpt = None, api: ApiOpt = None) -> None:
    """Open the terminal UI: overview, tags, alarms and devices of the agent, live.

    Keys: 1-4 switch tabs, ? help, q quit. Works at 80x24 over SSH; if the agent is not running
    it says so and keeps retrying. Example: tagway tui --config /etc/tagway/config.yaml
    """
    # Imported here: `tagway --help` must not pay for Textual.
    from cli.tui.app import TagwayApp  # noqa: PLC0415
    from cli.tui.client import AgentClient  # noqa: PLC0415

    TagwayApp(AgentClient(locator=locator_for(config, api))).run()


def locator_for(config: Path | None, api: str | None) -> Locator:
    """`--api` as given; else the agent's discovery file, or, for a user who may not enter the
    agent's state directory (a packaged agent's is 0700), the fixed port its config names."""
    import os  # noqa: PLC0415

    from cli.tui.client import DiscoveryFile, FixedUrl  # noqa: PLC0415

    if api:
        named = os.environ.get("TAGWAY_API_TOKEN_FILE")
        return FixedUrl(api, token_file=Path(named) if named else None)
    from cli.local import DEFAULT_CONFIG, fixed_url  # noqa: PLC0415
    from edge.config import load_config  # noqa: PLC0415

    cfg = load_config(config or DEFAULT_CONFIG)
    state = cfg.gateway.state_dir
    if state.is_dir() and not os.access(state, os.R_OK | os.X_OK) and (url := fixed_url(cfg)):
        return FixedUrl(url)
    return DiscoveryFile(state / "local_api.json")
