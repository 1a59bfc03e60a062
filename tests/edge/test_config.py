"""The config file: what an installer sees when it is right, and when it is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edge.config import AgentConfig, ConfigError, load_config, parse_config, parse_size

GOOD = """\
gateway:
  name: plant-a-gw1
  state_dir: /tmp/tagway-test
outbox:
  quota: 2GiB
  flush_interval: 0.5
report:
  deadband: 0.1
  heartbeat: 30
devices:
  - protocol: modbus
    name: pump1
    host: 10.0.0.5
    simulated: true
    poll_groups: [{name: fast, interval: 0.5}]
    tags:
      - {name: flow, table: input_register, address: 0, type: float32, unit: m3/h,
         poll_group: fast, deadband: 0.5}
      - {name: running, table: coil, address: 0, type: bool, poll_group: fast}
  - protocol: opcua
    name: boiler1
    endpoint: opc.tcp://10.0.0.6:4840
    tags:
      - {name: temperature, node_id: "nsu=urn:tagway:firmware-sim;s=boiler1.temperature"}
  - protocol: mqtt
    name: site-broker
    url: mqtt://127.0.0.1:1883
    subscriptions:
      - {topic: "plant/{device}/telemetry"}
derived:
  - {device: pump1, tag: flow_lps, expression: flow / 3.6, unit: l/s}
alarms:
  - {name: pump1_flow_low, device: pump1, tag: flow, kind: low, limit: 5, hysteresis: 1,
     on_delay: 10, severity: high}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_good_config_loads_into_typed_frozen_objects(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert isinstance(config, AgentConfig)
    assert config.outbox.quota == 2 * 1024**3
    assert [d.protocol for d in config.devices] == ["modbus", "opcua", "mqtt"]
    pump = config.devices[0]
    assert pump.tags[0].deadband == 0.5  # type: ignore[union-attr]
    assert config.simulated is True
    assert config.outbox_path == Path("/tmp/tagway-test/outbox.db")
    with pytest.raises(ValueError, match="frozen"):
        config.gateway.name = "other"  # type: ignore[misc]


def issues(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return [str(issue) for issue in caught.value.issues]


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    found = issues(tmp_path, GOOD.replace("    host: 10.0.0.5\n", "    hots: 10.0.0.5\n"))
    path = tmp_path / "config.yaml"
    assert f"{path}:13: devices[0].hots: unknown key" in "\n".join(found)


def test_wrong_type_names_the_value_and_what_was_expected(tmp_path: Path) -> None:
    found = issues(tmp_path, GOOD.replace("type: float32, unit", "type: float33, unit"))
    text = "\n".join(found)
    assert ":17: devices[0].tags[0].type:" in text
    assert "'float32'" in text
    assert "float33" in text


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    bad = GOOD.replace("flush_interval: 0.5", "flush_interval: -1").replace(
        "limit: 5,", "limit: five,"
    )
    found = issues(tmp_path, bad)
    assert any("outbox.flush_interval" in f for f in found)
    assert any("alarms[0].limit" in f for f in found)


def test_unsafe_expression_is_refused_at_load(tmp_path: Path) -> None:
    found = issues(tmp_path, GOOD.replace("expression: flow / 3.6", "expression: flow.__class__"))
    assert any("derived[0].expression" in f and "Attribute is not allowed" in f for f in found)


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    found = issues(tmp_path, "gateway:\n  name: [unclosed\n")
    assert found[0].startswith(f"{tmp_path / 'config.yaml'}:")
    assert "not valid YAML" in found[0]


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_config(tmp_path / "nope.yaml")


def test_duplicate_device_names_are_refused_at_the_repeat(tmp_path: Path) -> None:
    found = issues(tmp_path, GOOD.replace("name: boiler1", "name: pump1"))
    path = tmp_path / "config.yaml"
    assert found == [
        f"{path}:21: devices[1].name: device name 'pump1' is already used by devices[0]"
    ]


BROKEN = """\
gateway:
  name: plant-a-gw1
outbox:
  flush_interval: -1
devices:
  - protocol: modbus
    name: pump1
    host: 10.0.0.5
    tags:
      - {name: flow, table: input_register, address: 0, type: float32}
  - protocol: modbus
    name: pump1
    host: 10.0.0.6
    tags:
      - {name: flow, table: input_register, address: 0, type: float32}
models:
  - name: pump_anomaly
    path: models/gone.onnx
    devices: [pump1, pump9]
    inputs: [flow]
alarms:
  - {name: hot, device: pump1, tag: flow, kind: high}
  - {name: hot, device: pump1, tag: flow, kind: low, limit: 1}
  - {name: lost, device: tank7, tag: level, kind: high, limit: 1}
  - {name: typo, device: pump1, tag: flwo, kind: high, limit: 1}
"""


def test_every_problem_is_found_in_one_pass_each_at_its_own_line(tmp_path: Path) -> None:
    """Before: the missing model file, the alarms on unknown devices and tags and the high
    alarm without a limit all validated; the repeated names were reported one at a time at
    line 1, and only once the field errors were fixed."""
    found = issues(tmp_path, BROKEN)
    at = f"{tmp_path / 'config.yaml'}:"
    model = tmp_path / "models" / "gone.onnx"
    assert found == [
        f"{at}4: outbox.flush_interval: must be greater than 0 (got -1)",
        f"{at}12: devices[1].name: device name 'pump1' is already used by devices[0]",
        f"{at}18: models[0].path: model file '{model}' does not exist",
        f"{at}19: models[0].devices[1]: no device named 'pump9' in devices (defined: pump1)",
        f"{at}22: alarms[0]: alarm 'hot': kind 'high' needs 'limit'",
        f"{at}23: alarms[1].name: alarm name 'hot' is already used by alarms[0]",
        f"{at}24: alarms[2].device: no device named 'tank7' in devices (defined: pump1)",
        f"{at}25: alarms[3].tag: device 'pump1' has no tag 'flwo' (its tags: flow, score)",
    ]


def test_alarms_may_watch_derived_tags_model_outputs_and_mqtt_devices(tmp_path: Path) -> None:
    extra = """\
  - {name: lps_high, device: pump1, tag: flow_lps, kind: high, limit: 9}
  - {name: any_mqtt, device: tank1, tag: level, kind: stale, stale: 5}
"""
    load_config(write(tmp_path, GOOD + extra))  # tank1 may come from plant/{device}/telemetry


def test_messages_are_in_the_products_words(tmp_path: Path) -> None:
    """Before: "Tuple should have at least 1 item after validation", "Input tag 'profinet'
    found using 'protocol' does not match any of the expected tags", "Value error, ..."."""
    bad = """\
gateway: {name: gw}
outbox: {quota: lots}
devices:
  - {protocol: modbus, name: pump1, host: 10.0.0.5, tags: []}
  - {protocol: profinet, name: press1}
"""
    at = f"{tmp_path / 'config.yaml'}:"
    assert issues(tmp_path, bad) == [
        (
            f"{at}2: outbox.quota: 'lots' is not a size; write bytes or e.g. '512MiB', '2GB'"
            " (got 'lots')"
        ),
        f"{at}4: devices[0].tags: needs at least 1 entry; the list is empty",
        (
            f"{at}5: devices[1].protocol: 'profinet' is not one tagway knows; expected one of"
            " 'modbus', 'opcua', 'mqtt'"
        ),
    ]


def test_a_yaml_mistake_is_reported_at_its_own_line(tmp_path: Path) -> None:
    lines = GOOD.splitlines(keepends=True)
    assert lines[12] == "    host: 10.0.0.5\n"
    lines[12] = "    host 10.0.0.5\n"  # line 13: the ':' is missing
    found = issues(tmp_path, "".join(lines))
    assert found == [
        f"{tmp_path / 'config.yaml'}:13: not valid YAML: expected 'key: value' (is a ':' missing?)"
    ]
    unclosed = GOOD.replace("[{name: fast, interval: 0.5}]", "[{name: fast")
    found = issues(tmp_path, unclosed)
    assert found[0].startswith(f"{tmp_path / 'config.yaml'}:15: not valid YAML:")


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 * 2**20), ("2 GB", 2 * 10**9), ("1000", 1000), (4096, 4096)],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_is_explained(tmp_path: Path) -> None:
    found = issues(tmp_path, GOOD.replace("quota: 2GiB", "quota: lots"))
    assert any("outbox.quota" in f and "is not a size" in f for f in found)


def test_the_agent_and_the_outbox_library_agree_on_every_default(tmp_path: Path) -> None:
    """The agent passes every outbox setting from its config; the library's own defaults (used
    by tools and tests that open an outbox directly) must not tell a different story."""
    from edge.agent import outbox_settings  # noqa: PLC0415
    from store_forward import OutboxSettings  # noqa: PLC0415

    config = parse_config(f"gateway: {{name: gw, state_dir: {tmp_path}}}")
    # Except who reads: the agent names its consumers (the uplink alone here); the library
    # keeps a file's own when none are named, so a side tool never retires one.
    assert outbox_settings(config) == OutboxSettings(consumers=("uplink",))
    assert OutboxSettings().consumers is None


def test_a_json_config_loads_as_its_yaml_twin_and_its_mistakes_have_lines(tmp_path: Path) -> None:
    """JSON is YAML; it is read with `json` (issue 23: PyYAML's node tree for 100,000 tags left
    the agent hundreds of MB larger), with the same result and the same located errors."""
    data = yaml.safe_load(GOOD)
    as_json = json.dumps(data, indent=1)
    assert load_config(write(tmp_path, as_json)) == load_config(write(tmp_path, GOOD))
    data["devices"][0]["hots"] = data["devices"][0].pop("host")
    found = issues(tmp_path, json.dumps(data, indent=1))
    line = next(n for n, text in enumerate(json.dumps(data, indent=1).splitlines(), 1)
                if '"hots"' in text)  # fmt: skip
    assert f"{tmp_path / 'config.yaml'}:{line}: devices[0].hots: unknown key" in "\n".join(found)
