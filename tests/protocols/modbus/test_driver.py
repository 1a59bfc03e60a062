"""The Modbus driver against a real pymodbus server on 127.0.0.1 (a port chosen at run time)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus import FramerType

from protocols.driver import ConnectionState, Driver
from protocols.errors import DriverConfigError, WriteError
from protocols.modbus.config import ModbusDeviceConfig, ModbusTag, PollGroup
from protocols.modbus.driver import ModbusDriver
from protocols.reading import Quality, Reading
from tests.protocols.modbus.literals import LITERALS
from tests.protocols.modbus.server import ModbusTestServer, PlantMemory

pytestmark = pytest.mark.integration


@pytest.fixture
async def server() -> AsyncIterator[ModbusTestServer]:
    async with ModbusTestServer(PlantMemory()) as running:
        yield running


def device(server: ModbusTestServer, tags: list[ModbusTag], **extra: Any) -> ModbusDeviceConfig:
    settings: dict[str, Any] = {
        "name": "pump1",
        "host": "127.0.0.1",
        "port": server.port,
        "timeout": 0.3,
        "retries": 0,
        "reconnect_base": 0.1,
        "reconnect_cap": 0.5,
        "poll_groups": [PollGroup(name="default", interval=0.1)],
        "tags": tags,
    }
    settings.update(extra)
    return ModbusDeviceConfig(**settings)


def hr(name: str, address: int, type_: str = "int16", **extra: Any) -> ModbusTag:
    return ModbusTag(
        name=name,
        table="holding_register",
        address=address,
        type=type_,  # type: ignore[arg-type]
        **extra,
    )


class Collector:
    """A sink that keeps every batch and wakes waiters."""

    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, batch: list[Reading]) -> None:
        async with self._changed:
            self.batches.append(batch)
            self._changed.notify_all()

    async def wait_for(self, predicate: Any, within: float = 5.0) -> list[Reading]:
        """Wait up to `within` seconds for a batch satisfying `predicate`; return it."""
        async with asyncio.timeout(within), self._changed:
            seen = 0
            while True:
                for batch in self.batches[seen:]:
                    if predicate(batch):
                        return batch
                seen = len(self.batches)
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(driver: ModbusDriver) -> AsyncIterator[Collector]:
    sink = Collector()
    async with driver:
        task = asyncio.create_task(driver.run(sink), name="driver-under-test")
        try:
            yield sink
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def by_tag(batch: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in batch}


def all_good(batch: list[Reading]) -> bool:
    return all(r.quality is Quality.GOOD for r in batch)


def all_bad(batch: list[Reading]) -> bool:
    return all(r.quality is Quality.BAD for r in batch)


async def test_every_type_and_order_decodes(server: ModbusTestServer) -> None:
    memory = server.memory
    tags: list[ModbusTag] = []
    expected: dict[str, Any] = {}
    address = 0
    for index, (type_, value, by_order) in enumerate(LITERALS):
        for order, registers in by_order.items():
            name = f"{type_}_{order}_{index}"
            table = "input_register" if index % 2 else "holding_register"
            memory.put(table, address, registers)
            tags.append(
                ModbusTag(name=name, table=table, address=address, type=type_, order=order)  # type: ignore[arg-type]
            )
            expected[name] = value
            address += len(registers) + 1  # a one-register gap between values
    memory.put("holding_register", 500, [0x4142, 0x2043, 0x0000])  # "AB C", ABCD
    tags.append(hr("label", 500, "string", length=3))
    expected["label"] = "AB C"
    memory.put("holding_register", 510, [0b1000_0000_0000_0100])
    tags += [hr("bit2", 510, "bit", bit=2), hr("bit3", 510, "bit", bit=3)]
    expected |= {"bit2": True, "bit3": False}
    memory.put("holding_register", 520, [655])
    tags.append(hr("temp", 520, "int16", scale=0.1, offset=-40.0, unit="degC"))
    memory.put("coil", 7, [1, 0, 1])
    memory.put("discrete_input", 1999, [1])
    for name, table, addr in [("c7", "coil", 7), ("c8", "coil", 8), ("c9", "coil", 9)]:
        tags.append(ModbusTag(name=name, table=table, address=addr, type="bool"))
    tags.append(ModbusTag(name="di", table="discrete_input", address=1999, type="bool"))
    expected |= {"c7": True, "c8": False, "c9": True, "di": True}

    driver = ModbusDriver(device(server, tags, simulated=True))
    assert isinstance(driver, Driver)
    async with running(driver) as sink:
        batch = await sink.wait_for(lambda b: True)
    got = by_tag(batch)
    assert all_good(batch), [r for r in batch if r.quality is not Quality.GOOD]
    assert {name: got[name].value for name in expected} == expected
    assert got["temp"].value == pytest.approx(25.5)
    assert got["temp"].unit == "degC"
    assert all(r.simulated for r in batch)
    assert len(batch) == len(tags)


async def test_requests_per_cycle_are_the_plan_minimum(server: ModbusTestServer) -> None:
    tags = [hr(f"h{a}", a) for a in range(300)]  # 3 reads: 125 + 125 + 50
    tags += [hr(f"gap{a}", a, "float32") for a in (400, 410, 420)]  # gaps of 8 <= 16: 1 read
    tags += [
        ModbusTag(name=f"in{a}", table="input_register", address=a, type="float32")
        for a in range(1000, 1100, 2)
    ]  # 1 read
    tags += [
        ModbusTag(name=f"c{a}", table="coil", address=a, type="bool") for a in range(0, 3000, 3)
    ]  # 2 reads of at most 2000 bits
    driver = ModbusDriver(device(server, tags))
    assert len(driver.groups[0].plan.blocks) == 7
    async with running(driver) as sink:
        await sink.wait_for(lambda b: len(sink.batches) >= 4)
        cycles = len(sink.batches)
        counts = dict(server.memory.requests)
    assert counts == {3: 4 * cycles, 4: cycles, 1: 2 * cycles}
    assert all(all_good(b) for b in sink.batches)
    assert driver.counters.requests == 7 * cycles


async def test_exception_02_inside_a_gap_is_split_and_remembered(server: ModbusTestServer) -> None:
    memory = server.memory
    memory.put("holding_register", 0, [10, 11, 0, 0, 0, 15, 0, 0, 0, 19])
    memory.refuse[("holding_register", 3)] = 2  # an undefined register inside the gap
    tags = [hr("a", 0), hr("b", 1), hr("c", 5), hr("d", 9)]
    driver = ModbusDriver(device(server, tags, max_register_gap=8))
    assert len(driver.groups[0].plan.blocks) == 1
    async with running(driver) as sink:
        await sink.wait_for(lambda b: len(sink.batches) >= 3)
        batches = list(sink.batches)
        log = list(memory.log)
    assert all(all_good(b) for b in batches)
    assert [r.value for r in batches[0]] == [10, 11, 15, 19]
    # Cycle 1: the merged read is refused and searched (cut at the gap nearest the middle,
    # 6..8, then at 2..4, which holds the bad register); every tag still reads good.
    assert log[:5] == [(3, 0, 10), (3, 0, 6), (3, 0, 2), (3, 5, 1), (3, 9, 1)]
    # Later cycles: only the bad gap stays cut; the good gap 6..8 is bridged again.
    assert log[5:9] == [(3, 0, 2), (3, 5, 5), (3, 0, 2), (3, 5, 5)]
    assert driver.counters.errors == 2


async def test_a_refused_tag_is_bad_and_its_neighbours_are_not(server: ModbusTestServer) -> None:
    server.memory.put("holding_register", 0, [1, 2, 3, 4, 5, 6, 7, 8])
    server.memory.refuse[("holding_register", 5)] = 2
    driver = ModbusDriver(device(server, [hr(f"r{a}", a) for a in range(8)]))
    async with running(driver) as sink:
        batch = await sink.wait_for(lambda b: True)
        second = await sink.wait_for(lambda b: b is not batch)
    for cycle in (batch, second):
        got = by_tag(cycle)
        assert got["r5"].quality is Quality.BAD
        assert "modbus exception 02 (illegal data address)" in (got["r5"].reason or "")
        assert [got[f"r{a}"].value for a in range(8) if a != 5] == [1, 2, 3, 4, 5, 7, 8]
        assert all(got[f"r{a}"].quality is Quality.GOOD for a in range(8) if a != 5)


async def test_exception_codes_become_bad_quality_for_the_read(server: ModbusTestServer) -> None:
    server.memory.refuse[("holding_register", 100)] = 4
    tags = [hr("ok", 0), hr("broken", 100), hr("neighbour", 101)]
    driver = ModbusDriver(device(server, tags, max_register_gap=0))
    async with running(driver) as sink:
        batch = await sink.wait_for(lambda b: True)
    got = by_tag(batch)
    assert got["ok"].quality is Quality.GOOD
    for name in ("broken", "neighbour"):  # one read: exception 04 is not an address problem
        assert got[name].quality is Quality.BAD
        assert "modbus exception 04 (server device failure)" in (got[name].reason or "")
    assert driver.counters.errors >= 1


async def test_timeouts_become_bad_quality_then_recover(server: ModbusTestServer) -> None:
    server.memory.put("holding_register", 0, [42])
    server.memory.delay = 0.6
    driver = ModbusDriver(device(server, [hr("level", 0)], timeout=0.2))
    async with running(driver) as sink:
        bad = await sink.wait_for(all_bad)
        assert "timeout" in (bad[0].reason or "")
        assert driver.counters.timeouts >= 1
        server.memory.delay = 0.0
        good = await sink.wait_for(all_good, within=6.0)
    assert good[0].value == 42


async def test_server_restart_is_visible_and_readings_resume(server: ModbusTestServer) -> None:
    server.memory.put("holding_register", 0, [7])
    driver = ModbusDriver(device(server, [hr("level", 0)]))
    async with running(driver) as sink:
        await sink.wait_for(all_good)
        assert driver.link.state is ConnectionState.CONNECTED
        await server.stop()
        outage = await sink.wait_for(all_bad, within=3.0)
        assert outage[0].reason
        await asyncio.sleep(0.5)
        server.memory.put("holding_register", 0, [8])
        await server.start()
        loop = asyncio.get_running_loop()
        restarted = loop.time()
        resumed = await sink.wait_for(lambda b: all_good(b) and b[0].value == 8, within=5.0)
        assert loop.time() - restarted < 3.0
    assert resumed[0].value == 8
    assert driver.link.reconnects >= 1


async def test_writes_use_the_tag_encoding_and_read_back(server: ModbusTestServer) -> None:
    memory = server.memory
    tags = [
        hr("sp_float", 0, "float32", order="CDAB", writable=True),
        hr("sp_int", 2, "int16", writable=True),
        hr("sp_scaled", 3, "uint16", scale=0.5, writable=True),
        hr("sp_text", 4, "string", length=2, writable=True),
        hr("sp_bit", 6, "bit", bit=3, writable=True),
        hr("sp_stuck", 7, "uint16", writable=True),
        hr("ro", 8, "uint16"),
        ModbusTag(name="run", table="coil", address=5, type="bool", writable=True),
    ]
    memory.put("holding_register", 6, [0b1])
    memory.ignore_writes.add(("holding_register", 7))
    driver = ModbusDriver(device(server, tags))
    async with running(driver) as sink:
        await sink.wait_for(all_good)
        read_back = [
            await driver.write("sp_float", 1.0),
            await driver.write("sp_int", -2),
            await driver.write("sp_scaled", 21.5),
            await driver.write("sp_text", "OK"),
            await driver.write("sp_bit", True),
            await driver.write("run", True),
        ]
        assert read_back == [1.0, -2, 21.5, "OK", True, True]  # decoded from what was read
        hold = memory.tables["holding_register"]
        assert hold[0:8] == [0x0000, 0x3F80, 0xFFFE, 43, 0x4F4B, 0x0000, 0b1001, 0]
        assert memory.tables["coil"][5] == 1
        assert memory.requests[6] == 3  # FC6: int, scaled, bit
        assert memory.requests[16] == 2  # FC16: float, text
        assert memory.requests[5] == 1  # FC5: coil
        with pytest.raises(WriteError, match="read back"):
            await driver.write("sp_stuck", 5)
        with pytest.raises(WriteError, match="not writable"):
            await driver.write("ro", 1)
        with pytest.raises(WriteError, match="does not fit"):
            await driver.write("sp_int", 70000)
        seen = await sink.wait_for(lambda b: by_tag(b)["sp_scaled"].value == 21.5)
        assert by_tag(seen)["sp_text"].value == "OK"
        memory.refuse[("holding_register", 2)] = 3
        with pytest.raises(WriteError, match="exception 03"):
            await driver.write("sp_int", 1)


async def test_write_multiple_option_uses_fc15_and_fc16(server: ModbusTestServer) -> None:
    tags = [
        hr("sp", 0, "uint16", writable=True),
        ModbusTag(name="run", table="coil", address=0, type="bool", writable=True),
    ]
    driver = ModbusDriver(device(server, tags, use_write_multiple=True))
    async with running(driver) as sink:
        await sink.wait_for(all_good)
        await driver.write("sp", 9)
        await driver.write("run", True)
    assert server.memory.requests[16] == 1
    assert server.memory.requests[15] == 1
    assert server.memory.tables["holding_register"][0] == 9


async def test_rtu_framing_over_tcp() -> None:
    memory = PlantMemory()
    memory.put("holding_register", 10, [0x0000, 0x803F])  # float32 1.0, DCBA
    async with ModbusTestServer(memory, framer=FramerType.RTU) as server:
        tag = hr("flow", 10, "float32", order="DCBA")
        driver = ModbusDriver(device(server, [tag], transport="rtu_over_tcp", unit_id=7))
        async with running(driver) as sink:
            batch = await sink.wait_for(lambda b: True)
    assert batch[0].quality is Quality.GOOD
    assert batch[0].value == 1.0


async def test_a_slow_device_never_delays_another() -> None:
    fast_memory, slow_memory = PlantMemory(), PlantMemory()
    slow_memory.delay = 0.25  # every read takes longer than the 0.1 s interval
    async with ModbusTestServer(fast_memory) as fast, ModbusTestServer(slow_memory) as slow:
        fast_driver = ModbusDriver(device(fast, [hr("a", 0)], name="fast"))
        slow_driver = ModbusDriver(device(slow, [hr("a", 0)], name="slow", timeout=1.0))
        async with running(fast_driver) as fast_sink, running(slow_driver) as slow_sink:
            await asyncio.sleep(1.05)
            fast_cycles, slow_cycles = len(fast_sink.batches), len(slow_sink.batches)
    assert fast_cycles >= 8
    assert fast_driver.counters.overruns == 0
    assert slow_cycles <= 5
    assert slow_driver.counters.overruns >= slow_cycles - 1  # every late start is counted
    assert all(all_good(b) for b in slow_sink.batches)


async def test_unreachable_device_reports_bad_quality_and_keeps_trying() -> None:
    memory = PlantMemory()
    async with ModbusTestServer(memory) as server:
        port = server.port  # free now that the server is gone
    config = ModbusDeviceConfig(
        name="ghost",
        host="127.0.0.1",
        port=port,
        timeout=0.2,
        reconnect_base=0.05,
        reconnect_cap=0.1,
        poll_groups=[PollGroup(name="default", interval=0.1)],
        tags=[hr("a", 0)],
    )
    driver = ModbusDriver(config)
    async with running(driver) as sink:
        batch = await sink.wait_for(lambda b: len(sink.batches) >= 3)
    assert all_bad(batch)
    assert "not connected" in (batch[0].reason or "")
    assert "cannot connect" in (driver.link.last_error or "")
    assert driver.link.state is ConnectionState.CLOSED


async def test_poll_groups_run_on_their_own_schedules(server: ModbusTestServer) -> None:
    tags = [hr("fast_a", 0, poll_group="fast"), hr("slow_a", 100, poll_group="slow")]
    groups = [PollGroup(name="fast", interval=0.1), PollGroup(name="slow", interval=0.5)]
    driver = ModbusDriver(device(server, tags, poll_groups=groups))
    async with running(driver) as sink:
        await asyncio.sleep(1.08)
        batches = list(sink.batches)
    fast = [b for b in batches if b[0].tag == "fast_a"]
    slow = [b for b in batches if b[0].tag == "slow_a"]
    assert all(len(b) == 1 for b in batches)  # one list per group cycle, only its own tags
    assert 8 <= len(fast) <= 12
    assert 2 <= len(slow) <= 3
    assert driver.counters.overruns == 0
    gaps = [(b[0].ts - a[0].ts) / 1e6 for a, b in itertools.pairwise(fast)]
    assert all(0.05 < gap < 0.3 for gap in gaps), gaps


async def test_serial_rtu_needs_pyserial_or_reports_the_port() -> None:
    config = ModbusDeviceConfig(
        name="rtu1",
        transport="rtu",
        serial_port="/dev/tagway-no-such-port",
        timeout=0.2,
        poll_groups=[PollGroup(name="default", interval=0.1)],
        tags=[hr("a", 0)],
    )
    if importlib.util.find_spec("serial") is None:
        with pytest.raises(DriverConfigError, match="pyserial"):
            async with ModbusDriver(config):
                pass
        return
    driver = ModbusDriver(config)
    async with running(driver) as sink:
        batch = await sink.wait_for(lambda b: True)
    assert all_bad(batch)
    assert "/dev/tagway-no-such-port" in (driver.link.last_error or "")


async def test_inter_request_delay_spaces_the_requests(server: ModbusTestServer) -> None:
    tags = [hr("a", 0), hr("b", 50), hr("c", 100)]  # three reads (gaps > 16)
    config = device(
        server,
        tags,
        inter_request_delay=0.05,
        poll_groups=[PollGroup(name="default", interval=1.0)],
    )
    driver = ModbusDriver(config)
    assert len(driver.groups[0].plan.blocks) == 3
    async with running(driver) as sink:
        await sink.wait_for(lambda b: True)
    assert driver.groups[0].last_cycle_s >= 0.1  # two pauses between three requests
    assert server.memory.requests[3] == 3


async def test_a_write_longer_than_fc16_allows_is_refused_before_sending(
    server: ModbusTestServer,
) -> None:
    driver = ModbusDriver(device(server, [hr("note", 0, "string", length=124, writable=True)]))
    async with running(driver) as sink:
        await sink.wait_for(all_good)
        with pytest.raises(WriteError, match="124 registers at 0 exceed the 123"):
            await driver.write("note", "x")
    assert server.memory.requests[16] == 0


class _Enough(Exception):
    """Raised by a test sink to stop the driver."""


async def test_an_overrunning_group_still_lets_the_link_task_run() -> None:
    """Disconnected cycles never await the network; a slow sink makes every one of them late.
    The poll loop must still yield, or reconnects (and cancellation) would starve."""
    memory = PlantMemory()
    async with ModbusTestServer(memory) as server:
        port = server.port
    config = ModbusDeviceConfig(
        name="ghost",
        host="127.0.0.1",
        port=port,
        timeout=0.2,
        reconnect_base=0.01,
        reconnect_cap=0.02,
        poll_groups=[PollGroup(name="default", interval=0.001)],
        tags=[hr("a", 0)],
    )
    loop = asyncio.get_running_loop()
    ticks = 0
    ticking = True

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticking:
            loop.call_soon(tick)

    seen: list[int] = []

    async def blocking_sink(batch: list[Reading]) -> None:
        seen.append(ticks)
        time.sleep(0.002)  # noqa: ASYNC251 - the point: a sink that blocks makes every cycle late
        if len(seen) >= 20:
            raise _Enough

    tick()
    driver = ModbusDriver(config)
    try:
        async with driver:
            with pytest.raises(ExceptionGroup) as caught:
                await driver.run(blocking_sink)
    finally:
        ticking = False
    assert caught.group_contains(_Enough)
    assert len(set(seen)) == len(seen)  # the event loop turned between every two cycles
    assert driver.counters.overruns >= 19


async def test_busy_drivers_stop_when_cancelled(server: ModbusTestServer) -> None:
    """Cancelling a driver in the middle of a response must stop it. pymodbus's wait_for can
    swallow such a cancellation on Python 3.11 (a race: without the driver's guard, some of
    these drivers never stop; how many depends on timing)."""
    tags = [hr(f"t{a}", a) for a in range(600)]
    rng = random.Random(5)

    async def discard(batch: list[Reading]) -> None:
        pass

    still_running = 0
    for _ in range(12):
        drivers = [
            ModbusDriver(
                device(
                    server,
                    tags,
                    name=f"busy{i}",
                    poll_groups=[PollGroup(name="default", interval=0.0005)],
                )
            )
            for i in range(6)
        ]
        tasks = [
            asyncio.create_task(d.run(discard), name=f"busy{i}") for i, d in enumerate(drivers)
        ]
        await asyncio.sleep(rng.uniform(0.03, 0.08))
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=1.0)
        still_running += len(pending)
        for task in pending:  # clean up after a failure, so the report is about the count
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        for driver in drivers:
            await driver.__aexit__(None, None, None)
    assert still_running == 0


async def test_a_swallowed_cancellation_still_stops_the_driver(server: ModbusTestServer) -> None:
    """The deterministic form of the race above: a sink that swallows the cancellation."""
    entered = asyncio.Event()

    async def careless_sink(batch: list[Reading]) -> None:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.5)

    driver = ModbusDriver(device(server, [hr("a", 0)]))
    async with driver:
        task = asyncio.create_task(driver.run(careless_sink), name="careless")
        await entered.wait()
        task.cancel()
        _, pending = await asyncio.wait([task], timeout=1.5)
        if pending:  # clean up so the failure reports the real problem, not a leaked task
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
    assert not pending
    assert task.cancelled()
