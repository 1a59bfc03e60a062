"""OPC UA server: one folder per device under Objects, one variable per tag.

Namespace `urn:tagway:firmware-sim`; variables have string NodeIds `<device>.<tag>`, an EURange
property (and EngineeringUnits where the tag has a unit), and every device folder carries a
boolean `Simulated` property. Values are published with source timestamps; faults turn their
status Bad or Uncertain, and a dropped device link reads BadNoCommunication.

Security is optional: `none`, or Basic256Sha256 with Sign and SignAndEncrypt endpoints only, where
a client certificate is accepted only if the same certificate lies in the trust-list directory
(read at every session, so trusting a client needs no restart).

Nodes are created in bulk through the server's internal session: asyncua's per-node helpers cost
about ten times more per node, which matters at tens of thousands of tags.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, cast

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from firmware_sim.errors import ServeError, SimConfigError
from firmware_sim.faults import LinkState, OpcuaStatus
from firmware_sim.model import Value
from firmware_sim.simulation import PlantModel, TagInfo

log = logging.getLogger(__name__)

NAMESPACE_URI: Final = "urn:tagway:firmware-sim"
APPLICATION_URI: Final = "urn:tagway:firmware-sim:server"
Security = Literal["none", "basic256sha256"]


def _node(identifier: str | int, namespace: int = 0) -> ua.NodeId:
    # asyncua annotates NodeId with its own int/str subclasses; plain values are what it uses.
    return ua.NodeId(cast(ua.String, identifier), cast(ua.Int16, namespace))


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(cast(ua.UInt32, code))


_VARIANT: Final[dict[type, ua.VariantType]] = {
    float: ua.VariantType.Double,
    int: ua.VariantType.Int64,
    bool: ua.VariantType.Boolean,
    str: ua.VariantType.String,
}
_DATATYPE: Final[dict[type, int]] = {
    float: ObjectIds.Double,
    int: ObjectIds.Int64,
    bool: ObjectIds.Boolean,
    str: ObjectIds.String,
}


def _variant_type(info: TagInfo) -> ua.VariantType:
    """The OPC UA type of a tag: the type the device's register map gives it, so the same device
    serves the same data over Modbus and OPC UA (a float32 register is a Float, as a PLC's REAL
    is; a float computed by scaling an integer register is a Double)."""
    return ua.VariantType.Float if info.single else _VARIANT[info.kind]


def _datatype(info: TagInfo) -> int:
    return ObjectIds.Float if info.single else _DATATYPE[info.kind]


_GOOD: Final = _status(StatusCodes.Good)
_STATUS: Final = {
    "bad": _status(StatusCodes.BadSensorFailure),
    "uncertain": _status(StatusCodes.UncertainSensorNotAccurate),
    "link": _status(StatusCodes.BadNoCommunication),
}


class TrustList:
    """Client certificates trusted because an identical copy lies in `directory`."""

    def __init__(self, directory: Path) -> None:
        """Trust what `directory` holds (PEM or DER files), re-read at every validation."""
        self.directory = directory

    def fingerprints(self) -> set[bytes]:
        """SHA-256 fingerprints of the certificates in the directory now."""
        found: set[bytes] = set()
        for path in sorted(self.directory.glob("*")):
            data = path.read_bytes()
            try:
                cert = (
                    x509.load_pem_x509_certificate(data)
                    if b"-----BEGIN" in data
                    else x509.load_der_x509_certificate(data)
                )
            except ValueError:
                continue  # not a certificate (a key, a note): not trusted, not fatal
            found.add(cert.fingerprint(hashes.SHA256()))
        return found

    async def __call__(
        self, certificate: x509.Certificate, app_description: ua.ApplicationDescription
    ) -> None:
        """asyncua's certificate-validator hook: raise BadCertificateUntrusted unless listed."""
        del app_description
        if certificate.fingerprint(hashes.SHA256()) not in self.fingerprints():
            log.warning("OPC UA: refused untrusted client certificate %s", certificate.subject)
            raise ServiceError(StatusCodes.BadCertificateUntrusted)


def _variable_item(  # noqa: PLR0917 - one positional per part of the node
    nodeid: ua.NodeId, parent: ua.NodeId, name: str, info: TagInfo, value: Value, ns: int
) -> ua.AddNodesItem:
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Value = ua.Variant(value, _variant_type(info))
    attrs.DataType = _node(_datatype(info))
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = ua.QualifiedName(name, ns)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = _node(ObjectIds.HasComponent)
    item.TypeDefinition = _node(ObjectIds.BaseDataVariableType)
    item.NodeAttributes = attrs
    return item


def _property_item(
    parent: ua.NodeId, name: str, value: object, datatype: int, ns: int
) -> ua.AddNodesItem:
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    variant_type = ua.VariantType.Boolean if datatype == ObjectIds.Boolean else None
    attrs.Value = ua.Variant(value, variant_type or ua.VariantType.ExtensionObject)
    attrs.DataType = _node(datatype)
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = _node(f"{parent.Identifier!s}.{name}", ns)
    item.BrowseName = ua.QualifiedName(name, 0)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = _node(ObjectIds.HasProperty)
    item.TypeDefinition = _node(ObjectIds.PropertyType)
    item.NodeAttributes = attrs
    return item


class OpcuaPlantServer:
    """The plant's OPC UA server."""

    def __init__(
        self,
        *,
        model: PlantModel,
        host: str = "127.0.0.1",
        port: int = 0,
        security: Security = "none",
        cert_dir: Path | None = None,
        trust_dir: Path | None = None,
    ) -> None:
        """Prepare the server; `start()` builds the address space and binds.

        Args:
            model: the plant model the variables mirror.
            host: address to bind.
            port: port to bind; 0 picks a free one (see `port` after start).
            security: `none`, or `basic256sha256` (Sign and SignAndEncrypt endpoints only).
            cert_dir: where the server's certificate and key live (created if missing).
            trust_dir: directory of trusted client certificates (required with security).
        """
        if security != "none" and (cert_dir is None or trust_dir is None):
            raise SimConfigError("OPC UA security needs both a certificate and a trust directory")
        self.model = model
        self.host = host
        self.port = port
        self.security = security
        self.cert_dir = cert_dir
        self.trust_dir = trust_dir
        self.namespace_index = 0
        self.server = Server()
        self._nodes: dict[str, dict[str, ua.NodeId]] = {}
        self._published: dict[ua.NodeId, tuple[Value, int]] = {}
        self.changes_published = 0
        self.state = LinkState.DROPPED

    @property
    def endpoint(self) -> str:
        """The URL clients connect to."""
        return f"opc.tcp://{self.host}:{self.port}/firmware-sim/"

    async def start(self) -> None:
        """Build the address space, apply security, and listen."""
        server = self.server
        await server.init()
        server.set_server_name("tagway firmware_sim")
        await server.set_application_uri(APPLICATION_URI)
        server.set_endpoint(self.endpoint)
        if self.security == "none":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await self._secure()
        self.namespace_index = await server.register_namespace(NAMESPACE_URI)
        for device in self.model.devices:
            await self._add_device(device)
        await self.publish()
        try:
            await server.start()
        except OSError as exc:
            raise ServeError(f"OPC UA: cannot listen on {self.host}:{self.port}") from exc
        if server.bserver is not None:
            self.port = server.bserver.port
        self.state = LinkState.LISTENING

    async def _secure(self) -> None:
        if self.cert_dir is None or self.trust_dir is None:
            raise SimConfigError("OPC UA security needs a certificate and a trust directory")
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        key, cert = self.cert_dir / "server_key.pem", self.cert_dir / "server_cert.der"
        await cert_gen.setup_self_signed_certificate(
            key, cert, APPLICATION_URI, socket.gethostname(),
            [ExtendedKeyUsageOID.SERVER_AUTH],
            {"commonName": "tagway firmware_sim", "organizationName": "tagway"},
        )  # fmt: skip
        await self.server.load_certificate(cert)
        await self.server.load_private_key(key)
        self.server.set_security_policy(
            [
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ]
        )
        self.server.set_certificate_validator(TrustList(self.trust_dir))

    async def _add_device(self, device: str) -> None:
        ns = self.namespace_index
        folder = _node(device, ns)
        await self.server.nodes.objects.add_folder(folder, ua.QualifiedName(device, ns))
        items = [
            _property_item(folder, "Simulated", True, ObjectIds.Boolean, ns),
        ]
        values = self.model.reported(device)
        nodes: dict[str, ua.NodeId] = {}
        for tag, info in self.model.tag_info(device).items():
            nodeid = _node(f"{device}.{tag}", ns)
            nodes[tag] = nodeid
            items.append(_variable_item(nodeid, folder, tag, info, values[tag], ns))
            if info.low is not None and info.high is not None:
                eu_range = ua.Range(Low=info.low, High=info.high)
                items.append(_property_item(nodeid, "EURange", eu_range, ObjectIds.Range, ns))
            if info.unit is not None:
                units = ua.EUInformation(
                    NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                    DisplayName=ua.LocalizedText(info.unit),
                    Description=ua.LocalizedText(info.unit),
                )
                items.append(
                    _property_item(nodeid, "EngineeringUnits", units, ObjectIds.EUInformation, ns)
                )
        results = await self.server.iserver.isession.add_nodes(items)
        failed = [r.StatusCode for r in results if not r.StatusCode.is_good()]
        if failed:
            raise ServeError(f"OPC UA: could not create nodes of {device}: {failed[0]}")
        self._nodes[device] = nodes
        await asyncio.sleep(0)  # let other work run between large devices

    async def publish(self) -> int:
        """Write every value or status that changed since the last call; returns how many.

        Writes go through the address space's write path so subscriptions see each change.
        """
        stamp = cast(ua.DateTime, datetime.now(UTC))  # asyncua types it as its own subclass
        server = self.server
        written = 0
        for device, nodes in self._nodes.items():
            values = self.model.reported(device)
            statuses = self._statuses(device)
            info = self.model.tag_info(device)
            for tag, nodeid in nodes.items():
                value = values[tag]
                status = statuses.get(tag, _GOOD)
                if self._published.get(nodeid) == (value, status.value):
                    continue
                self._published[nodeid] = (value, status.value)
                datavalue = ua.DataValue(
                    ua.Variant(value, _variant_type(info[tag])),
                    StatusCode=status,
                    SourceTimestamp=stamp,
                    ServerTimestamp=stamp,
                )
                await server.write_attribute_value(nodeid, datavalue)
                written += 1
        self.changes_published += written
        return written

    def _statuses(self, device: str) -> dict[str, ua.StatusCode]:
        faults = self.model.faults
        if faults.link_down(device):
            return dict.fromkeys(self._nodes[device], _STATUS["link"])
        out: dict[str, ua.StatusCode] = {}
        for rec in faults.for_device(device):
            if isinstance(rec.fault, OpcuaStatus):
                tags = [rec.fault.tag] if rec.fault.tag else list(self._nodes[device])
                out.update(dict.fromkeys(tags, _STATUS[rec.fault.status]))
        return out

    async def run(self, interval: float) -> None:
        """Publish changes every `interval` seconds until cancelled."""
        while True:
            await self.publish()
            await asyncio.sleep(interval)

    async def watch_link(self, interval: float = 0.05) -> None:
        """Follow the `opcua_server_down` fault until cancelled."""
        while True:
            await self.watch_link_once()
            await asyncio.sleep(interval)

    async def watch_link_once(self) -> None:
        """Close or reopen the listener to match the faults in force now."""
        listener = self.server.bserver
        if listener is None:
            return
        down = self.model.faults.opcua_server_down()
        if down and self.state is LinkState.LISTENING:
            await listener.stop()  # closes every client transport, then the listener
            self.state = LinkState.DROPPED
        elif not down and self.state is LinkState.DROPPED:
            await listener.start()  # same host and port: BinaryServer kept the bound port
            self.state = LinkState.LISTENING

    async def stop(self) -> None:
        """Close every session and the listener."""
        if self.state is LinkState.DROPPED and self.server.bserver is not None:
            await self.server.bserver.start()  # asyncua's stop() expects a running listener
        await self.server.stop()


def client_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed OPC UA client certificate and key in `directory` (for tests and demos)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    uri = f"urn:tagway:firmware-sim:client:{name}"
    cert = cert_gen.generate_self_signed_app_certificate(
        key, uri, {"commonName": name},
        [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname())],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )  # fmt: skip
    key_path, cert_path = directory / f"{name}_key.pem", directory / f"{name}_cert.der"
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    return cert_path, key_path
