"""A hostile caller or a broken device gets a 4xx with a stable code, never a 5xx, never a
body read that it had no right to send (issue 15, cases 1, 3, 5, 6 and 8), on both backends."""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import zstandard

from cloud.contract import (
    JSON,
    MSGPACK,
    InvalidBatch,
    PayloadTooLarge,
    decode_batch,
    encode_batch,
)
from tests.cloud.conftest import PLATFORM_KEY, Cloud, make_batch, now_us

pytestmark = pytest.mark.integration


class Endless:
    """A request body that never ends, counting what the service pulled from it."""

    def __init__(self, chunk: bytes = b" " * 65_536) -> None:
        self.chunk = chunk
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(4096):  # 256 MiB if nobody stopped reading
            self.sent += len(self.chunk)
            yield self.chunk


def _error(r: Any) -> tuple[int, str, Any]:
    error = r.json()["error"]
    return r.status_code, error["code"], error["details"]


def _bomb_body(elements: int) -> bytes:
    """A small zstd body that expands to a batch whose one column holds `elements` zeros."""
    head = msgpack.packb({"version": 1, "gateway_id": "1", "seq": 1, "created_at": 1})
    head = bytes([head[0] + 1]) + head[1:]  # one more key: "series"
    head += msgpack.packb("series") + b"\x91\x81" + msgpack.packb("ts")
    head += b"\xdd" + elements.to_bytes(4, "big")
    compressor = zstandard.ZstdCompressor(level=19).compressobj()
    body = compressor.compress(head)
    for _ in range(elements // (1 << 20)):
        body += compressor.compress(b"\x00" * (1 << 20))
    return body + compressor.flush()


def test_a_decompression_bomb_is_refused_without_being_built() -> None:
    body = _bomb_body(64 * 1024 * 1024)
    assert len(body) < 4096  # 2 KiB that expand to 64 MiB of msgpack, 67M elements
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as caught:
            decode_batch(body, content_type=MSGPACK, content_encoding="zstd")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.details["path"] == ["series", 0, "ts"]
    assert peak < 4 * 1024 * 1024  # neither the 64 MiB nor the elements were built


def test_a_list_where_a_number_belongs_is_refused_at_its_header() -> None:
    # 1,000 nested lists of 65,535 zeros each: 65M elements if it were built
    batch = msgpack.packb({"version": 1, "gateway_id": "1", "seq": 1, "created_at": 1})
    deep = b"".join(b"\xdc\xff\xff" + b"\x00" * 60_000 for _ in range(1000))
    body = bytes([batch[0] + 1]) + batch[1:] + msgpack.packb("series") + b"\x91\x81"
    body += msgpack.packb("ts") + b"\x91" + deep
    body = zstandard.ZstdCompressor().compress(body)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidBatch) as caught:
            decode_batch(body, content_type=MSGPACK, content_encoding="zstd")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.details["path"] == ["series", 0, "ts"]
    assert peak < 4 * 1024 * 1024


async def test_a_bomb_posted_to_ingest_is_a_413_and_stores_nothing(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    r = await cloud.post(gw[1], _bomb_body(64 * 1024 * 1024))
    assert _error(r)[:2] == (413, "payload_too_large")
    assert (await cloud.send(gw, make_batch(gw[0], 1))).status_code == 200


async def test_bodies_are_not_read_before_credentials_and_role_are_checked(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    viewer = await cloud.key(tenant, "viewer")
    # no credentials needed, but a small limit: cut off soon after 32 KiB
    csr = Endless(b"A" * 65_536)
    r = await cloud.client.post(
        "/v1/provision", content=csr, headers={"Content-Type": JSON}, timeout=30
    )
    assert _error(r)[:2] == (413, "payload_too_large")
    assert csr.sent <= 2 * 65_536
    # a viewer's PATCH to an admin's operation: refused unread
    patch = Endless()
    r = await cloud.client.patch(
        f"/v1/gateways/{gw[0]}", content=patch, headers=cloud.auth(viewer) | {"Content-Type": JSON}
    )
    assert _error(r)[:2] == (403, "forbidden")
    assert patch.sent == 0
    # no credentials at all
    anonymous = Endless()
    r = await cloud.client.post("/v1/api-keys", content=anonymous, headers={"Content-Type": JSON})
    assert _error(r)[:2] == (401, "unauthenticated")
    assert anonymous.sent == 0
    # the certificate rotation verifies its token itself, but needs one before any body
    rotation = Endless()
    r = await cloud.client.post(f"/v1/gateways/{gw[0]}/certificate", content=rotation)
    assert _error(r)[:2] == (401, "unauthenticated")
    assert rotation.sent == 0
    # an admin's JSON body is limited too (256 KiB by default)
    big = {"name": "x", "role": "viewer", "pad": "y" * 300_000}
    r = await cloud.client.post("/v1/api-keys", json=big, headers=cloud.auth(tenant.admin))
    assert _error(r)[:2] == (413, "payload_too_large")


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _jws(header: dict[str, Any] | str) -> str:
    text = header if isinstance(header, str) else json.dumps(header)
    part = base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
    return f"{part}.e30.AAAA"


async def test_malformed_batches_are_422_with_their_path(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    good = json.loads(encode_batch(make_batch(gw[0], 1), content_type=JSON,
                                   content_encoding="identity"))  # fmt: skip
    alarm = {"device": "p1", "name": "hot", "ts": now_us(), "severity": 2**40}
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        ({"series": [good["series"][0] | {"ts": [1, [2, 3], *good["series"][0]["ts"][2:]]}]},
         ["series", 0, "ts", 1]),
        ({"series": [good["series"][0] | {"device": "pump\ud800"}]}, ["series", 0, "device"]),
        ({"series": [good["series"][0] | {"tag": "a\x00b"}]}, ["series", 0, "tag"]),
        ({"alarms": [alarm]}, ["alarms", 0, "severity"]),
        ({"dropped": {"telemetry": 2**63 - 1}}, ["dropped", "telemetry"]),
        ({"series": [{"device": "p", "tag": "t", "ts": [[1]], "values": [[1.0]]}]},
         ["series", 0, "ts", 0]),
    ]  # fmt: skip
    for i, (change, path) in enumerate(cases):
        body = json.dumps(good | change | {"seq": 100 + i}).encode()
        r = await cloud.post(gw[1], body, content_type=JSON, content_encoding="identity")
        status, code, details = _error(r)
        assert (status, code, details["path"]) == (422, "invalid_batch", path), change
    # the same, in msgpack: a lone surrogate cannot even be encoded as UTF-8
    packed = msgpack.packb(good | {"series": [good["series"][0] | {"tag": b"\xed\xa0\x80"}]})
    r = await cloud.post(gw[1], packed, content_encoding="identity")
    assert _error(r)[:2] == (422, "invalid_batch")
    usage = (await cloud.get(tenant.admin, "/v1/usage")).json()["days"]
    assert usage == [] or sum(day["batches"] for day in usage) == 0
    # a drop report still counts afterwards (the huge one poisoned nothing)
    r = await cloud.send(gw, make_batch(gw[0], 1, dropped={"telemetry": 5}))
    assert r.status_code == 200


async def test_malformed_parameters_and_tokens_are_4xx(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    assert (await cloud.send(gw, make_batch(gw[0], 1))).status_code == 200
    series = (await cloud.get(tenant.admin, "/v1/series")).json()[0]["id"]
    r = await cloud.client.get("/v1/alarms?device=a%00b", headers=cloud.auth(tenant.admin))
    assert _error(r) == (422, "invalid_request", {"path": ["query", "device"]})
    huge = 2**64
    for path in (f"/v1/gateways/{huge}/certificates", f"/v1/devices/{huge}"):
        assert (await cloud.get(tenant.admin, path)).status_code == 422
    r = await cloud.client.delete(f"/v1/claim-tokens/{huge}", headers=cloud.auth(tenant.admin))
    assert r.status_code == 422
    cursor = base64.urlsafe_b64encode(str(huge).encode()).decode().rstrip("=")
    r = await cloud.get(tenant.admin, f"/v1/series/{series}/raw", cursor=cursor)
    assert _error(r)[:2] == (422, "invalid_request")
    # gateway tokens: a header 1,500 levels deep, NUL in the certificate thumbprint
    deep = '{"alg":"ES256","x5t#S256":' + '{"a":' * 1500 + "1" + "}" * 1500 + "}"
    nul = {"alg": "ES256", "typ": "JWT", "x5t#S256": "A" * 42 + "\x00"}
    for token in (_jws(deep), _jws(nul)):
        r = await cloud.post(token, encode_batch(make_batch(gw[0], 2)))
        assert _error(r) == (401, "gateway_token_refused", {"reason": "malformed"})


async def test_conflicts_are_409_in_our_words_and_nothing_is_committed(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    first = await cloud.gateway(tenant, "line-1")
    await cloud.gateway(tenant, "line-2")
    r = await cloud.client.patch(
        f"/v1/gateways/{first[0]}", json={"name": "line-2"}, headers=cloud.auth(tenant.admin)
    )
    status, code, _ = _error(r)
    assert (status, code) == (409, "conflict")
    assert "line-2" in r.json()["error"]["message"]
    assert "constraint" not in r.json()["error"]["message"]
    # a claim token whose settings nest 260 levels: refused, not stored, the list still works
    r = await cloud.client.post(
        "/v1/claim-tokens", json={"device_settings": _deep(260)}, headers=cloud.auth(tenant.admin)
    )
    assert _error(r)[:2] == (422, "invalid_batch") or _error(r)[:2] == (422, "invalid_request")
    r = await cloud.get(tenant.admin, "/v1/claim-tokens")
    assert (r.status_code, r.json()) == (200, [])
    # NaN and NUL in JSON bodies of other operations
    for body in ('{"name": "x\\u0000", "role": "viewer"}', '{"display_name": NaN}'):
        r = await cloud.client.post(
            "/v1/api-keys", content=body,
            headers=cloud.auth(tenant.admin) | {"Content-Type": JSON},
        )  # fmt: skip
        assert _error(r)[0] == 422


async def test_revocation_is_final(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    gw = await cloud.gateway(tenant)
    assert (await cloud.send(gw, make_batch(gw[0], 1))).status_code == 200
    admin = cloud.auth(tenant.admin)
    assert (await cloud.client.post(f"/v1/gateways/{gw[0]}/revoke", headers=admin)).is_success
    r = await cloud.client.post(f"/v1/gateways/{gw[0]}/token", headers=admin)
    assert _error(r)[:2] == (409, "gateway_revoked")
    gateway = (await cloud.get(tenant.admin, f"/v1/gateways/{gw[0]}")).json()
    assert gateway["revoked_at"] is not None
    assert (await cloud.send(gw, make_batch(gw[0], 2))).status_code == 401


async def test_metrics_labels_do_not_grow_with_request_input(cloud: Cloud) -> None:
    for i in range(60):
        await cloud.client.request(f"X{i}METHOD", f"/v1/random/{i}")
    text = (await cloud.client.get("/metrics")).text
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("tagway_cloud_http_requests_total{")
    }
    assert methods <= {"GET", "POST", "other"}
    routes = {
        line.split('route="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("tagway_cloud_http_requests_total{")
    }
    assert len(routes) <= 3


async def test_platform_operations_refuse_others_before_the_body(cloud: Cloud) -> None:
    tenant = await cloud.tenant("acme")
    body = Endless()
    r = await cloud.client.post(
        "/v1/tenants", content=body, headers=cloud.auth(tenant.admin) | {"Content-Type": JSON}
    )
    assert _error(r)[:2] == (403, "forbidden")
    assert body.sent == 0
    r = await cloud.get(PLATFORM_KEY, "/v1/tenants")
    assert r.status_code == 200


async def test_integers_in_bodies_are_json_integers_not_booleans_or_text(cloud: Cloud) -> None:
    platform = cloud.auth(PLATFORM_KEY)
    for i, value in enumerate([True, "5", 5.5]):
        body = {"name": f"t{i}", "ingest_quota_per_day": value}
        r = await cloud.client.post("/v1/tenants", headers=platform, json=body)
        assert r.status_code == 422, (value, r.text)
        assert r.json()["error"]["details"]["path"] == ["body", "ingest_quota_per_day"]
    # 5.0 is an integer to JSON Schema (a number without a fraction): accepted as 5
    r = await cloud.client.post("/v1/tenants", headers=platform,
                                json={"name": "t9", "ingest_quota_per_day": 5.0})  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["ingest_quota_per_day"] == 5
    tenant = await cloud.tenant("acme")
    r = await cloud.client.post("/v1/claim-tokens", headers=cloud.auth(tenant.admin),
                                json={"max_uses": True})  # fmt: skip
    assert r.status_code == 422, r.text
