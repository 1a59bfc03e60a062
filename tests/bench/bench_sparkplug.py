"""Benchmark of the Sparkplug B edge node (issue 21): 10,000 tags/s published as Sparkplug
alongside the HTTPS uplink.

    flock /work/locks/bench.lock .venv/bin/python tests/bench/bench_sparkplug.py [--seconds 20]

40 simulated Modbus devices of 250 tags polled every second (10,000 readings/s) go through the
agent to a cloud on this machine; the same agent runs twice, each in a fresh process: once with
the uplink alone, once with `north.sparkplug` publishing to a Mosquitto of its own as well. The
simulator, the cloud, Mosquitto and the counting subscriber (`mosquitto_sub`) are other
processes, so CPU figures are the agent's. `added_core_share` is the second run's CPU per
reading minus the first's, times 10,000 readings/s (target under 0.10; per reading, because a
loaded machine may poll the two runs at different rates); `messages_per_s` is the Sparkplug
messages a subscriber on the broker received per second. Rows first, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_agent import (  # noqa: E402 - after the path fix-up
    aux_tags,
    cloud,
    map_tags,
    modbus_sections,
    run_agent,
    simulator,
)
from tests.mosquitto import mosquitto  # noqa: E402

DEVICES, PER_DEVICE = 40, 250


class Counter:
    """`mosquitto_sub` printing one line per Sparkplug message (the topic), in its own process."""

    def __init__(self, port: int, out: Path) -> None:
        self._out = out.open("wb")
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "spBv1.0/#",
             "-F", "%t", "-q", "0"],
            stdout=self._out, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._path = out

    def lines(self) -> int:
        self._out.flush()
        return self._path.read_bytes().count(b"\n")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


async def scenario(work: Path, seconds: float, *, sparkplug: bool) -> dict[str, float]:
    with simulator("--devices", str(DEVICES), "--tags-per-device", str(PER_DEVICE),
                   "--no-opcua") as mb, mosquitto(work) as port:  # fmt: skip
        devices: list[dict[str, Any]] = []
        for name, device_port in mb["modbus"].items():
            kind = "".join(c for c in name if c.isalpha())
            tags = (map_tags(kind) + aux_tags(PER_DEVICE))[:PER_DEVICE]
            devices += modbus_sections({name: device_port}, tags, 1.0)
        counter = Counter(port, work / "messages.txt")
        try:
            async with cloud(work) as (url, gateway_id, token):
                (work / "token").write_text(token)
                config: dict[str, Any] = {
                    "gateway": {"name": "bench", "state_dir": str(work / "agent")},
                    "cloud": {"url": url, "gateway_id": gateway_id,
                              "token_file": str(work / "token")},
                    "report": {"every_reading": True}, "local_api": {"port": 0},
                    "devices": devices,
                }  # fmt: skip
                if sparkplug:
                    config["north"] = {"sparkplug": {
                        "url": f"mqtt://127.0.0.1:{port}", "group_id": "bench",
                        "edge_node_id": "gw"}}  # fmt: skip
                before = counter.lines()
                started = time.perf_counter()
                figures = await run_agent(config, seconds)
                figures["messages_per_s"] = (counter.lines() - before) / (
                    time.perf_counter() - started
                )
                return figures
        finally:
            counter.close()


def run(name: str, seconds: float) -> dict[str, float]:
    """One scenario in a fresh process: its CPU and memory are that agent's alone."""
    out = subprocess.run(
        [sys.executable, __file__, "--scenario", name, "--seconds", str(seconds)],
        check=True, stdout=subprocess.PIPE, text=True, timeout=seconds * 4 + 300,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scenario", choices=("uplink", "both"))
    args = parser.parse_args()
    if args.scenario:
        with tempfile.TemporaryDirectory() as tmp:
            figures = asyncio.run(
                scenario(Path(tmp), args.seconds, sparkplug=args.scenario == "both")
            )
        print(json.dumps(figures))
        return
    alone = run("uplink", args.seconds)
    both = run("both", args.seconds)
    for name, f in (("uplink alone", alone), ("uplink + sparkplug", both)):
        print(
            f"{name:<20} {f['readings_per_s']:>8,.0f} readings/s  core {f['core_share']:.1%}  "
            f"RSS {f['rss_mb']:.0f} MB  sparkplug messages {f['messages_per_s']:,.0f}/s"
        )
    # Per reading, scaled to 10,000 readings/s: on a loaded machine the two runs may not poll
    # the same rate, and the raw difference would then compare unequal work.
    per_reading = (both["core_share"] / both["readings_per_s"]
                   - alone["core_share"] / alone["readings_per_s"])  # fmt: skip
    added = per_reading * 10_000
    print(f"added by the Sparkplug publisher: {added:.1%} of one core at 10,000 readings/s "
          f"({per_reading * 1e6:.2f} us per reading; raw difference "
          f"{both['core_share'] - alone['core_share']:.1%})")  # fmt: skip
    print(
        json.dumps({
            "added_core_share": round(added, 4),
            "messages_per_s": round(both["messages_per_s"], 1),
            "readings_per_s": round(both["readings_per_s"]),
            "readings_per_s_uplink_alone": round(alone["readings_per_s"]),
            "core_share_uplink_alone": round(alone["core_share"], 4),
            "core_share_with_sparkplug": round(both["core_share"], 4),
            "load_avg_1m": os.getloadavg()[0],
        })
    )  # fmt: skip


if __name__ == "__main__":
    main()
