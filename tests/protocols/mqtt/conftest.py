"""Fixtures for the MQTT tests: an embedded broker on a free loopback port, device accounts,
a collecting sink and a helper that runs a driver in a task and stops it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from protocols.driver import ConnectionState
from protocols.mqtt.broker import EmbeddedBroker, hash_password
from protocols.mqtt.codec import DeadLetter
from protocols.mqtt.config import (
    BrokerUser,
    EmbeddedBrokerConfig,
    MqttSourceConfig,
    MqttSubscription,
)
from protocols.mqtt.driver import MqttDriver
from protocols.reading import Reading

PASSWORDS = {"pump1": "pw-pump1", "pump2": "pw-pump2", "agent": "pw-agent"}


@pytest.fixture(scope="session")
def users() -> tuple[BrokerUser, ...]:
    """pump1 and pump2 may publish under plant/<self>/#; agent may subscribe to plant/#."""
    # Cheap Argon2 parameters keep connects fast in tests; the hash carries its parameters, so
    # the broker verifies exactly as it would a production hash from `hash_password`.
    cheap = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1),))
    hashes = {name: cheap.hash(pw) for name, pw in PASSWORDS.items()}
    assert hash_password("x").startswith("$argon2id$")
    return (
        BrokerUser(username="pump1", password_hash=hashes["pump1"]),
        BrokerUser(username="pump2", password_hash=hashes["pump2"]),
        BrokerUser(
            username="agent", password_hash=hashes["agent"], publish=(), subscribe=("plant/#",)
        ),
    )


@pytest.fixture
def broker_config(users: tuple[BrokerUser, ...]) -> EmbeddedBrokerConfig:
    return EmbeddedBrokerConfig(port=0, users=users, session_expiry_s=60)


@pytest.fixture
async def broker(broker_config: EmbeddedBrokerConfig) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(broker_config) as running_broker:
        yield running_broker


def source_config(url: str, **overrides: object) -> MqttSourceConfig:
    """The agent's subscriber config for the firmware_sim topic layout."""
    values: dict[str, object] = {
        "name": "plant-mqtt",
        "url": url,
        "username": "agent",
        "password": PASSWORDS["agent"],
        "subscriptions": (MqttSubscription(topic="plant/{device}/telemetry"),),
        "reconnect_base_s": 0.1,
        "reconnect_cap_s": 0.5,
        "keepalive_s": 5,
    }
    values.update(overrides)
    return MqttSourceConfig.model_validate(values)


def telemetry(**values: float | bool | str) -> bytes:
    """A firmware_sim message stamped now."""
    return json.dumps(
        {"ts": time.time_ns() // 1_000_000, "values": values, "simulated": True}
    ).encode()


@dataclass
class Collector:
    """A sink that keeps every batch, and dead letters too."""

    batches: list[list[Reading]] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)

    async def __call__(self, batch: list[Reading]) -> None:
        self.batches.append(batch)

    async def dead(self, letters: list[DeadLetter]) -> None:
        self.letters.extend(letters)

    @property
    def readings(self) -> list[Reading]:
        return [r for batch in self.batches for r in batch]

    async def until(self, done: Callable[[], bool], within: float = 5.0) -> None:
        await eventually(done, within, lambda: f"readings={self.readings!r} {self.letters!r}")


@pytest.fixture
def collector() -> Collector:
    return Collector()


@contextlib.asynccontextmanager
async def running(driver: MqttDriver, sink: Collector) -> AsyncIterator[MqttDriver]:
    """Run `driver` in a task until the block ends, then cancel and await it."""
    async with driver:
        task = asyncio.create_task(driver.run(sink), name=f"mqtt-driver {driver.name}")
        try:
            yield driver
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def eventually(
    done: Callable[[], bool], within: float = 5.0, why: Callable[[], str] = lambda: ""
) -> None:
    """Poll `done` (state owned by other tasks, with no event to wait on) for `within` s."""
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s {why()}")
        await asyncio.sleep(0.01)


async def until_state(driver: MqttDriver, state: ConnectionState, within: float = 5.0) -> None:
    await eventually(
        lambda: driver.link.state is state,
        within,
        lambda: f"{driver.name} stayed {driver.link.state}: {driver.link.last_error}",
    )
