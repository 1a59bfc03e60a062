"""Modbus TCP served to independent clients: mbpoll and pymodbus's own client."""

from __future__ import annotations

import asyncio

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType

from firmware_sim.faults import LinkDrop, ModbusException, Restart, SlowAnswers
from firmware_sim.plant import Plant
from firmware_sim.register_map import DEVICE_TYPES

from .conftest import decode_independently, mbpoll, mbpoll_values

pytestmark = pytest.mark.integration

_TABLE_FLAG = {"input_register": "3:hex", "holding_register": "4:hex"}
_NUMERIC = ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")


@pytest.mark.parametrize("kind", DEVICE_TYPES)
async def test_mbpoll_reads_every_numeric_tag_as_the_model_says(
    frozen_plant: Plant, kind: str
) -> None:
    device = f"{kind}1"
    port = frozen_plant.ports["modbus"][device]
    truth = frozen_plant.model.reported(device)
    checked = 0
    for tag in frozen_plant.model.maps[device].tags:
        if tag.type not in _NUMERIC:
            continue
        code, out = await mbpoll(
            port, "-t", _TABLE_FLAG[tag.table], "-r", str(tag.address), "-c", str(tag.registers)
        )
        assert code == 0, out
        raw = mbpoll_values(out)
        registers = [int(raw[tag.address + i], 16) for i in range(tag.registers)]
        value = decode_independently(registers, tag.type, tag.order) * tag.scale + tag.offset
        expected = float(truth[tag.name])  # type: ignore[arg-type]
        tolerance = abs(tag.scale) / 2 + (abs(expected) * 1e-6 if "float" in tag.type else 0)
        assert value == pytest.approx(expected, abs=tolerance + 1e-9), tag.name
        checked += 1
    assert checked >= 12


async def test_mbpoll_float_decoding_agrees_for_abcd_and_cdab(frozen_plant: Plant) -> None:
    port = frozen_plant.ports["modbus"]["pump1"]
    truth = frozen_plant.model.reported("pump1")
    # flow is float32 ABCD at 0: mbpoll's -B (big-endian word order); discharge_pressure is CDAB
    # at 2: mbpoll's default float word order.
    _, out = await mbpoll(port, "-t", "3:float", "-B", "-r", "0", "-c", "1")
    assert float(mbpoll_values(out)[0]) == pytest.approx(truth["flow"], rel=1e-5)
    _, out = await mbpoll(port, "-t", "3:float", "-r", "2", "-c", "1")
    assert float(mbpoll_values(out)[2]) == pytest.approx(truth["discharge_pressure"], rel=1e-5)


async def test_bits_strings_coils_and_discrete_inputs(frozen_plant: Plant) -> None:
    port = frozen_plant.ports["modbus"]["pump1"]
    _, out = await mbpoll(port, "-t", "3", "-r", "9", "-c", "1")
    status = int(mbpoll_values(out)[9])
    assert status & 0b0101 == 0b0101  # running (bit 0) and remote (bit 2)
    _, out = await mbpoll(port, "-t", "3:hex", "-r", "30", "-c", "6")
    words = [int(v, 16) for v in mbpoll_values(out).values()]
    text = b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\0").decode()
    assert text == frozen_plant.model.reported("pump1")["serial_number"]
    _, out = await mbpoll(port, "-t", "0", "-r", "0", "-c", "1")
    assert mbpoll_values(out)[0] == "1"  # run_command coil
    _, out = await mbpoll(port, "-t", "1", "-r", "0", "-c", "2")
    assert mbpoll_values(out) == {0: "1", 1: "0"}  # running, no fault


async def test_writing_the_run_coil_stops_the_pump_and_its_flow(frozen_plant: Plant) -> None:
    port = frozen_plant.ports["modbus"]["pump1"]
    code, out = await mbpoll(port, "-t", "0", "-r", "0", write=("0",))
    assert code == 0, out
    for _ in range(30):
        frozen_plant.step(1.0)
    _, out = await mbpoll(port, "-t", "3:float", "-B", "-r", "0", "-c", "1")
    assert float(mbpoll_values(out)[0]) == 0.0
    _, out = await mbpoll(port, "-t", "1", "-r", "0", "-c", "1")
    assert mbpoll_values(out)[0] == "0"


async def test_speed_setpoint_write_is_scaled_and_acts_on_the_model(frozen_plant: Plant) -> None:
    port = frozen_plant.ports["modbus"]["pump2"]
    code, out = await mbpoll(port, "-t", "4", "-r", "0", write=("400",))  # 40.0 %
    assert code == 0, out
    assert frozen_plant.model.reported("pump2")["speed_setpoint"] == pytest.approx(40.0)
    flow_before = frozen_plant.model.reported("pump2")["flow"]
    for _ in range(30):
        frozen_plant.step(1.0)
    assert frozen_plant.model.reported("pump2")["flow"] < 0.7 * flow_before  # type: ignore[operator]


async def test_writes_beyond_the_map_get_exception_02(frozen_plant: Plant) -> None:
    async with _client(frozen_plant.ports["modbus"]["boiler1"]) as client:
        reply = await client.write_register(5, 1)  # past the boiler's holding registers
        assert reply.isError()
        assert reply.exception_code == 2


async def test_rtu_framing_over_tcp() -> None:
    async with Plant(
        devices=1, tick_s=None, opcua=False, control_port=None, modbus_framing="rtu"
    ) as plant:
        plant.step(10.0)
        port = plant.ports["modbus"]["pump1"]
        async with _client(port, framer=FramerType.RTU) as client:
            reply = await client.read_input_registers(26, count=1)
            assert not reply.isError()
            assert reply.registers[0] == round(float(plant.model.reported("pump1")["speed"]) * 10)


@pytest.mark.parametrize("code", [2, 4, 6])
async def test_exception_codes_on_chosen_addresses(frozen_plant: Plant, code: int) -> None:
    frozen_plant.add_fault(
        ModbusException(device="tank1", address=3, table="input_register", code=code)  # type: ignore[arg-type]
    )
    async with _client(frozen_plant.ports["modbus"]["tank1"]) as client:
        hit = await client.read_input_registers(0, count=10)
        assert hit.isError()
        assert hit.exception_code == code
        miss = await client.read_input_registers(5, count=4)
        assert not miss.isError()
    _, out = await mbpoll(frozen_plant.ports["modbus"]["tank1"], "-t", "3", "-r", "3")
    # libmodbus (inside mbpoll) names each exception code in its own words.
    expected = {2: "illegal data address", 4: "server failure", 6: "is busy"}[code]
    assert expected in out.lower(), out


async def test_request_counts_per_device_and_function_code(frozen_plant: Plant) -> None:
    async with _client(frozen_plant.ports["modbus"]["pump1"]) as client:
        for _ in range(3):
            await client.read_input_registers(0, count=125)
        await client.read_holding_registers(0, count=1)
        await client.read_coils(0, count=1)
    counts = frozen_plant.request_counts()
    assert counts["pump1"] == {4: 3, 3: 1, 1: 1}
    assert counts["pump2"] == {}


async def test_link_drop_is_seen_as_connection_loss_and_recovers(frozen_plant: Plant) -> None:
    port = frozen_plant.ports["modbus"]["pump2"]
    async with _client(port) as client:
        assert not (await client.read_input_registers(0, count=2)).isError()
        fault = frozen_plant.add_fault(LinkDrop(device="pump2"))
        await frozen_plant.modbus.watch_links_once()  # type: ignore[union-attr]
        with pytest.raises((ConnectionException, ModbusIOException)):
            await client.read_input_registers(0, count=2)
    assert (await mbpoll(port, "-t", "3", "-r", "0"))[0] != 0
    frozen_plant.clear_faults(fault.id)
    await frozen_plant.modbus.watch_links_once()  # type: ignore[union-attr]
    assert frozen_plant.ports["modbus"]["pump2"] == port
    code, out = await mbpoll(port, "-t", "3", "-r", "0")
    assert code == 0, out


async def test_slow_answers_exceed_a_client_timeout(frozen_plant: Plant) -> None:
    frozen_plant.add_fault(SlowAnswers(device="pump1", delay_s=1.5))
    code, out = await mbpoll(frozen_plant.ports["modbus"]["pump1"], "-t", "3", "-r", "0")
    assert code != 0
    assert "timed out" in out.lower() or "timeout" in out.lower(), out
    frozen_plant.clear_faults()
    await frozen_plant.modbus.stop()  # type: ignore[union-attr]  # ends the held request now


async def test_restart_resets_counters_and_drops_the_link() -> None:
    async with Plant(devices=1, tick_s=None, opcua=False, control_port=None) as plant:
        for _ in range(120):
            plant.step(60.0)
        assert float(plant.model.reported("pump1")["run_hours"]) > 1.9  # type: ignore[arg-type]
        plant.add_fault(Restart(device="pump1", seconds=0.3))
        await plant.modbus.watch_links_once()  # type: ignore[union-attr]
        port = plant.ports["modbus"]["pump1"]
        assert (await mbpoll(port, "-t", "3", "-r", "10"))[0] != 0
        await asyncio.sleep(0.35)
        await plant.modbus.watch_links_once()  # type: ignore[union-attr]
        code, out = await mbpoll(port, "-t", "3:hex", "-r", "10", "-c", "2")
        assert code == 0, out
        assert [int(v, 16) for v in mbpoll_values(out).values()] == [0, 0]


class _client:  # noqa: N801 - reads as a context-manager function at the call site
    def __init__(self, port: int, framer: FramerType = FramerType.SOCKET) -> None:
        self.client = AsyncModbusTcpClient(
            "127.0.0.1", port=port, framer=framer, timeout=1, retries=0, reconnect_delay=0
        )

    async def __aenter__(self) -> AsyncModbusTcpClient:
        assert await self.client.connect()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()


async def test_read_only_holding_register_refuses_a_write_and_keeps_its_value(
    frozen_plant: Plant,
) -> None:
    port = frozen_plant.ports["modbus"]["boiler1"]
    code, out = await mbpoll(port, "-t", "4", "-r", "10", write=("7",))
    assert code != 0
    assert "illegal data address" in out.lower(), out
    _, out = await mbpoll(port, "-t", "4:hex", "-r", "10")
    assert mbpoll_values(out)[10] == "0x0102"
