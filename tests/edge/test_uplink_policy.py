"""The uplink's policy as a unit: an in-memory outbox and `httpx.MockTransport` playing the
cloud. What each answer does to the leased chunks, the token, the waits and the batch size."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from cloud.contract import Batch, decode_batch
from edge.chunk import encode
from edge.credentials import UplinkIdentity
from edge.seq_state import SeqState
from edge.uplink import Uplink, UplinkSettings
from protocols.reading import Reading
from store_forward import Lane
from tests.edge.memory_outbox import MemoryOutbox

T0 = 1_795_000_000_000_000
Handler = Callable[[httpx.Request], httpx.Response]


class Cloud:
    """Answers from a script (then 200), and remembers every request."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    before: Handler | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.before is not None:
            self.before(request)
        if self.answers:
            return self.answers.pop(0)
        return httpx.Response(200, json={"duplicate": False, "stored": 1})

    def batch(self, i: int) -> Batch:
        """Request `i`, decoded."""
        request = self.requests[i]
        return decode_batch(request.content, content_type=request.headers["content-type"],
                            content_encoding=request.headers.get("content-encoding"))  # fmt: skip

    def batch_readings(self, i: int) -> list[float]:
        """The values of request `i`, in the order the batch carries them."""
        return [float(v) for s in self.batch(i).series for v in s.values]

    def tokens(self) -> list[str]:
        return [r.headers["authorization"].removeprefix("Bearer ") for r in self.requests]


class Tokens:
    """A token source that mints `token-1`, `token-2`... each time it is renewed."""

    def __init__(self) -> None:
        self.generation = 1

    async def token(self) -> str:
        return f"token-{self.generation}"

    def renew(self) -> None:
        self.generation += 1


def fill(box: MemoryOutbox, chunks: int, *, per_chunk: int = 3, first: int = 0) -> None:
    """`chunks` telemetry chunks whose values number the readings from `first` on."""
    for c in range(chunks):
        values = range(first + c * per_chunk, first + (c + 1) * per_chunk)
        payload = encode([Reading("pump1", "flow", T0 + v, float(v)) for v in values])
        box.put(payload, per_chunk)


@pytest.fixture
def sleeps() -> list[float]:
    return []


def uplink(
    tmp_path: Path,
    box: MemoryOutbox,
    cloud: Cloud,
    sleeps: list[float],
    *,
    max_chunks: int = 64,
    retry_max_delay: float = 4.0,
    on_conflict: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[Uplink, httpx.AsyncClient]:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    source = Tokens()
    settings = UplinkSettings(
        ingest_url="http://cloud.test/v1/ingest", gateway_id="17", max_batch_bytes=1 << 20,
        max_batches_per_s=0, connect_timeout=1.0, read_timeout=1.0,
        retry_max_delay=retry_max_delay,
        max_chunks=max_chunks,
    )  # fmt: skip
    identity = UplinkIdentity(gateway_id="17", token=source.token, renew=source.renew)
    client = httpx.AsyncClient(transport=httpx.MockTransport(cloud))
    link = Uplink(settings=settings, outbox=box, identity=identity,
                  seq_state=SeqState.load(tmp_path / "seq.json"), client=client,
                  sleep=sleep, on_conflict=on_conflict)  # fmt: skip
    return link, client


async def test_413_for_many_chunks_releases_them_and_halves_the_batch(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 8)
    cloud = Cloud(httpx.Response(413, json={"error": {"code": "payload_too_large"}}))
    link, client = uplink(tmp_path, box, cloud, sleeps, max_chunks=8)
    async with client:
        assert await link.send_once(client)
        assert (len(box.acked), len(box.waiting()), box.quarantined) == (0, 8, [])
        assert await link.send_once(client)  # half as many chunks: 4 of 3 readings
        assert len(cloud.batch_readings(1)) == 12
        assert len(box.acked) == 4
        assert await link.send_once(client)  # after a success the batch grows again
        assert len(cloud.batch_readings(2)) == 12  # the 4 chunks left
    assert box.waiting() == []
    assert sleeps == []


async def test_413_or_422_for_one_chunk_quarantines_it_and_the_queue_moves_on(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 2)
    error = {"code": "invalid_batch", "message": "series[0].ts: bad"}
    cloud = Cloud(httpx.Response(422, json={"error": error}))
    link, client = uplink(tmp_path, box, cloud, sleeps, max_chunks=1)
    async with client:
        await link.send_once(client)
        await link.send_once(client)
    ((chunk, reason),) = box.quarantined
    assert reason == "HTTP 422: invalid_batch: series[0].ts: bad"
    assert link.status.quarantined_chunks == 1
    assert [c.id for c in box.acked] != [chunk.id]
    assert len(box.acked) == 1


async def test_one_chunk_over_the_new_series_limit_is_kept_and_retried_not_quarantined(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 1)
    error = {"code": "too_many_new_series", "message": "at most 1000 per batch"}
    cloud = Cloud(httpx.Response(413, json={"error": error}),
                  httpx.Response(413, json={"error": error}))  # fmt: skip
    link, client = uplink(tmp_path, box, cloud, sleeps, max_chunks=1)
    async with client:
        assert await link.send_once(client)
    assert box.quarantined == []
    assert len(box.acked) == 1  # the third try, after the operator raised the limit
    assert sleeps == [30.0, 30.0]
    assert len({r.content for r in cloud.requests}) == 1


async def test_409_seq_conflict_quarantines_the_batch_with_its_reason_and_raises_an_alarm(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 2)
    error = {"code": "seq_conflict", "message": "seq 5 was stored with other content"}
    cloud = Cloud(httpx.Response(409, json={"error": error}))
    alarms: list[str] = []

    async def alarm(reason: str) -> None:
        alarms.append(reason)

    link, client = uplink(tmp_path, box, cloud, sleeps, max_chunks=1, on_conflict=alarm)
    async with client:
        await link.send_once(client)
        await link.send_once(client)
    ((_, reason),) = box.quarantined
    assert reason == "HTTP 409: seq_conflict: seq 5 was stored with other content"
    assert link.status.seq_conflicts == 1
    assert len(alarms) == 1
    assert reason in alarms[0]
    assert sleeps == []  # not retried: the same seq would conflict forever
    assert len(box.acked) == 1


async def test_drops_are_reported_as_totals_a_replay_cannot_double(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    box.dropped[Lane.TELEMETRY] = 120
    fill(box, 2)
    cloud = Cloud()
    link, client = uplink(tmp_path, box, cloud, sleeps, max_chunks=1)
    async with client:
        await link.send_once(client)
        # Killed before anything else was saved: the next life reports the same totals.
        box.dropped[Lane.TELEMETRY] += 5
        again, _ = uplink(tmp_path / "next-life", box, cloud, sleeps, max_chunks=1)
        await again.send_once(client)
    totals = [cloud.batch(i).dropped_totals for i in range(2)]
    assert [t.life if t else None for t in totals] == ["memory-1", "memory-1"]
    assert [dict(t.lanes) if t else None for t in totals] == [
        {"telemetry": 120},
        {"telemetry": 125},
    ]
    assert [cloud.batch(i).dropped for i in range(2)] == [{}, {}]


async def test_while_the_outbox_drops_readings_the_cloud_is_retried_sooner(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 1)
    calm = Cloud(*[httpx.Response(503)] * 12)
    link, client = uplink(tmp_path, box, calm, sleeps, retry_max_delay=30.0)
    async with client:
        await link.send_once(client)
    assert max(sleeps) > 2.0  # backing off towards the 30 s cap

    sleeps.clear()
    box = MemoryOutbox()
    fill(box, 1)

    def dropping(request: httpx.Request) -> httpx.Response:
        box.dropped[Lane.TELEMETRY] += 10  # the quota policy drops while the cloud is away
        return httpx.Response(503)

    pressed = Cloud(*[httpx.Response(503)] * 12)
    pressed.before = dropping
    link, client = uplink(tmp_path / "b", box, pressed, sleeps, retry_max_delay=30.0)
    async with client:
        await link.send_once(client)
    assert len(sleeps) == 12
    assert max(sleeps) <= 2.0


async def test_401_renews_the_token_and_retries_at_once(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 1)
    cloud = Cloud(httpx.Response(401, json={"error": {"code": "token_expired"}}))
    link, client = uplink(tmp_path, box, cloud, sleeps)
    async with client:
        assert await link.send_once(client)
    assert cloud.tokens() == ["token-1", "token-2"]
    assert cloud.requests[0].content == cloud.requests[1].content  # the same batch, same seq
    assert sleeps == []  # no backoff for a renewed token
    assert (link.status.token_renewals, link.status.retries, len(box.acked)) == (1, 0, 1)


async def test_a_401_that_renewal_does_not_cure_backs_off_then_retries(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 1)
    refused = httpx.Response(401, json={"error": {"code": "gateway_revoked"}})
    cloud = Cloud(refused, refused, refused)
    link, client = uplink(tmp_path, box, cloud, sleeps)
    async with client:
        assert await link.send_once(client)
    assert cloud.tokens() == ["token-1", "token-2", "token-2", "token-3"]
    (slept,) = sleeps
    assert 0 <= slept <= 4.0  # capped by retry_max_delay
    assert link.status.retries == 1
    assert link.status.last_error == "HTTP 401: gateway_revoked: "


async def test_429_waits_for_retry_after_and_posts_the_same_bytes(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 2)
    cloud = Cloud(httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(503))
    link, client = uplink(tmp_path, box, cloud, sleeps)
    async with client:
        assert await link.send_once(client)
    assert sleeps[0] == 7.0
    assert 0 <= sleeps[1] <= 4.0  # no Retry-After: the jittered backoff
    assert len({r.content for r in cloud.requests}) == 1
    assert (link.status.retries, len(box.acked)) == (2, 2)


async def test_live_data_interleaves_with_a_draining_backlog(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 10, per_chunk=1)  # the backlog: readings 0..9
    cloud = Cloud()
    link, client = uplink(tmp_path, box, cloud, sleeps, max_chunks=2)
    async with client:
        for i in range(6):
            fill(box, 1, per_chunk=1, first=100 + i)  # one live reading arrives per batch
            await link.send_once(client)
    batches = [cloud.batch_readings(i) for i in range(6)]
    # Oldest-first and newest-first batches alternate: the backlog drains in order while every
    # live reading goes out within two batches of arriving.
    assert batches[0::2] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    sent = [v for b in batches for v in b]
    for i in range(6):
        arrived = 100.0 + i
        assert arrived in batches[i] or arrived in batches[min(i + 1, 5)], (arrived, batches)
    assert len(sent) == len(set(sent))


async def test_the_send_rate_is_readings_acknowledged_over_the_last_minute(
    tmp_path: Path, sleeps: list[float]
) -> None:
    box = MemoryOutbox()
    fill(box, 3, per_chunk=4)
    link, client = uplink(tmp_path, box, Cloud(), sleeps, max_chunks=1)
    async with client:
        for _ in range(3):
            await link.send_once(client)
    now = time.monotonic()
    assert link.send_rate(now + 30) == pytest.approx(12 / 30, rel=0.05)  # young: since start
    assert link.send_rate(now + 59) == pytest.approx(12 / 60, rel=0.05)
    assert link.send_rate(now + 61) == 0.0  # those acks are more than a minute old
