"""A child process for the multi-process tests: an appender or a leasing reader, killed by the
parent with SIGKILL at random moments.

It reports on stdout only *after* each call returns (one line per event, written with a
single unbuffered ``os.write``), so everything reported has really happened:

    writer:  ``A <lane> <chunk id> <bytes> <count>``   after append/append_many returned
    reader:  ``L <lease id> <chunk id>...``             after lease returned
             ``a <lease id>``                           before ack is called (may or may not land)
             ``K <lease id> <n>``                       after ack returned
             ``R <lease id>``                           after release returned
    consumers: the writer's ``A`` lines, and per consumer (``uplink``, ``sparkplug``)
             ``D <consumer> <lease id> <chunk id>...``  after lease returned (delivered)
             ``a <consumer> <lease id>``               before ack is called
             ``K <consumer> <lease id>``               after ack returned

Usage: ``python -m tests.store_forward.outbox_child writer|reader|consumers PATH QUOTA SEED``
"""

from __future__ import annotations

import itertools
import os
import random
import sys
import time

from store_forward import Lane, Outbox, OutboxSettings

LANES = (Lane.ALARM, Lane.EVENT, Lane.TELEMETRY)


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def writer(outbox: Outbox, rng: random.Random) -> None:
    """Append forever: mostly telemetry, some events, rare alarms, singly and in batches."""
    while True:
        batch = [
            (
                rng.randbytes(rng.randint(100, 3000)),
                rng.randint(1, 50),
                rng.choices(LANES, weights=(1, 10, 89))[0],
            )
            for _ in range(rng.choice((1, 1, 1, 4)))
        ]
        if len(batch) == 1:
            payload, count, lane = batch[0]
            ids = [outbox.append(payload, count=count, lane=lane)]
        else:
            ids = outbox.append_many(batch)
        for chunk_id, (payload, count, lane) in zip(ids, batch, strict=True):
            _say(f"A {lane.value} {chunk_id} {len(payload)} {count}")


def reader(outbox: Outbox, rng: random.Random) -> None:
    """Lease forever; ack, release or simply keep (hold) each lease."""
    while True:
        lease = outbox.lease(max_chunks=rng.randint(1, 8))
        if not lease:
            time.sleep(0.01)
            continue
        _say(f"L {lease.lease_id} " + " ".join(str(i) for i in lease.chunk_ids))
        action = rng.random()
        if action < 0.5:
            _say(f"a {lease.lease_id}")
            _say(f"K {lease.lease_id} {outbox.ack(lease)}")
        elif action < 0.7:
            outbox.release(lease)
            _say(f"R {lease.lease_id}")


CONSUMERS = ("uplink", "sparkplug")


def consumers(outbox: Outbox, rng: random.Random) -> None:
    """The agent's shape: appends, and two consumers sending at their own pace; the Sparkplug
    publisher's broker goes away now and then (it sends nothing for a while)."""
    outbox.forget_leases()  # as the agent does at start: the dead run's leases are void
    down_until = 0
    for step in itertools.count():
        payload = rng.randbytes(rng.randint(100, 2000))
        count, lane = rng.randint(1, 50), rng.choices(LANES, weights=(1, 10, 89))[0]
        chunk_id = outbox.append(payload, count=count, lane=lane)
        _say(f"A {lane.value} {chunk_id} {len(payload)} {count}")
        if step >= down_until and rng.random() < 0.02:
            down_until = step + rng.randint(10, 60)
        for name in CONSUMERS:
            if name == "sparkplug" and step < down_until:
                continue
            lease = outbox.lease(max_chunks=rng.randint(1, 6), consumer=name,
                                 newest_first=rng.random() < 0.5)  # fmt: skip
            if not lease:
                continue
            _say(f"D {name} {lease.lease_id} " + " ".join(str(i) for i in lease.chunk_ids))
            _say(f"a {name} {lease.lease_id}")
            outbox.ack(lease)
            _say(f"K {name} {lease.lease_id}")


def main(argv: list[str]) -> None:
    """Run the role named in argv until killed."""
    role, path, quota, seed = argv
    names = CONSUMERS if role == "consumers" else ("uplink",)
    settings = OutboxSettings(quota_bytes=int(quota), lease_timeout_s=60, consumers=names)
    roles = {"writer": writer, "reader": reader, "consumers": consumers}
    with Outbox(path, settings) as outbox:
        roles[role](outbox, random.Random(int(seed)))


if __name__ == "__main__":
    main(sys.argv[1:])
