"""A chunk in flight is never dropped (issue 15, counts that tell the truth): an outage longer
than the outbox's lease timeout, while the quota policy makes room, must not count as dropped
the readings the uplink is still sending and later delivers."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx

from cloud.contract import decode_batch
from edge.chunk import encode
from edge.credentials import UplinkIdentity
from edge.seq_state import SeqState
from edge.uplink import Uplink, UplinkSettings
from protocols.reading import Reading
from store_forward import AsyncOutbox, Lane, OutboxSettings

T0 = 1_795_000_000_000_000
PER_CHUNK = 200


def chunk_of(first: int) -> bytes:
    rng = random.Random(first)  # noisy values: chunks of a few KiB that do not compress away
    return encode([Reading("pump1", "flow", T0 + i, rng.random()) for i in
                   range(first, first + PER_CHUNK)])  # fmt: skip


async def test_an_outage_longer_than_the_lease_timeout_drops_nothing_in_flight(
    tmp_path: Path,
) -> None:
    size = len(chunk_of(0))
    settings = OutboxSettings(quota_bytes=int(size * 3.5), lease_timeout_s=0.5)
    back = asyncio.Event()
    posted: list[bytes] = []

    def cloud(request: httpx.Request) -> httpx.Response:
        if not back.is_set():
            return httpx.Response(503)
        posted.append(request.content)
        return httpx.Response(200, json={"duplicate": False, "stored": PER_CHUNK})

    async def token() -> str:
        return "token"

    async with (
        AsyncOutbox(tmp_path / "outbox.db", settings) as outbox,
        httpx.AsyncClient(transport=httpx.MockTransport(cloud)) as client,
    ):
        await outbox.append_many([(chunk_of(0), PER_CHUNK, Lane.TELEMETRY)])
        link = Uplink(
            settings=UplinkSettings(
                ingest_url="http://cloud.test/v1/ingest", gateway_id="17", max_batch_bytes=1 << 20,
                max_batches_per_s=0, connect_timeout=1.0, read_timeout=1.0, retry_max_delay=0.1,
                lease_renew_s=0.1,
            ),
            outbox=outbox,
            identity=UplinkIdentity(gateway_id="17", token=token, renew=lambda: None),
            seq_state=SeqState.load(tmp_path / "seq.json"),
        )  # fmt: skip
        sending = asyncio.create_task(link.send_once(client))
        await asyncio.sleep(1.5)  # three lease timeouts into the outage
        appended = PER_CHUNK
        for n in range(1, 6):  # the plant goes on: the quota policy makes room
            await outbox.append_many([(chunk_of(n * PER_CHUNK), PER_CHUNK, Lane.TELEMETRY)])
            appended += PER_CHUNK
        back.set()
        assert await asyncio.wait_for(sending, 10)
        stats = await outbox.stats()
    (body,) = posted
    delivered = decode_batch(body, content_type="application/vnd.tagway.chunks+msgpack")
    assert [s.ts[0] for s in delivered.series] == [T0]  # the chunk that was in flight
    dropped = stats.lanes[Lane.TELEMETRY].dropped_readings
    waiting = stats.lanes[Lane.TELEMETRY].readings
    assert dropped > 0  # the quota did make room, from the chunks nobody was sending
    # Every reading is counted once: delivered, dropped or still waiting.
    assert PER_CHUNK + dropped + waiting == appended
