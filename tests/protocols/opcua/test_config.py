"""Config models: defaults, validation messages that name the field, frozen objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from protocols.driver import ConnectionState, Driver
from protocols.opcua import OpcUaDeviceConfig, OpcUaDriver, OpcUaTag

TAG = {"name": "flow", "node_id": "nsu=urn:tagway:firmware-sim;s=pump1.flow"}


def _device(**overrides: Any) -> OpcUaDeviceConfig:
    fields: dict[str, Any] = {
        "name": "pump1",
        "endpoint": "opc.tcp://127.0.0.1:4840",
        "tags": [TAG],
    }
    fields.update(overrides)
    return OpcUaDeviceConfig.model_validate(fields)


def test_defaults_are_subscribe_without_security() -> None:
    config = _device()
    tag = config.tags[0]
    assert (tag.mode, tag.queue_size, tag.deadband_type, tag.sampling_interval_ms) == (
        "subscribe",
        10,
        "none",
        None,
    )
    assert (config.security_policy, config.security_mode, config.secure) == ("None", "None", False)
    assert config.publishing_interval_ms == 1000
    assert config.queue_limit == 10_000


def test_queue_limit_grows_with_the_tag_count() -> None:
    tags = [{"name": f"t{i}", "node_id": f"ns=2;i={i}"} for i in range(5000)]
    assert _device(tags=tags).queue_limit == 20_000
    assert _device(max_queued_readings=50).queue_limit == 50


def test_models_are_frozen_and_refuse_unknown_fields() -> None:
    config = _device()
    with pytest.raises(ValidationError, match="frozen"):
        config.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="publish_interval"):
        _device(publish_interval=5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"endpoint": "http://x:4840"}, r"endpoint: 'http://x:4840' must look like 'opc.tcp://"),
        ({"tags": [{"name": "f", "node_id": "pump1.flow"}]}, r"node_id: node id 'pump1.flow'"),
        ({"tags": [TAG, TAG]}, r"tags: duplicate tag name 'flow'"),
        ({"tags": []}, r"tags"),
        (
            {"security_policy": "Basic256Sha256"},
            r"security_mode 'None' does not fit security_policy",
        ),
        ({"security_mode": "Sign"}, r"security_mode 'Sign' does not fit security_policy 'None'"),
        (
            {
                "security_policy": "Basic256Sha256",
                "security_mode": "SignAndEncrypt",
                "certificate": "c.der",
            },
            r"needs private_key, trust_dir",
        ),
        ({"username": "op"}, r"username and password go together"),
        ({"publishing_interval_ms": 0}, r"publishing_interval_ms"),
        (
            {"tags": [{**TAG, "deadband_value": 0.5}]},
            r"tag 'flow': deadband_value 0.5 needs deadband_type",
        ),
        (
            {"tags": [{**TAG, "deadband_type": "percent", "deadband_value": 150}]},
            r"deadband_value 150.0 is a percentage; expected 0..100",
        ),
        (
            {"tags": [{**TAG, "mode": "poll", "deadband_type": "absolute", "deadband_value": 1}]},
            r"deadband_type applies to subscribed tags",
        ),
        ({"tags": [{**TAG, "queue_size": 0}]}, r"queue_size"),
        ({"tags": [{**TAG, "mode": "sample"}]}, r"mode"),
    ],
)
def test_validation_names_the_bad_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _device(**overrides)


def test_complete_secure_config(tmp_path: Path) -> None:
    config = _device(
        security_policy="Basic256Sha256",
        security_mode="Sign",
        certificate=tmp_path / "c.der",
        private_key=tmp_path / "k.pem",
        trust_dir=tmp_path,
        username="operator",
        password="s3cret",  # noqa: S106 - a test literal, asserted not to leak into repr
    )
    assert config.secure
    assert "s3cret" not in repr(config)  # the password never shows up in logs


def test_tag_exposes_its_parsed_node() -> None:
    tag = OpcUaTag(name="flow", node_id=" ns=3;s=pump1.flow ")
    assert tag.node_id == "ns=3;s=pump1.flow"
    assert tag.node.namespace_index == 3


async def test_driver_satisfies_the_contract_and_closes_for_good() -> None:
    driver = OpcUaDriver(_device())
    assert isinstance(driver, Driver)
    assert (driver.name, driver.link.state, driver.counters.as_dict()["readings"]) == (
        "pump1",
        ConnectionState.IDLE,
        0,
    )
    async with driver:
        pass
    assert driver.link.state is ConnectionState.CLOSED
    with pytest.raises(RuntimeError, match="driver was closed"):
        async with driver:
            pass
