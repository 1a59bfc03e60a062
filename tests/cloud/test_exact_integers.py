"""64-bit integers are stored and answered exactly, on every backend, whichever batch format the
gateway posts; aggregates over them are floats, as for any number."""

from __future__ import annotations

from typing import Any

import pytest

from cloud.contract import (
    CHUNKS,
    JSON,
    Batch,
    LeasedChunk,
    SeriesColumns,
    encode_batch,
    encode_chunk_batch,
)
from cloud.contract import chunk as codec
from tests.cloud.conftest import Cloud, now_us

COUNTER = [1152939101356429315, 2**63 - 1, -(2**63), 2**53 + 1]  # an int64 register
ENERGY = [2**64 - 1, 2**63, 2**53 + 1]  # a uint64 register


def _body(gateway_id: int, seq: int, kind: str, start: int) -> tuple[bytes, str]:
    counter_ts = [start + i * 1_000_000 for i in range(len(COUNTER))]
    energy_ts = [start + i * 1_000_000 for i in range(len(ENERGY))]
    if kind == "chunks":
        rows = [("plc", "counter", ts, v, "good", None, False, None)
                for ts, v in zip(counter_ts, COUNTER, strict=True)]  # fmt: skip
        rows += [("plc", "energy_wh", ts, v, "good", "Wh", False, None)
                 for ts, v in zip(energy_ts, ENERGY, strict=True)]  # fmt: skip
        rows.append(("plc", "flow", start, 1.5, "good", None, False, None))
        chunk = LeasedChunk("telemetry", len(rows), codec.encode(rows))
        body = encode_chunk_batch(gateway_id=str(gateway_id), seq=seq, created_at=start,
                                  dropped={}, chunks=[chunk])  # fmt: skip
        return body, CHUNKS
    batch = Batch(str(gateway_id), seq, start, [
        SeriesColumns("plc", "counter", counter_ts, COUNTER),
        SeriesColumns("plc", "energy_wh", energy_ts, ENERGY, unit="Wh"),
        SeriesColumns("plc", "flow", [start], [1.5]),
    ])  # fmt: skip
    return encode_batch(batch, content_type=JSON, content_encoding="identity"), JSON


async def _series(cloud: Cloud, token: str) -> dict[str, dict[str, Any]]:
    return {s["tag"]: s for s in (await cloud.get(token, "/v1/series")).json()}


@pytest.mark.parametrize("kind", ["chunks", "json"])
async def test_64_bit_integers_are_stored_and_answered_exactly(cloud: Cloud, kind: str) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    start = now_us() - 60_000_000
    body, content_type = _body(gw[0], 1, kind, start)
    r = await cloud.post(gw[1], body, content_type=content_type, content_encoding="identity")
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == len(COUNTER) + len(ENERGY) + 1

    series = await _series(cloud, tenant.admin)
    for tag, expected in (("counter", COUNTER), ("energy_wh", ENERGY)):
        page = await cloud.get(tenant.admin, f"/v1/series/{series[tag]['id']}/raw", start=0,
                               end=now_us() + 10**9, limit=100)  # fmt: skip
        assert page.status_code == 200, page.text
        assert [p["value"] for p in page.json()["points"]] == expected
    devices = (await cloud.get(tenant.admin, "/v1/devices")).json()
    latest = (await cloud.get(tenant.admin, f"/v1/devices/{devices[0]['id']}/latest")).json()
    by_tag = {v["tag"]: v["value"] for v in latest}
    assert by_tag == {"counter": COUNTER[-1], "energy_wh": ENERGY[-1], "flow": 1.5}
    buckets = await cloud.get(tenant.admin, f"/v1/series/{series['energy_wh']['id']}/aggregate",
                              start=start - start % 60_000_000, end=now_us() + 10**9,
                              bucket="1h")  # fmt: skip
    assert buckets.status_code == 200, buckets.text
    assert sum(b["count"] for b in buckets.json()) == len(ENERGY)
