"""Benchmark: the MQTT driver receiving firmware_sim telemetry through the embedded broker.

Three processes, so the figures are the driver's own: the embedded broker (amqtt) in one, the
publishing devices in another, and the driver (aiomqtt + our codec + a counting sink) in this one.
For each scenario (tags/s, tags per message) the devices publish for warm-up + measure seconds;
we report readings/s delivered to the sink during the measure window, the driver process's CPU
seconds per 10,000 readings, and how many published values never arrived (should be 0).

    python tests/bench/bench_mqtt.py            # the default run, well under 90 s
    python tests/bench/bench_mqtt.py --measure 20 --per-message 10 --qos 0
    python tests/bench/bench_mqtt.py --broker mosquitto   # the same driver, a C broker

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from protocols.driver import ConnectionState  # noqa: E402 - after the path setup above
from protocols.mqtt.broker import EmbeddedBroker, hash_password  # noqa: E402
from protocols.mqtt.codec import DeadLetter  # noqa: E402
from protocols.mqtt.config import (  # noqa: E402
    BrokerUser,
    EmbeddedBrokerConfig,
    MqttSourceConfig,
    MqttSubscription,
)
from protocols.mqtt.driver import MqttDriver  # noqa: E402
from protocols.reading import Reading  # noqa: E402

DEVICES = 10
PASSWORD = "bench-password"  # noqa: S105 - a throwaway account on a loopback broker
MOSQUITTO = "/usr/sbin/mosquitto"
SCENARIOS = ((1_000, 50), (10_000, 50), (10_000, 10))  # (tags/s, tags per message)


async def serve_broker() -> None:
    """Role `broker`: run the embedded broker, print its port, serve until stdin closes."""
    digest = hash_password(PASSWORD)
    users = (
        BrokerUser(username="devices", password_hash=digest, publish=("plant/#",)),
        BrokerUser(username="agent", password_hash=digest, publish=(), subscribe=("plant/#",)),
    )
    config = EmbeddedBrokerConfig(port=0, users=users, max_connections=100)
    async with EmbeddedBroker(config) as broker:
        print(broker.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def publish(port: int, rate: int, per_message: int, seconds: float) -> None:
    """Role `publish`: DEVICES clients share `rate` tags/s in messages of `per_message` tags."""
    import aiomqtt  # noqa: PLC0415 - only this role needs the client directly

    tick = 0.1
    messages_per_tick = max(1, round(rate * tick / per_message))
    published = 0
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                aiomqtt.Client(
                    "127.0.0.1", port, username="devices", password=PASSWORD, identifier=f"d{i}"
                )
            )
            for i in range(DEVICES)
        ]
        print("publishing", flush=True)
        start = time.monotonic()
        ticks = round(seconds / tick)
        for n in range(ticks):
            ts = time.time_ns() // 1_000_000
            for m in range(messages_per_tick):
                device = m % DEVICES
                values = {f"t{k}": (n * 0.5 + k) for k in range(per_message)}
                payload = json.dumps({"ts": ts, "values": values, "simulated": True})
                await clients[device].publish(f"plant/dev{device}/telemetry", payload, qos=0)
                published += per_message
            await asyncio.sleep(max(0.0, start + (n + 1) * tick - time.monotonic()))
        elapsed = time.monotonic() - start
        await asyncio.sleep(0.5)  # let the last QoS 0 packets leave the socket buffers
    print(published, round(published / elapsed, 1), flush=True)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc; NaN where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counter:
    """The sink: counts readings and calls; keeps nothing."""

    def __init__(self) -> None:
        self.readings = 0
        self.calls = 0
        self.letters = 0

    async def __call__(self, batch: list[Reading]) -> None:
        self.readings += len(batch)
        self.calls += 1

    async def dead(self, letters: list[DeadLetter]) -> None:
        self.letters += len(letters)


async def scenario(
    sink: Counter, broker_pid: int, port: int, load: tuple[int, int], args: argparse.Namespace
) -> dict[str, float]:
    rate, per_message = load
    before_readings, before_calls = sink.readings, sink.calls
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--role", "publish", "--port", str(port), "--rate", str(rate),
        "--per-message", str(per_message), "--seconds", str(args.warmup + args.measure),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert publisher.stdout is not None
    await publisher.stdout.readline()  # "publishing": the devices are connected and start now
    await asyncio.sleep(args.warmup)
    wall0, cpu0, got0 = time.perf_counter(), time.process_time(), sink.readings
    broker0 = process_cpu_s(broker_pid)
    await asyncio.sleep(args.measure)
    wall1, cpu1, got1 = time.perf_counter(), time.process_time(), sink.readings
    broker_cpu = process_cpu_s(broker_pid) - broker0
    out, _ = await publisher.communicate()
    published_text, achieved = out.decode().split()[-2:]
    published = int(published_text)
    deadline = time.monotonic() + 10
    while sink.readings - before_readings < published and time.monotonic() < deadline:  # noqa: ASYNC110 - the sink's counter has no event; a bench may poll
        await asyncio.sleep(0.05)
    delivered = sink.readings - before_readings
    readings = got1 - got0
    cpu = cpu1 - cpu0
    return {
        "tags_per_s_offered": rate,
        "tags_per_message": per_message,
        "tags_per_s_published": float(achieved),
        "readings_per_s": round(readings / (wall1 - wall0), 1),
        "cpu_s_per_10k_readings": round(cpu / readings * 10_000, 4) if readings else float("nan"),
        "driver_cpu_percent_of_one_core": round(100 * cpu / (wall1 - wall0), 2),
        "broker_cpu_percent_of_one_core": round(100 * broker_cpu / (wall1 - wall0), 1),
        "readings_per_sink_call": round(delivered / max(1, sink.calls - before_calls), 1),
        "published": published,
        "not_delivered_10s_after": published - delivered,
    }


async def start_mosquitto(workdir: Path) -> tuple[asyncio.subprocess.Process, int]:
    """Mosquitto on a free loopback port with the bench accounts (for `--broker mosquitto`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    passwords = workdir / "passwd"
    passwords.touch(mode=0o600)
    for user in ("devices", "agent"):
        tool = await asyncio.create_subprocess_exec(
            "mosquitto_passwd", "-b", str(passwords), user, PASSWORD
        )
        if await tool.wait():
            raise SystemExit("mosquitto_passwd failed")
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {passwords}\npersistence false\nmax_queued_messages 100000\n"
    )
    broker = await asyncio.create_subprocess_exec(
        MOSQUITTO, "-c", str(conf), stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return broker, port
        await asyncio.sleep(0.05)
    raise SystemExit("mosquitto did not start")


async def start_broker(args: argparse.Namespace) -> tuple[asyncio.subprocess.Process, int]:
    """The broker process: the embedded amqtt broker (default) or Mosquitto."""
    if args.broker == "mosquitto":
        return await start_mosquitto(Path(tempfile.mkdtemp(prefix="bench-mqtt-")))
    broker = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--role", "broker", stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert broker.stdout is not None
    return broker, int((await broker.stdout.readline()).decode())


async def bench(args: argparse.Namespace) -> None:
    broker, port = await start_broker(args)
    assert broker.stdin is not None
    config = MqttSourceConfig(
        name="bench",
        url=f"mqtt://127.0.0.1:{port}",
        username="agent",
        password=PASSWORD,
        qos=args.qos,
        subscriptions=(MqttSubscription(topic="plant/{device}/telemetry"),),
    )
    sink = Counter()
    results = []
    try:
        async with MqttDriver(config, dead_letters=sink.dead) as driver:
            task = asyncio.create_task(driver.run(sink), name="bench mqtt driver")
            while driver.link.state is not ConnectionState.CONNECTED:  # noqa: ASYNC110 - no event for link state
                await asyncio.sleep(0.05)
            print(f"{'offered':>8} {'sent/s':>8} {'tags/msg':>8} {'readings/s':>11} "
                  f"{'cpu s/10k':>10} {'cpu %':>6} {'broker %':>9} {'per call':>9} "
                  f"{'missing':>7}")  # fmt: skip
            for rate, per_message in SCENARIOS:
                if args.per_message not in (None, per_message):
                    continue
                row = await scenario(sink, broker.pid, port, (rate, per_message), args)
                results.append(row)
                print(f"{rate:>8} {row['tags_per_s_published']:>8} {per_message:>8} "
                      f"{row['readings_per_s']:>11} "
                      f"{row['cpu_s_per_10k_readings']:>10} "
                      f"{row['driver_cpu_percent_of_one_core']:>6} "
                      f"{row['broker_cpu_percent_of_one_core']:>9} "
                      f"{row['readings_per_sink_call']:>9} "
                      f"{row['not_delivered_10s_after']:>7}")  # fmt: skip
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        broker.stdin.close()
        if args.broker == "mosquitto":
            broker.terminate()
        await broker.wait()
    figures = {
        f"{r['tags_per_s_offered']}_tags_s_{r['tags_per_message']}_per_msg": r for r in results
    }
    print(
        json.dumps(
            {
                "bench": "mqtt",
                "broker": args.broker,
                "dead_letters": sink.letters,
                "scenarios": figures,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("bench", "broker", "publish"), default="bench")
    parser.add_argument("--port", type=int)
    parser.add_argument("--rate", type=int)
    parser.add_argument("--per-message", type=int, help="only the scenarios with this many tags")
    parser.add_argument("--broker", choices=("embedded", "mosquitto"), default="embedded")
    parser.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="the driver's QoS")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--measure", type=float, default=6.0)
    args = parser.parse_args()
    if args.role == "broker":
        asyncio.run(serve_broker())
    elif args.role == "publish":
        asyncio.run(publish(args.port, args.rate, args.per_message, args.seconds))
    elif args.broker == "mosquitto" and not Path(MOSQUITTO).exists():
        raise SystemExit(f"--broker mosquitto: {MOSQUITTO} is not installed")
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
