"""Every shipped example config validates, so the examples never rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "edge" / "examples").glob("*.yaml"))


def test_there_is_an_example_per_protocol_and_one_for_the_simulated_plant() -> None:
    assert {p.stem for p in EXAMPLES} >= {"modbus", "opcua", "mqtt", "simulated-plant"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates(path: Path) -> None:
    config = load_config(path)
    assert config.devices
    protocols = {d.protocol for d in config.devices}
    if path.stem in {"modbus", "opcua", "mqtt"}:
        assert protocols == {path.stem}
    else:
        assert protocols == {"modbus", "opcua", "mqtt"}
        assert config.simulated
