"""Each chunk of a batch has a decode budget of its own (issue 15): a few KiB of zstd cannot make
a decode thread inflate the whole 64 MiB batch budget before the 413. The budget follows the
chunk's compressed size and the readings it declares (`chunk_budget`), under an absolute cap;
every chunk a gateway writes stays well inside it."""

from __future__ import annotations

import random
import time
import tracemalloc

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.contract import (
    CHUNKS,
    MAX_ASSET_DEVICES,
    AssetPaths,
    ChunkTooExpansive,
    ContractError,
    LeasedChunk,
    Limits,
    decode_batch,
    encode_chunk_batch,
)
from cloud.contract.chunk import encode
from cloud.contract.chunked import chunk_budget, largest_event_bytes
from edge.runtime import event_emitter
from protocols.reading import Quality, Reading
from store_forward import Lane
from tests.cloud.conftest import Cloud, make_batch

T0 = 1_700_000_000_000_000
MIB = 1024 * 1024


def bomb(expands_to: int, *, pad_to: int = 0) -> bytes:
    """A zstd frame of `expands_to` zero bytes, padded with a skippable frame to `pad_to`."""
    compressor = zstandard.ZstdCompressor(level=19)
    frame = compressor.compress(b"\x00" * expands_to)
    if len(frame) + 8 < pad_to:  # a skippable frame: magic, size, bytes every decoder skips
        filler = pad_to - len(frame) - 8
        frame += b"\x50\x2a\x4d\x18" + filler.to_bytes(4, "little") + b"\x00" * filler
    return frame


def batch_of(*chunks: LeasedChunk) -> bytes:
    return encode_chunk_batch(gateway_id="7", seq=1, created_at=T0, dropped={},
                              chunks=list(chunks))  # fmt: skip


def test_an_8_kib_chunk_stops_at_its_own_budget_not_the_batch_s() -> None:
    data = bomb(64 * MIB, pad_to=8192)
    assert len(data) == 8192
    limits = Limits()
    own = chunk_budget(len(data), 1, limits)
    assert own == 4096 + 64 * 8192  # 516 KiB: the ratio term, this chunk declaring one reading
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ChunkTooExpansive) as caught:
            decode_batch(batch_of(LeasedChunk("telemetry", 1, data)), content_type=CHUNKS)
        spent = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413
    assert caught.value.code == "chunk_too_expansive"
    assert caught.value.details == {"limit": own, "path": ["chunks", 0]}
    assert peak < 4 * own  # nowhere near the 64 MiB it would expand to
    assert spent < 0.2  # (the whole 64 MiB took ~0.4 s on a decode thread)


def test_a_record_chunk_bomb_stops_at_its_budget_too() -> None:
    data = bomb(64 * MIB)
    body = batch_of(LeasedChunk("event", 2, data))
    with pytest.raises(ChunkTooExpansive) as caught:
        decode_batch(body, content_type=CHUNKS)
    assert caught.value.details["limit"] == chunk_budget(len(data), 2, Limits(), lane="event")


def test_declaring_every_reading_of_the_batch_buys_at_most_the_absolute_cap() -> None:
    data = bomb(64 * MIB)
    limits = Limits()
    assert chunk_budget(len(data), 10**12, limits) == limits.max_chunk_decompressed_bytes
    with pytest.raises(ChunkTooExpansive) as caught:
        decode_batch(batch_of(LeasedChunk("telemetry", 100_000, data)), content_type=CHUNKS)
    assert caught.value.details["limit"] == 16 * MIB


def test_a_declared_count_that_is_not_a_count_is_refused() -> None:
    good = encode([Reading("p", "t", T0, 1.0)])
    for declared in (-1, "5", 1.5):
        body = batch_of(LeasedChunk("telemetry", declared, good))  # type: ignore[arg-type]
        with pytest.raises(ContractError) as caught:
            decode_batch(body, content_type=CHUNKS)
        assert caught.value.status == 422
        assert caught.value.details["path"] == ["chunks", 0, "readings"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    expands_to=st.integers(min_value=1 * MIB, max_value=64 * MIB),
    declared=st.integers(min_value=0, max_value=200_000),
    lane=st.sampled_from(["telemetry", "alarm", "event"]),
)
def test_no_bomb_inflates_past_its_chunk_s_budget(
    expands_to: int, declared: int, lane: str
) -> None:
    data = bomb(expands_to)
    limits = Limits()
    own = chunk_budget(len(data), declared, limits, lane=lane)
    assert own <= limits.max_chunk_decompressed_bytes
    body = batch_of(LeasedChunk(lane, declared, data))
    with pytest.raises(ContractError) as caught:  # a 4xx, never a 5xx or a decoded batch
        decode_batch(body, content_type=CHUNKS, limits=limits)
    if own < expands_to:  # stopped at its own budget, before the rest was inflated
        assert isinstance(caught.value, ChunkTooExpansive)
        assert caught.value.details["limit"] == own
    else:  # small enough to inflate: then it is judged for what it is (zeros: not msgpack)
        assert caught.value.status == 422


def _gateway_chunks() -> list[list[Reading]]:
    """Flushes the agent writes, and the awkward shapes the budget must still admit."""
    rng = random.Random(3)
    plant = [Reading(f"pump{i % 3}", f"tag{i % 40}", T0 + i * 1000, rng.gauss(50, 2),
                     simulated=True, unit="m3/h") for i in range(5000)]  # fmt: skip
    constant = [Reading("pump1", "flow", T0 + i * 1000, 1.0) for i in range(5000)]
    long_names = [Reading(f"dev{i:040d}", f"tag{i:0150d}", T0, 1.0) for i in range(5000)]
    texts = [Reading("pump1", "msg", T0 + i, "".join(rng.choices("abcdefgh", k=4096)))
             for i in range(200)]  # fmt: skip
    short_texts = [Reading("pump1", "state", T0 + i, "running" * 100) for i in range(5000)]
    bad = [Reading("pump1", "flow", T0 + i, 0.0, Quality.BAD) for i in range(5000)]
    return [plant, constant, long_names, texts, short_texts, bad, plant[:1]]


@pytest.mark.parametrize("flush", _gateway_chunks(),
                         ids=["plant", "constant", "long_names", "random_texts", "texts_700",
                              "bad", "one"])  # fmt: skip
def test_every_chunk_a_gateway_writes_fits_its_budget(flush: list[Reading]) -> None:
    data = encode(flush)
    batch = decode_batch(batch_of(LeasedChunk("telemetry", len(flush), data)), content_type=CHUNKS)
    assert sum(len(s) for s in batch.series) == len(flush)


@pytest.mark.integration
async def test_the_api_answers_413_chunk_too_expansive_with_the_chunk_s_path(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    _, token = await cloud.gateway(tenant)
    gateway_id = tenant.gateways["gw1"][0]
    data = bomb(64 * MIB, pad_to=8192)
    body = encode_chunk_batch(gateway_id=str(gateway_id), seq=1, created_at=T0, dropped={},
                              chunks=[LeasedChunk("telemetry", 3, data)])  # fmt: skip
    r = await cloud.post(token, body, content_type=CHUNKS, content_encoding="identity")
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "chunk_too_expansive"
    assert error["details"]["path"] == ["chunks", 0]


def _asset_paths(devices: int = MAX_ASSET_DEVICES) -> AssetPaths:
    """The largest `asset_paths` event an agent writes: every device a 200-character name and a
    path of about 1,000 characters (five levels of up to 200)."""
    pad = "x" * 200

    def level(text: str) -> str:
        return (text + pad)[:200]

    paths = {level(f"filler-{i:05d}-"): "/".join([
        level("acme-"), level("plant-a-"), level(f"area-{i % 7}-"), level(f"line-{i % 40}-"),
        level(f"cell-{i}-")]) for i in range(devices)}  # fmt: skip
    return AssetPaths(type="asset_paths", seq=1, at=T0, devices=paths)


async def _edge_chunk(event: AssetPaths) -> LeasedChunk:
    """The chunk the agent's own event emitter appends to its outbox for `event`."""
    appended: list[LeasedChunk] = []

    class Outbox:
        async def append(self, data: bytes, *, count: int, lane: Lane) -> None:
            appended.append(LeasedChunk(lane.value, count, data))

    await event_emitter(Outbox(), None)([event])  # type: ignore[arg-type]
    (leased,) = appended
    return leased


async def test_the_agent_s_largest_asset_paths_event_fits_its_budget() -> None:
    event = _asset_paths()
    leased = await _edge_chunk(event)
    assert (leased.lane, leased.readings) == ("event", 1)
    raw = len(zstandard.ZstdDecompressor().decompress(leased.data))
    assert raw > 5_000_000  # far past 64 times its compressed size
    assert raw > Limits().max_chunk_ratio * len(leased.data) + 65_536
    batch = decode_batch(batch_of(leased), content_type=CHUNKS)
    assert batch.events == (event,)
    # a bomb as small on the wire, but larger than any event, is still stopped at its budget
    data = bomb(64 * MIB, pad_to=len(leased.data))
    with pytest.raises(ChunkTooExpansive) as caught:
        decode_batch(batch_of(LeasedChunk("event", 1, data)), content_type=CHUNKS)
    assert caught.value.details["limit"] == Limits().max_chunk_decompressed_bytes
    # an alarm chunk's records stay small: its budget does not grow with the events'
    assert chunk_budget(len(data), 1, Limits(), lane="alarm") == 4096 + 64 * len(data)


def test_the_event_budget_covers_the_contract_s_largest_events() -> None:
    largest = largest_event_bytes()
    assert largest >= 5_000 * 4 * (200 + 1_100)  # asset paths in 4-byte UTF-8
    assert largest >= 5_000 * 4 * (200 + 200 + 4_096)  # a status report's drivers
    assert chunk_budget(100, 1, Limits(), lane="event") == Limits().max_chunk_decompressed_bytes


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_api_places_the_devices_of_the_largest_asset_paths_event(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    _, token = await cloud.gateway(tenant)
    gateway_id = tenant.gateways["gw1"][0]
    event = _asset_paths()
    body = encode_chunk_batch(gateway_id=str(gateway_id), seq=1, created_at=T0, dropped={},
                              chunks=[await _edge_chunk(event)])  # fmt: skip
    r = await cloud.post(token, body, content_type=CHUNKS, content_encoding="identity")
    assert r.status_code == 200, r.text
    last = max(event.devices)
    r = await cloud.send((gateway_id, token), make_batch(gateway_id, 2, devices=(last,), n=1))
    assert r.status_code == 200, r.text
    devices = {d["name"]: d for d in (await cloud.get(tenant.admin, "/v1/devices")).json()}
    assert devices[last]["asset_path"] == event.devices[last].split("/", 1)[1]
