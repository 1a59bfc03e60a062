"""A gateway pays in memory only for what its config uses: a Modbus-only agent never loads the
OPC UA stack, the MQTT client, onnxruntime or numpy (together about 70 MB of resident memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from edge.agent import Agent
from edge.config import load_config
config = load_config(__import__("pathlib").Path(sys.argv[1]))
Agent(config)
heavy = ("asyncua", "aiomqtt", "amqtt", "onnxruntime", "numpy")
print(json.dumps([name for name in heavy if name in sys.modules]))
"""


def loaded_after_config(config: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_modbus_gateway_does_not_load_the_other_stacks(tmp_path: Path) -> None:
    text = (ROOT / "edge" / "examples" / "modbus.yaml").read_text()
    config = tmp_path / "modbus.yaml"
    config.write_text(text.replace("/var/lib/tagway", str(tmp_path / "state")))
    assert loaded_after_config(config) == []


def test_validating_an_opc_ua_config_does_not_load_the_opc_ua_stack(tmp_path: Path) -> None:
    text = (ROOT / "edge" / "examples" / "opcua.yaml").read_text()
    config = tmp_path / "opcua.yaml"
    config.write_text(text.replace("/var/lib/tagway", str(tmp_path / "state")))
    assert loaded_after_config(config) == []  # asyncua is imported when the driver starts
