"""Edge fixtures: a running simulated plant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from firmware_sim.plant import Plant


@pytest.fixture
async def plant() -> AsyncIterator[Plant]:
    """Two pumps and a tank over Modbus, clock running fast."""
    async with Plant(devices=3, seed=5, tick_s=0.05, opcua=False, control_port=None) as plant:
        yield plant
