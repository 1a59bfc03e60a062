"""Shared helpers for the firmware_sim tests: a frozen plant and the mbpoll command."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
from collections.abc import AsyncIterator

import pytest

from firmware_sim.plant import Plant

MBPOLL = shutil.which("mbpoll")
_VALUE_LINE = re.compile(r"^\[(\d+)\]:\s+(\S+)", re.MULTILINE)


@pytest.fixture
async def frozen_plant() -> AsyncIterator[Plant]:
    """Four devices, Modbus only, clock stopped after one simulated minute (values hold still)."""
    async with Plant(devices=4, seed=3, tick_s=None, opcua=False, control_port=None) as plant:
        for _ in range(60):
            plant.step(1.0)
        yield plant


async def mbpoll(port: int, *args: str, write: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run mbpoll once against 127.0.0.1:`port` (writing `write` if given); (exit code, output)."""
    if MBPOLL is None:
        pytest.skip("mbpoll is not installed (apt-get install mbpoll, or `make tools`)")
    proc = await asyncio.create_subprocess_exec(
        MBPOLL, "-m", "tcp", "-p", str(port), "-1", "-0", "-o", "1", *args, "127.0.0.1", *write,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def mbpoll_values(output: str) -> dict[int, str]:
    """`[address]: value` lines of mbpoll's output."""
    return {int(a): v for a, v in _VALUE_LINE.findall(output)}


def decode_independently(registers: list[int], kind: str, order: str) -> float:
    """Decode wire registers by the COMMON.md order rules, written apart from firmware_sim."""
    wire = b"".join(r.to_bytes(2, "big") for r in registers)
    pairs = [wire[i : i + 2] for i in range(0, len(wire), 2)]
    if order == "CDAB":
        pairs.reverse()
    elif order == "BADC":
        pairs = [p[::-1] for p in pairs]
    elif order == "DCBA":
        pairs = [p[::-1] for p in reversed(pairs)]
    fmt = {"int32": ">i", "uint32": ">I", "float32": ">f", "int64": ">q", "uint64": ">Q",
           "float64": ">d", "int16": ">h", "uint16": ">H"}[kind]  # fmt: skip
    return struct.unpack(fmt, b"".join(pairs))[0]  # type: ignore[no-any-return]
