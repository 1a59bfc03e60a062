"""`--modbus-frames` (issue 23): the benchmark's cheap Modbus server answers every read exactly as
the full server does for the same plant, frozen at start, and refuses writes."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusTcpClient

from firmware_sim.plant import Plant
from firmware_sim.register_image import RegisterImage

pytestmark = pytest.mark.integration


async def read_tables(port: int, image: RegisterImage) -> dict[str, list[int] | list[bool]]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5)
    await client.connect()
    try:
        out: dict[str, list[int] | list[bool]] = {}
        for table, read in (("input_register", client.read_input_registers),
                            ("holding_register", client.read_holding_registers)):  # fmt: skip
            words: list[int] = []
            for start in range(0, image.sizes[table], 125):
                count = min(125, image.sizes[table] - start)
                response = await read(start, count=count)
                assert not response.isError(), (table, start, response)
                words += response.registers
            out[table] = words
        coils = await client.read_coils(0, count=image.sizes["coil"])
        inputs = await client.read_discrete_inputs(0, count=image.sizes["discrete_input"])
        out["coil"] = coils.bits[: image.sizes["coil"]]
        out["discrete_input"] = inputs.bits[: image.sizes["discrete_input"]]
        return out
    finally:
        client.close()


async def test_prepared_frames_answer_every_read_as_the_full_server_and_refuse_writes() -> None:
    options = {"devices": 4, "seed": 7, "tags_per_device": 300, "tick_s": None, "opcua": False,
               "control_port": None}  # fmt: skip
    async with Plant(**options) as full, Plant(modbus_frames=True, **options) as frames:
        assert full.modbus is not None
        assert frames.modbus is not None
        for name, device in full.modbus.devices.items():
            expected = await read_tables(full.ports["modbus"][name], device.image)
            served = await read_tables(frames.ports["modbus"][name], device.image)
            assert served == expected, name
            assert any(expected["input_register"]), name  # not two empty images agreeing
        port = frames.ports["modbus"]["pump1"]
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5)
        await client.connect()
        try:
            refused = await client.write_register(20, 1450)
            beyond = await client.read_input_registers(60_000, count=10)
        finally:
            client.close()
        assert refused.isError()
        assert refused.exception_code == 1  # illegal function: the frozen image takes no writes
        assert beyond.isError()
        assert beyond.exception_code == 2  # illegal data address, as a real device answers
        assert frames.request_counts()["pump1"][4] >= 2
