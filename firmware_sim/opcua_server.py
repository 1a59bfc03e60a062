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

Publishing is prepared too (a benchmark's simulator serves 10,000 changing values a second): each
variable's stored Value attribute is resolved once at start, a publish compares plain lists, and
a Good value is stored and handed to the subscriptions' data-change callbacks directly, as
asyncua's own write path does after its checks. Values are written as `SharedDataValue`s, which
asyncua's monitored items keep without deep-copying (the copy was two thirds of the simulator's
CPU). A publish follows every model step (`stepped()`), so no step is skipped or published late
by a whole interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Self, cast

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.server.address_space import AttributeValue
from asyncua.server.monitored_item_service import MonitoredItemService
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


# asyncua's types reach mypy as Any (see pyproject), so subclassing one needs the ignore.
class SharedDataValue(ua.DataValue):  # type: ignore[misc]
    """A DataValue that nobody changes after it is written, so a copy of it may be itself.

    asyncua's monitored items deep-copy every value written to a variable, in case the writer
    changes it afterwards; the simulator builds a new value for every write and never touches it
    again, so the copy (most of the simulator's CPU at 10,000 changes a second) is skipped.
    """

    __slots__ = ()

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self


@dataclass(slots=True)
class _Variables:
    """One device's variables, resolved once: what a publish walks."""

    tags: list[str]
    nodeids: list[ua.NodeId]
    types: list[ua.VariantType]
    stored: list[AttributeValue]  # asyncua's Value attribute of each variable
    values: list[Value | None]  # as last published (None: never)
    statuses: list[int]  # StatusCode values as last published


async def _notify_directly(callback: object, handle: int, datavalue: ua.DataValue) -> bool:
    """Queue a changed value's notification for an unfiltered monitored item of asyncua's own
    subscription service, as its `datachange_callback` does, minus two costs: it first builds an
    empty notification (whose default DataValue and Variant cost more than the rest of the
    callback) and compares the value with the item's last one (the simulator writes only changed
    values). False when the item is not of that kind (a filter, another callback, an asyncua
    whose service looks otherwise): the caller then calls the callback."""
    service: Any = getattr(callback, "__self__", None)
    if getattr(callback, "__func__", None) is not MonitoredItemService.datachange_callback:
        return False
    try:
        monitored_item_id = service._monitored_datachange[handle]
        item = service._monitored_items[monitored_item_id]
    except (AttributeError, KeyError):
        return False
    if item.filter or item.mode == ua.MonitoringMode.Disabled:  # asyncua's own tests, as is
        return False
    item.mvalue.set_current_datavalue(datavalue)  # a SharedDataValue: no copy
    notification = ua.MonitoredItemNotification(ClientHandle=item.client_handle, Value=datavalue)
    await service.isub.enqueue_datachange_event(monitored_item_id, notification, item.queue_size)
    return True


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
        self._variables: dict[str, _Variables] = {}
        self._published_key: tuple[int, int] | None = None  # model and fault generations
        self._publishing = asyncio.Lock()
        self._stepped = asyncio.Event()
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
        self._variables[device] = self._prepare(device, nodes)
        await asyncio.sleep(0)  # let other work run between large devices

    def _prepare(self, device: str, nodes: dict[str, ua.NodeId]) -> _Variables:
        info = self.model.tag_info(device)
        aspace = self.server.iserver.aspace
        stored: list[AttributeValue] = []
        for nodeid in nodes.values():
            node = aspace.get(nodeid)
            if node is None:
                raise ServeError(f"OPC UA: variable {nodeid.Identifier} missing after creation")
            stored.append(node.attributes[ua.AttributeIds.Value])
        return _Variables(
            tags=list(nodes),
            nodeids=list(nodes.values()),
            types=[_variant_type(info[tag]) for tag in nodes],
            stored=stored,
            values=[None] * len(nodes),
            statuses=[_GOOD.value] * len(nodes),
        )

    async def publish(self) -> int:
        """Write every value or status that changed since the last call; returns how many.

        Subscriptions see each change. Nothing is walked when neither the model nor the faults
        changed since the last publish.
        """
        async with self._publishing:
            faults = self.model.faults
            faults.active()  # expires timed faults, which bumps the faults' generation
            key = (self.model.generation, faults.generation)
            if key == self._published_key:
                return 0
            stamp = cast(ua.DateTime, datetime.now(UTC))  # asyncua types it as its own subclass
            written = 0
            for device, variables in self._variables.items():
                written += await self._publish_device(device, variables, stamp)
            self._published_key = key
            self.changes_published += written
            return written

    async def _publish_device(self, device: str, variables: _Variables, stamp: ua.DateTime) -> int:
        reported = self.model.reported(device)
        statuses = self._statuses(device)
        values, published, codes = variables.values, variables.stored, variables.statuses
        written = 0
        for i, tag in enumerate(variables.tags):
            value = reported[tag]
            status = statuses.get(tag, _GOOD) if statuses else _GOOD
            if value == values[i] and status.value == codes[i]:
                continue
            values[i], codes[i] = value, status.value
            datavalue = SharedDataValue(
                ua.Variant(value, variables.types[i]),
                StatusCode=status,
                SourceTimestamp=stamp,
                ServerTimestamp=stamp,
            )
            if status is _GOOD:
                await self._store(published[i], datavalue)
            else:  # asyncua's own path: it replaces a Bad status's value by null (Part 4, 7.7.1)
                await self.server.write_attribute_value(variables.nodeids[i], datavalue)
            written += 1
        return written

    @staticmethod
    async def _store(stored: AttributeValue, datavalue: ua.DataValue) -> None:
        """What asyncua's `write_attribute_value` does once its checks have passed: store the
        value and tell every monitored item of the variable (the checks hold by construction:
        the variable exists and the value has the variable's type)."""
        stored.value = datavalue
        for handle, callback in stored.datachange_callbacks.items():
            try:
                if not await _notify_directly(callback, handle, datavalue):
                    await callback(handle, datavalue)
            except Exception:  # as asyncua does: one failing monitored item must not stop others
                log.exception("OPC UA: data-change callback of monitored item %s failed", handle)

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

    def stepped(self) -> None:
        """The model moved on: publish now, not at the end of the interval."""
        self._stepped.set()

    async def run(self, interval: float) -> None:
        """Publish changes after every model step (`stepped()`) and at least every `interval`
        seconds (writes, faults), until cancelled."""
        while True:
            await self.publish()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stepped.wait()
            self._stepped.clear()

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
