"""The driver against Mosquitto (an external broker in its own process) and over TLS."""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocols.driver import ConnectionState
from protocols.mqtt.broker import EmbeddedBroker
from protocols.mqtt.config import BrokerTls, EmbeddedBrokerConfig, MqttSubscription, RawDecoder
from protocols.mqtt.driver import MqttDriver
from tests.protocols.mqtt.conftest import (
    PASSWORDS,
    Collector,
    running,
    source_config,
    telemetry,
    until_state,
)

pytestmark = pytest.mark.integration

MOSQUITTO = Path("/usr/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"mosquitto did not listen on {port} within {within} s")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    """A Mosquitto of our own on a free loopback port, with a password file; yields the port."""
    if not MOSQUITTO.exists() or shutil.which("mosquitto_passwd") is None:
        pytest.skip(f"{MOSQUITTO} or mosquitto_passwd not installed")
    port = free_port()
    passwords = tmp_path / "passwd"
    passwords.touch(mode=0o600)
    for user in ("agent", "pump1"):
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwords), user, PASSWORDS[user]],
            check=True,
            capture_output=True,
        )
    conf = tmp_path / "mosquitto.conf"
    # `user`: as root, Mosquitto would switch to the `mosquitto` account, which cannot read
    # our private temporary directory; run it as whoever runs the tests.
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {passwords}\npersistence false\nlog_dest stderr\n"
    )
    process = subprocess.Popen(
        [str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(port)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


async def test_mosquitto_as_an_external_broker(mosquitto: int, collector: Collector) -> None:
    subscriptions = (
        MqttSubscription(topic="plant/{device}/telemetry"),
        MqttSubscription(topic="plant/{device}/raw/{tag}", decoder=RawDecoder(unit="bar")),
    )
    url = f"mqtt://127.0.0.1:{mosquitto}"
    driver = MqttDriver(
        source_config(url, subscriptions=subscriptions), dead_letters=collector.dead
    )
    async with running(driver, collector):
        await until_state(driver, ConnectionState.CONNECTED)
        assert driver.refused_subscriptions == ()
        async with aiomqtt.Client(
            "127.0.0.1", mosquitto, username="pump1", password=PASSWORDS["pump1"]
        ) as pump1:
            await pump1.publish("plant/pump1/telemetry", telemetry(flow=4.5), qos=1)
            await pump1.publish("plant/pump1/raw/pressure", b"2.25", qos=1)
            await pump1.publish("plant/pump1/telemetry", b"garbage", qos=1)
        await collector.until(lambda: len(collector.readings) == 2 and len(collector.letters) == 1)
    assert {(r.device, r.tag, r.value, r.unit) for r in collector.readings} == {
        ("pump1", "flow", 4.5, None),
        ("pump1", "pressure", 2.25, "bar"),
    }
    assert collector.letters[0].reason.startswith("not JSON")


async def test_mosquitto_refuses_a_wrong_password(mosquitto: int, collector: Collector) -> None:
    url = f"mqtt://127.0.0.1:{mosquitto}"
    driver = MqttDriver(
        source_config(url, password=PASSWORDS["pump1"]), dead_letters=collector.dead
    )
    async with running(driver, collector):
        await until_state(driver, ConnectionState.BACKOFF)
    assert "refused the credentials" in (driver.link.last_error or "")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tagway test broker")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "broker.pem", directory / "broker.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


# paho-mqtt 2.2 drops the socket of a failed TLS handshake (`_ssl_wrap_socket`) without closing
# it; CPython closes it at once by reference counting, with a ResourceWarning we expect here.
@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_tls_on_the_embedded_broker(
    broker_config: EmbeddedBrokerConfig, collector: Collector, tmp_path: Path
) -> None:
    cert_file, key_file = self_signed(tmp_path)
    config = broker_config.model_copy(
        update={"tls": BrokerTls(cert_file=cert_file, key_file=key_file)}
    )
    async with EmbeddedBroker(config) as broker:
        assert broker.url.startswith("mqtts://")
        driver = MqttDriver(
            source_config(broker.url, ca_file=cert_file), dead_letters=collector.dead
        )
        async with running(driver, collector):
            await until_state(driver, ConnectionState.CONNECTED)
            plain = MqttDriver(
                source_config(broker.url.replace("mqtts", "mqtt"), timeout_s=1.0),
                dead_letters=collector.dead,
            )
            async with running(plain, collector):  # plaintext against a TLS port gets nowhere
                await until_state(plain, ConnectionState.BACKOFF)
            untrusted = MqttDriver(source_config(broker.url), dead_letters=collector.dead)
            async with running(untrusted, collector):  # system CAs do not trust our certificate
                await until_state(untrusted, ConnectionState.BACKOFF)
                assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.link.last_error or "")
            tls = aiomqtt.TLSParameters(ca_certs=str(cert_file))
            async with aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                username="pump1",
                password=PASSWORDS["pump1"],
                tls_params=tls,
            ) as pump1:
                await pump1.publish("plant/pump1/telemetry", telemetry(flow=9.0), qos=1)
            await collector.until(lambda: len(collector.readings) == 1)
    assert collector.readings[0].value == 9.0
