"""`tagway provision` and `tagway cloud ...` as an installer and an admin use them: the CLI in a
subprocess against the cloud served by uvicorn on a port-0 socket, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cli.provision_cmds import set_cloud_url, update_cloud_section
from cli.starter import STARTER
from cloud.api.app import create_app
from cloud.settings import CloudSettings
from edge.config import load_config
from edge.gateway_token import TokenMinter
from edge.identity import IdentityStore
from tests.cli.test_cli import tagway
from tests.cloud.conftest import PLATFORM_KEY, Cloud, Tenant
from tests.provisioning.cloud_support import (
    claim_token,
    ingest,
    provision,
    provisioning_settings,
    run_sql,
)

pytestmark = pytest.mark.integration


@dataclass
class Served:
    """The cloud on a real socket, the bodies it received, and a client acting as its users."""

    url: str
    cloud: Cloud
    bodies: list[bytes] = field(default_factory=list)


def _recording(app: Any, bodies: list[bytes]) -> Any:
    """The app, recording every request body it receives (what left the gateway)."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        async def recorded() -> Any:
            message = await receive()
            if message.get("type") == "http.request":
                bodies.append(message.get("body", b""))
            return message

        await app(scope, recorded if scope["type"] == "http" else receive, send)

    return asgi


@asynccontextmanager
async def serve(
    make_settings: Callable[..., CloudSettings], tmp_path: Path
) -> AsyncIterator[Served]:
    """The cloud app on a port-0 socket, served by uvicorn in this event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    bodies: list[bytes] = []
    app = create_app(make_settings(**provisioning_settings(tmp_path, public_url=url)))
    config = uvicorn.Config(_recording(app, bodies), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="cloud-under-test")
    try:
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield Served(url, Cloud(client), bodies)
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def served(settings_for: Any, tmp_path: Path) -> AsyncIterator[Served]:
    """The cloud on the backend under test."""
    async with serve(settings_for, tmp_path) as running:
        yield running


@pytest.fixture
async def served_sqlite(tmp_path: Path) -> AsyncIterator[Served]:
    """The cloud on SQLite only (for CLI behaviour that does not depend on the backend)."""

    def make(**overrides: Any) -> CloudSettings:
        return CloudSettings(
            database_url=f"sqlite:///{tmp_path / 'cloud.db'}", platform_admin_key=PLATFORM_KEY,
            **overrides,
        )  # fmt: skip

    async with serve(make, tmp_path) as running:
        yield running


def _gateway_dir(tmp_path: Path, name: str = "press-3") -> Path:
    """What `tagway init` writes (tested in test_cli.py), without paying for a subprocess."""
    directory = tmp_path / "gw"
    (directory / "state").mkdir(parents=True)
    config = directory / "config.yaml"
    config.write_text(STARTER.format(path=config, name=name, state_dir=directory / "state"))
    return config


async def test_provision_enrolls_the_gateway_and_its_tokens_are_accepted(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole flow, on both backends: tenant, admin key, claim token, `tagway provision`,
    ingest with the minted token, the data visible to the tenant."""
    caplog.set_level(logging.DEBUG)
    cloud = served.cloud
    tenant = await cloud.tenant("acme")
    token = await claim_token(cloud, tenant, site="plant-a", labels={"line": "3"})
    config = _gateway_dir(tmp_path)

    code, out, err = await tagway(
        "provision", "--cloud", served.url, "--claim-token", token, "--config", str(config)
    )
    assert (code, err) == (0, ""), out + err
    assert "enrolled as gateway" in out
    assert "site:        plant-a  labels: line=3" in out
    text = config.read_text()
    assert text.startswith("# tagway agent configuration")  # comments kept
    cfg = load_config(config)
    assert cfg.cloud is not None
    assert cfg.cloud.url == served.url
    store = IdentityStore(cfg.gateway.state_dir)
    identity = store.load()
    assert f"gateway {identity.gateway_id} (press-3)" in out
    keys = list(store.directory.glob("key-*.pem"))
    assert [stat.S_IMODE(k.stat().st_mode) for k in keys] == [0o600]

    # the gateway's minted token is accepted and the data is the tenant's
    r = await ingest(cloud, TokenMinter(identity).token(), int(identity.gateway_id))
    assert r.status_code == 200, r.text
    series = (await cloud.get(tenant.admin, "/v1/series")).json()
    assert {s["gateway_id"] for s in series} == {int(identity.gateway_id)}

    # the private key was not in anything the cloud received or logged
    secret_lines = [line for line in keys[0].read_bytes().splitlines() if b"-----" not in line]
    scalar = identity.private_key.private_numbers().private_value.to_bytes(32, "big")
    received = b"".join(served.bodies)
    assert b"BEGIN CERTIFICATE REQUEST" in received
    for secret in [*secret_lines, scalar]:
        assert secret not in received
        assert secret not in caplog.text.encode()
        assert secret not in (out + err).encode()


async def test_an_existing_identity_needs_force(served_sqlite: Served, tmp_path: Path) -> None:
    cloud, url = served_sqlite.cloud, served_sqlite.url
    tenant = await cloud.tenant("acme")
    config = _gateway_dir(tmp_path)
    code, out, err = await tagway(
        "provision", "--cloud", url, "--claim-token", await claim_token(cloud, tenant),
        "--config", str(config),
    )  # fmt: skip
    assert code == 0, out + err
    store = IdentityStore(load_config(config).gateway.state_dir)
    identity = store.load()
    served = served_sqlite
    token = await claim_token(cloud, tenant)
    code, out, err = await tagway(
        "provision", "--cloud", served.url, "--claim-token", token, "--config", str(config)
    )
    assert code == 1
    assert err.strip().splitlines() == [
        (
            f"tagway: error: this gateway is already provisioned as gateway "
            f"{identity.gateway_id} of {served.url} in {store.directory}; use --force to enroll "
            "it again"
        )
    ]
    again = await claim_token(cloud, tenant)
    code, out, err = await tagway(
        "provision", "--cloud", served.url, "--claim-token", again, "--config", str(config),
        "--name", "press-3b", "--force",
    )  # fmt: skip
    assert code == 0, out + err
    assert store.load().gateway_id != identity.gateway_id
    assert len(list(store.directory.glob("key-*.pem"))) == 1


async def test_provision_refusals_are_one_line(served_sqlite: Served, tmp_path: Path) -> None:
    cloud = served_sqlite.cloud
    url = served_sqlite.url
    tenant: Tenant = await cloud.tenant("acme")
    config = _gateway_dir(tmp_path)
    used = await claim_token(cloud, tenant, max_uses=1)
    assert (await provision(cloud, used)).status_code == 201
    expired = await claim_token(cloud, tenant)
    run_sql("sqlite", tmp_path, None, "UPDATE claim_tokens SET expires_at = 1 WHERE id = 2")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    cases = [
        ("twc_" + secrets.token_urlsafe(32), url, "the claim token is unknown or revoked"),
        (used, url, "the claim token has been used up"),
        (expired, url, "the claim token has expired"),
        ("hello", url, "not a claim token"),
        (await claim_token(cloud, tenant), nobody, f"cannot reach the cloud at {nobody}"),
    ]
    answers = await asyncio.gather(*(
        tagway("provision", "--cloud", where, "--claim-token", token, "--config", str(config))
        for token, where, _ in cases
    ))  # fmt: skip
    for (token, _, expected), (code, _, err) in zip(cases, answers, strict=True):
        assert code == 1, expected
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert expected in lines[0]
        if token.startswith("twc_"):
            assert token[4:] not in err  # the secret is not echoed
    assert not IdentityStore(load_config(config).gateway.state_dir).exists()


async def test_admin_commands_make_a_tenant_and_a_claim_token(
    served_sqlite: Served, tmp_path: Path
) -> None:
    served = served_sqlite
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    code, out, err = await tagway("cloud", "tenant", "create", "acme", "--database", database,
                                  "--json")  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    code, out, err = await tagway(
        "cloud", "claim-token", "create", "--cloud", served.url, "--api-key",
        created["admin_api_key"], "--expires", "2h", "--uses", "3", "--site", "plant-a", "--json",
    )  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    assert answer["token"].startswith("twc_")
    assert (answer["claim_token"]["max_uses"], answer["claim_token"]["site"]) == (3, "plant-a")
    code, out, err = await tagway("cloud", "api-key", "create", "--tenant",
                                  str(created["tenant_id"]), "--role", "viewer", "--database",
                                  database)  # fmt: skip
    assert code == 0, err
    viewer = out.strip().split()[-1]
    r = await served.cloud.client.post(
        "/v1/claim-tokens", json={}, headers=served.cloud.auth(viewer)
    )
    assert r.status_code == 403  # the key works, with the viewer's rights


def test_the_cloud_section_is_edited_as_text(tmp_path: Path) -> None:
    with_block = (
        "gateway:\n  name: gw  # the name\n\n"
        "cloud:   # where the data goes\n"
        "  url: http://old.example  # old\n"
        "  token_file: /etc/tagway/token\n"
        "  gateway_id: '7'\n"
        "  read_timeout: 10\n\n"
        "# devices below\n"
        "devices: []\n"
    )
    assert set_cloud_url(with_block, "https://new.example") == (
        "gateway:\n  name: gw  # the name\n\n"
        "cloud:   # where the data goes\n"
        "  url: https://new.example\n"
        "  read_timeout: 10\n\n"
        "# devices below\n"
        "devices: []\n"
    )
    without = "gateway:\n  name: gw\n"
    assert set_cloud_url(without, "https://c.example") == (
        "gateway:\n  name: gw\n\ncloud:\n  url: https://c.example\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text("gateway: {name: gw, state_dir: /tmp/s}\ncloud: {url: 'http://x', "
                      "token_file: /t, gateway_id: '1'}  # flow style\n")  # fmt: skip
    assert update_cloud_section(config, "https://c.example") == (
        "rewritten: its comments were not kept"
    )
    cloud = load_config(config).cloud
    assert cloud is not None
    assert (cloud.url, cloud.token_file, cloud.gateway_id) == ("https://c.example", None, None)


async def test_provision_with_a_name_names_the_gateway_the_same_in_the_config(
    served_sqlite: Served, tmp_path: Path
) -> None:
    """`--name line1-gw` used to name the gateway in the cloud only; the config kept its own."""
    cloud = served_sqlite.cloud
    tenant = await cloud.tenant("acme")
    config = _gateway_dir(tmp_path, name="gateway-1")
    code, out, err = await tagway(
        "provision", "--cloud", served_sqlite.url, "--claim-token",
        await claim_token(cloud, tenant), "--config", str(config), "--name", "line1-gw",
    )  # fmt: skip
    assert (code, err) == (0, ""), out + err
    assert load_config(config).gateway.name == "line1-gw"
    assert config.read_text().startswith("# tagway agent configuration")  # comments kept
    assert "gateway.name (line1-gw)" in out
    gateways = (await cloud.get(tenant.admin, "/v1/gateways")).json()
    assert [g["name"] for g in gateways] == ["line1-gw"]


def test_the_gateway_name_is_replaced_in_place() -> None:
    from cli.provision_cmds import set_gateway_name  # noqa: PLC0415

    block = "gateway:\n  name: gateway-1   # shown in the TUI\n  state_dir: /s\n"
    assert set_gateway_name(block, "line1-gw") == (
        "gateway:\n  name: line1-gw   # shown in the TUI\n  state_dir: /s\n"
    )
    flow = "gateway: {name: 'gw 1', state_dir: /s}  # flow\n"
    assert (
        set_gateway_name(flow, "press 3") == 'gateway: {name: "press 3", state_dir: /s}  # flow\n'
    )
