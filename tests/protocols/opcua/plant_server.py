"""A small, real asyncua server for the OPC UA driver tests (firmware_sim will replace it).

It serves namespace ``urn:tagway:firmware-sim`` the way firmware_sim does: one folder per device
under Objects with a boolean ``Simulated`` property, variables with string NodeIds
``<device>.<tag>``, and EURange/EngineeringUnits properties. A ``bulk`` folder holds any number of
plain Double variables (``bulk.v00000`` ...) for load tests. A dummy namespace is registered first
so our namespace is *not* at index 2: tests prove ``nsu=`` resolution, not luck.

Test hooks: `max_nodes_per_read` is published in OperationLimits *and enforced* (a larger Read is
answered with BadTooManyOperations), and every external Read's size is recorded in `read_sizes`.

Run as a script for the benchmark (the server in its own process):

    python tests/protocols/opcua/plant_server.py --items 10000 --period 1.0
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

NAMESPACE = "urn:tagway:firmware-sim"
SERVER_URI = "urn:tagway:test-plant"

# (tag, variant type, initial value, writable, (EURange low, high) or None, unit or None)
PUMP_TAGS: tuple[
    tuple[str, ua.VariantType, object, bool, tuple[float, float] | None, str | None], ...
] = (
    ("flow", ua.VariantType.Double, 12.5, False, (0.0, 100.0), "m³/h"),
    ("speed_sp", ua.VariantType.Double, 1450.0, True, (0.0, 3000.0), "rpm"),
    ("running", ua.VariantType.Boolean, True, True, None, None),
    ("mode", ua.VariantType.Int16, 1, True, None, None),
    ("label", ua.VariantType.String, "P-101", True, None, None),
)


_BULK_FOLDER = 100


class _Users:
    """asyncua user manager: these user names and passwords, nobody else (not anonymous)."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(
        self,
        iserver: object,
        username: str | None = None,
        password: str | None = None,
        certificate: object = None,
    ) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def _variable_item(node: ua.NodeId, parent: ua.NodeId) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node
    item.BrowseName = ua.QualifiedName(node.Identifier, node.NamespaceIndex)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
    item.TypeDefinition = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(node.Identifier)
    attrs.DataType = ua.NodeId(ua.ObjectIds.Double)
    attrs.Value = ua.Variant(0.0, ua.VariantType.Double)
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    item.NodeAttributes = attrs
    return item


class PlantServer:
    """An asyncua server on 127.0.0.1 with a pump device and `bulk` Double variables.

    Args:
        port: 0 picks a free port; after `start()` the chosen one is in `port` (reused by restart).
        bulk: how many bulk variables to create.
        certificate, private_key: enable only Basic256Sha256 endpoints, in `secure_modes`.
        max_nodes_per_read: publish and enforce this OperationLimit (0: none).
        users: require one of these user names and passwords (anonymous refused).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        bulk: int = 0,
        certificate: Path | None = None,
        private_key: Path | None = None,
        max_nodes_per_read: int = 0,
        secure_modes: tuple[str, ...] = ("SignAndEncrypt", "Sign"),
        users: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.bulk = bulk
        self.certificate = certificate
        self.private_key = private_key
        self.max_nodes_per_read = max_nodes_per_read
        self.secure_modes = secure_modes
        self.users = users
        self.read_sizes: list[int] = []
        self.client_certificates_seen = 0
        self.ns = 0
        self.server: Server | None = None
        self.bulk_nodes: list[ua.NodeId] = []

    @property
    def url(self) -> str:
        """The endpoint URL clients use."""
        return f"opc.tcp://127.0.0.1:{self.port}/tagway-test"

    def node(self, name: str) -> ua.NodeId:
        """The NodeId of ``<device>.<tag>`` (e.g. ``pump1.flow``)."""
        return ua.NodeId(name, self.ns)

    async def __aenter__(self) -> PlantServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Build the address space and listen."""
        server = Server(user_manager=_Users(self.users) if self.users else None)
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("tagway test plant")
        await server.set_application_uri(SERVER_URI)
        if self.certificate is not None and self.private_key is not None:
            server.set_security_policy(
                [getattr(ua.SecurityPolicyType, f"Basic256Sha256_{m}") for m in self.secure_modes]
            )
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
            validator = CertificateValidator(
                CertificateValidatorOptions.BASIC_VALIDATION
                | CertificateValidatorOptions.PEER_CLIENT
            )

            async def check_client(cert: object, app: ua.ApplicationDescription) -> None:
                await validator(cert, app)  # SAN URI must equal the client's ApplicationUri
                self.client_certificates_seen += 1

            server.set_certificate_validator(check_client)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        await server.register_namespace("urn:tagway:unrelated")  # pushes ours to index 3
        self.ns = await server.register_namespace(NAMESPACE)
        await self._build_pump(server)
        await self._build_bulk(server)
        server.subscribe_server_callback(CallbackType.PreRead, self._pre_read)
        await server.start()
        assert server.bserver is not None
        self.port = server.bserver.port
        if self.max_nodes_per_read:
            await server.write_attribute_value(
                ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
                ua.DataValue(ua.Variant(self.max_nodes_per_read, ua.VariantType.UInt32)),
            )
        self.server = server

    async def stop(self) -> None:
        """Stop listening and drop every session (a crash, as far as clients can tell)."""
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()
            # asyncua keeps a session whose client vanished (so it can be resumed, Part 4 6.7),
            # and Server.stop() forgets to close those; a stopped server must not leave tasks.
            for session in list(server.iserver._external_sessions.values()):
                await session.close_session(True)

    async def restart(self, downtime: float = 0.0) -> None:
        """Stop, wait `downtime` seconds, and start a fresh server on the same port."""
        await self.stop()
        await asyncio.sleep(downtime)
        await self.start()

    async def _build_pump(self, server: Server) -> None:
        objects = server.nodes.objects
        folder = await objects.add_folder(
            ua.NodeId("pump1", self.ns), ua.QualifiedName("pump1", self.ns)
        )
        await folder.add_property(
            ua.NodeId("pump1.Simulated", self.ns), ua.QualifiedName("Simulated", self.ns), True
        )
        for tag, vtype, value, writable, eu_range, unit in PUMP_TAGS:
            name = f"pump1.{tag}"
            var = await folder.add_variable(
                ua.NodeId(name, self.ns), ua.QualifiedName(tag, self.ns), ua.Variant(value, vtype)
            )
            if writable:
                await var.set_writable()
            if eu_range is not None:
                await var.add_property(
                    ua.NodeId(f"{name}.EURange", self.ns),
                    ua.QualifiedName("EURange", 0),
                    ua.Range(Low=eu_range[0], High=eu_range[1]),
                )
            if unit is not None:
                info = ua.EUInformation(
                    NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                    UnitId=-1,
                    DisplayName=ua.LocalizedText(unit),
                    Description=ua.LocalizedText(unit),
                )
                await var.add_property(
                    ua.NodeId(f"{name}.EngineeringUnits", self.ns),
                    ua.QualifiedName("EngineeringUnits", 0),
                    info,
                )

    async def _build_bulk(self, server: Server) -> None:
        if not self.bulk:
            return
        root = await server.nodes.objects.add_folder(
            ua.NodeId("bulk", self.ns), ua.QualifiedName("bulk", self.ns)
        )
        self.bulk_nodes = [ua.NodeId(f"bulk.v{i:05d}", self.ns) for i in range(self.bulk)]
        # asyncua checks each new child against all of its parent's references (quadratic), so
        # the variables go into folders of _BULK_FOLDER: 10,000 nodes build in seconds, not minutes.
        items = []
        for start in range(0, self.bulk, _BULK_FOLDER):
            group = ua.NodeId(f"bulk.g{start // _BULK_FOLDER:03d}", self.ns)
            folder = await root.add_folder(group, ua.QualifiedName(group.Identifier, self.ns))
            items.extend(
                _variable_item(node, folder.nodeid)
                for node in self.bulk_nodes[start : start + _BULK_FOLDER]
            )
        results = await server.iserver.isession.add_nodes(items)
        for result in results:
            result.StatusCode.check()

    async def set_value(
        self, name: str, value: object, vtype: ua.VariantType, *, source_ts: datetime | None = None
    ) -> None:
        """Change one variable as the plant would (notifies subscriptions)."""
        await self.set_values([self.node(name)], [value], vtype, source_ts=source_ts)

    async def set_values(
        self,
        nodes: Sequence[ua.NodeId],
        values: Sequence[object],
        vtype: ua.VariantType = ua.VariantType.Double,
        *,
        source_ts: datetime | None = None,
    ) -> None:
        """Change many variables at once, each with its own value."""
        assert self.server is not None, "server is not running"
        stamp = source_ts or datetime.now(UTC)
        write = self.server.write_attribute_value
        for node, value in zip(nodes, values, strict=True):
            await write(
                node,
                ua.DataValue(
                    ua.Variant(value, vtype), SourceTimestamp=stamp, ServerTimestamp=stamp
                ),
            )

    async def _pre_read(self, event: ServerItemCallback, _dispatcher: object) -> None:
        if not event.is_external:
            return
        size = len(event.request_params.NodesToRead)
        self.read_sizes.append(size)
        if self.max_nodes_per_read and size > self.max_nodes_per_read:
            raise ServiceError(ua.StatusCodes.BadTooManyOperations)


async def _serve_forever(items: int, period: float) -> None:
    async with PlantServer(bulk=items) as plant:
        print(plant.port, flush=True)  # the benchmark reads the port from the first line
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        tick = 0
        while True:
            tick += 1
            await plant.set_values(plant.bulk_nodes, [float(tick + i) for i in range(items)])
            next_tick += period  # a fixed cadence: writing 10,000 values takes a while itself
            await asyncio.sleep(max(0.0, next_tick - loop.time()))


def main(argv: Sequence[str] | None = None) -> None:
    """Serve `--items` bulk variables, changing all of them every `--period` seconds."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--period", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(_serve_forever(args.items, args.period))


if __name__ == "__main__":
    main()
