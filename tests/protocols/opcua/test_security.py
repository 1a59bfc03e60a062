"""Basic256Sha256 with Sign and SignAndEncrypt: trusted servers work, untrusted ones are refused."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from cryptography import x509

from protocols.driver import ConnectionState, DriverCounters
from protocols.errors import SecurityError
from protocols.opcua import OpcUaDriver
from protocols.opcua.security import ensure_application_certificate
from protocols.opcua.session import ServerSession
from protocols.reading import Quality
from tests.protocols.opcua.certs import Issued, issue
from tests.protocols.opcua.conftest import Collector, device, pump_tag, running
from tests.protocols.opcua.plant_server import SERVER_URI, PlantServer

pytestmark = pytest.mark.integration

GATEWAY_URI = "urn:tagway:test-gateway"


@pytest.fixture
def server_cert(tmp_path: Path) -> Issued:
    return issue(tmp_path / "server", "plant-server", uri=SERVER_URI)


def _secure(tmp_path: Path, url: str, mode: str = "SignAndEncrypt", **extra: Any) -> Any:
    return device(
        url,
        [pump_tag("flow"), pump_tag("speed_sp", writable=True)],
        security_policy="Basic256Sha256",
        security_mode=mode,
        application_uri=GATEWAY_URI,
        certificate=tmp_path / "gateway" / "cert.der",
        private_key=tmp_path / "gateway" / "key.pem",
        trust_dir=tmp_path / "trusted",
        **extra,
    )


async def test_trusted_server_works_and_the_gateway_certificate_is_created(
    tmp_path: Path, server_cert: Issued
) -> None:
    (tmp_path / "trusted").mkdir()
    shutil.copy(server_cert.cert_path, tmp_path / "trusted" / "plant.der")
    collector = Collector()
    users = {"operator": "s3cret"}
    async with PlantServer(
        certificate=server_cert.cert_path, private_key=server_cert.key_path, users=users
    ) as plant:
        config = _secure(tmp_path, plant.url, username="operator", password="s3cret")  # noqa: S106
        async with running(OpcUaDriver(config), collector) as driver:
            await collector.wait_for(lambda: bool(collector.good("flow")))
            await plant.set_value("pump1.flow", 77.0, ua.VariantType.Double)
            await collector.wait_for(lambda: 77.0 in [r.value for r in collector.good("flow")])
            assert await driver.write("speed_sp", 1600) == 1600.0  # read back from the server
            assert plant.server is not None
            node = plant.node("pump1.speed_sp")
            assert plant.server.read_attribute_value(node).Value.Value == 1600.0
        assert plant.client_certificates_seen >= 1  # the server checked our certificate's SAN URI

        wrong = _secure(tmp_path, plant.url, username="operator", password="guess")  # noqa: S106
        with pytest.raises(SecurityError, match="refused by the server: BadUserAccessDenied"):
            await ServerSession.open(wrong, DriverCounters(), state_file=tmp_path / "s.json")

    cert = x509.load_der_x509_certificate((tmp_path / "gateway" / "cert.der").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [GATEWAY_URI]
    key_mode = stat.S_IMODE((tmp_path / "gateway" / "key.pem").stat().st_mode)
    assert key_mode == 0o600


async def test_untrusted_server_certificate_is_refused_with_a_clear_error(
    tmp_path: Path, server_cert: Issued
) -> None:
    (tmp_path / "trusted").mkdir()
    other = issue(tmp_path / "other", "some-other-server", uri="urn:other")
    shutil.copy(other.cert_path, tmp_path / "trusted" / "other.der")
    async with PlantServer(
        certificate=server_cert.cert_path, private_key=server_cert.key_path
    ) as plant:
        config = _secure(tmp_path, plant.url)
        with pytest.raises(
            SecurityError, match=r"certificate 'CN=plant-server' \(SHA-256 .*\) is not trusted"
        ):
            await ServerSession.open(config, DriverCounters(), state_file=tmp_path / "s.json")

        collector = Collector()
        async with running(OpcUaDriver(config), collector) as driver:
            await collector.wait_for(lambda: len(collector.of("flow")) >= 1)
            assert driver.link.state in {ConnectionState.BACKOFF, ConnectionState.CONNECTING}
            assert "is not trusted" in (driver.link.last_error or "")
        assert plant.client_certificates_seen == 0  # refused before a session was even requested
    flow = collector.of("flow")[0]
    assert flow.quality is Quality.BAD
    assert "is not trusted" in (flow.reason or "")
    rejected = list((tmp_path / "trusted" / "rejected").iterdir())
    assert [x509.load_der_x509_certificate(p.read_bytes()) for p in rejected] == [server_cert.cert]


async def test_sign_only_with_a_server_certificate_issued_by_a_trusted_ca(tmp_path: Path) -> None:
    # The server offers Sign only: asking it for SignAndEncrypt is refused with what it offers.
    ca = issue(tmp_path / "ca", "plant-ca", uri="", ca=True)
    server_cert = issue(tmp_path / "server", "plant-server", uri=SERVER_URI, issuer=ca)
    (tmp_path / "trusted").mkdir()
    shutil.copy(ca.cert_path, tmp_path / "trusted" / "ca.der")
    collector = Collector()
    async with PlantServer(
        certificate=server_cert.cert_path, private_key=server_cert.key_path, secure_modes=("Sign",)
    ) as plant:
        async with running(OpcUaDriver(_secure(tmp_path, plant.url, "Sign")), collector):
            await collector.wait_for(lambda: bool(collector.good("flow")))
            await plant.set_value("pump1.flow", 5.0, ua.VariantType.Double)
            await collector.wait_for(lambda: 5.0 in [r.value for r in collector.good("flow")])
        with pytest.raises(
            SecurityError,
            match=r"no Basic256Sha256/SignAndEncrypt endpoint \(it offers Basic256Sha256/Sign\)",
        ):
            await ServerSession.open(
                _secure(tmp_path, plant.url), DriverCounters(), state_file=tmp_path / "s.json"
            )


def test_existing_certificate_with_another_uri_is_refused(tmp_path: Path) -> None:
    mine = issue(tmp_path, "gw", uri="urn:someone-else")
    with pytest.raises(SecurityError, match=r"SAN URIs \['urn:someone-else'\], not the configured"):
        ensure_application_certificate(mine.cert_path, mine.key_path, GATEWAY_URI)
