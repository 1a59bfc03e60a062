"""One connected session to an OPC UA server: connect, security, namespaces, limits, units.

`ServerSession.open()` runs the whole set-up for one connection attempt and translates every
asyncua error into the `protocols.errors` tree:

    ConnectError     refused, unreachable, timed out, no matching endpoint, session refused
    └── SecurityError   untrusted server certificate, bad credentials, policy/mode mismatch
    DeviceTimeout    a request after connect timed out (reads, writes)
    DeviceError      a request after connect failed with a Bad service result

Connection loss is asyncua's to detect: its supervisor task (`Client._connection_supervisor`) wakes
on a transport state change or every `watchdog_intervall` seconds, probes ServerStatus/State, and on
failure calls `connection_lost_callback`. We run asyncua with `auto_reconnect=False` so that the
driver, not the library, owns reconnecting (jittered backoff, state on the `Link`, bad readings
during the outage); `lost` is the event the driver waits on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from asyncua import Client, ua
from asyncua.crypto import security_policies

from protocols.driver import DriverCounters
from protocols.errors import ConnectError, DeviceError, DeviceTimeout, SecurityError, WriteError
from protocols.opcua import security
from protocols.opcua.codec import (
    plain_value,
    resolve_node_id,
    to_variant,
    variant_type_of,
)
from protocols.opcua.config import OpcUaDeviceConfig
from protocols.opcua.nodeid import NodeIdSpec
from protocols.reading import Value

_T = TypeVar("_T")
_log = logging.getLogger(__name__)

_LIMIT_NODES: Final = (
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
)
_SECURITY_STATUS_PREFIXES: Final = (
    "BadCertificate",
    "BadSecurity",
    "BadIdentityToken",
    "BadUserAccessDenied",
    "BadNoValidCertificates",
)
_MODES: Final = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
DEFAULT_CHUNK: Final = 1000
"""Most items per request even when the server allows more: a server handles one request at a
time, and 10,000 monitored items in one call stall it long enough to fail its own keep-alive."""


@dataclass(frozen=True, slots=True)
class OperationLimits:
    """The server's OperationLimits (Part 5, 6.3.11); 0 means the server states no limit."""

    max_nodes_per_read: int = 0
    max_monitored_items_per_call: int = 0
    max_nodes_per_translate: int = 0

    @staticmethod
    def chunk(limit: int) -> int:
        """The batch size for a limit: the limit, capped at `DEFAULT_CHUNK`."""
        return min(limit, DEFAULT_CHUNK) if limit > 0 else DEFAULT_CHUNK


def chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    """Split `items` into consecutive slices of at most `size`."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def translate(exc: BaseException, what: str) -> ConnectError | DeviceError | DeviceTimeout:
    """Map an asyncua/transport exception raised by `what` into our error tree."""
    if isinstance(exc, TimeoutError):
        return DeviceTimeout(f"{what}: timed out")
    if isinstance(exc, ua.UaStatusCodeError):
        name = ua.StatusCode(exc.code).name
        if name.startswith(_SECURITY_STATUS_PREFIXES):
            return SecurityError(f"{what}: refused by the server: {name}")
        return DeviceError(f"{what}: {name}", code=exc.code)
    if isinstance(exc, ua.UaError) and "certificate" in str(exc).lower():
        # e.g. "Server certificate mismatch": CreateSession presented another certificate
        # than the endpoint we checked against the trust list.
        return SecurityError(f"{what}: {exc}")
    return ConnectError(f"{what}: {type(exc).__name__}: {exc}")


class ServerSession:
    """A connected asyncua client plus what the driver learnt at connect time.

    Built by `open()`; ended with `close()` (orderly: CloseSession, the server drops our
    subscription) or `abandon()` (after a loss: nothing is sent, so the server keeps the session
    and its queues for `session_timeout_s` and the next `open()` can resume it). `lost` is set when
    asyncua reports the connection lost (socket closed, keep-alive probe failed).

    Session resume (Part 4, 6.7: a new SecureChannel, then ActivateSession on the old session)
    uses asyncua's `session_state_path`: the token and nonce are kept in `state_file` (mode 0600)
    while a session is open, so the next `open()`, even from a restarted agent, tries it first.
    """

    def __init__(self, client: Client, config: OpcUaDeviceConfig, counters: DriverCounters) -> None:
        self.client = client
        self.config = config
        self.counters = counters
        self.namespaces: list[str] = []
        self.limits = OperationLimits()
        self.lost = asyncio.Event()
        self.lost_reason = "connection lost"
        self.resumed = False
        self._data_types: dict[ua.NodeId, ua.VariantType] = {}

    @classmethod
    async def open(
        cls,
        config: OpcUaDeviceConfig,
        counters: DriverCounters,
        *,
        state_file: Path,
        previous_token: ua.NodeId | None = None,
    ) -> ServerSession:
        """Connect, secure, authenticate and read namespaces and limits; raises `ConnectError`.

        `resumed` tells whether the server still had the session of `previous_token`.
        """
        client = Client(
            config.endpoint,
            timeout=config.request_timeout_s,
            watchdog_intervall=config.keepalive_interval_s,
            auto_reconnect=False,
        )
        client.name = client.description = f"tagway {config.name}"
        client.application_uri = config.application_uri
        client.product_uri = "urn:tagway"
        client.session_timeout = round(config.session_timeout_s * 1000)
        client.session_state_path = state_file
        if config.username is not None and config.password is not None:
            client.set_user(config.username)
            client.set_password(config.password.get_secret_value())
        session = cls(client, config, counters)
        client.connection_lost_callback = session._on_connection_lost
        if config.secure:
            await session._secure()
        elif await asyncio.to_thread(state_file.exists):  # a resume will be tried
            await session._learn_token_policies()
        try:
            await client.connect()
        except (OSError, TimeoutError, ua.UaError) as exc:
            if config.secure and _refuses_our_certificate(exc):
                raise refused_certificate(config) from exc
            raise _connect_error(exc, config.endpoint) from exc
        except AssertionError as exc:
            # asyncua asserts that OpenSecureChannel was answered with its response; a server
            # that refuses our certificate answers with a ServiceFault instead.
            if config.secure:
                raise refused_certificate(config) from exc
            refused = f"connect {config.endpoint}: the server refused the channel"
            raise ConnectError(refused) from exc
        except BaseException:
            client.disconnect_socket()  # cancelled mid-handshake: asyncua cleans up on Exception
            raise
        session.resumed = previous_token is not None and session.token == previous_token
        try:
            await session._learn_server()
        except BaseException:
            await session.close()
            raise
        return session

    async def _secure(self) -> None:
        cfg = self.config
        if cfg.certificate is None or cfg.private_key is None or cfg.trust_dir is None:
            raise SecurityError(f"{cfg.name}: security needs certificate, private_key, trust_dir")
        await asyncio.to_thread(
            security.ensure_application_certificate,
            cfg.certificate,
            cfg.private_key,
            cfg.application_uri,
        )
        try:
            endpoints = await self.client.connect_and_get_server_endpoints()
        except (OSError, TimeoutError, ua.UaError) as exc:
            raise _connect_error(exc, cfg.endpoint) from exc
        endpoint = _matching_endpoint(endpoints, cfg)
        _use_token_policies(self.client, endpoint)
        server_cert = await asyncio.to_thread(
            security.check_server_certificate,
            endpoint.ServerCertificate,
            cfg.trust_dir,
            endpoint=cfg.endpoint,
        )
        try:
            await self.client.set_security(
                security_policies.SecurityPolicyBasic256Sha256,
                certificate=str(cfg.certificate),
                private_key=str(cfg.private_key),
                server_certificate=security.der(server_cert),
                mode=_MODES[cfg.security_mode],
            )
        except (OSError, ValueError, ua.UaError) as exc:
            raise SecurityError(
                f"{cfg.endpoint}: cannot use the application certificate: {exc}"
            ) from exc

    async def _learn_token_policies(self) -> None:
        """Read the endpoint's user token policies before a session resume.

        asyncua learns them from CreateSession only; a resume skips CreateSession, so it would
        send the identity token without the server's policy id, which servers other than
        asyncua's refuse (node-opcua: BadIdentityChangeNotSupported), and the session with
        what the server queued during the outage is lost to a new one.
        """
        try:
            endpoints = await self.client.connect_and_get_server_endpoints()
        except (OSError, TimeoutError, ua.UaError) as exc:
            raise _connect_error(exc, self.config.endpoint) from exc
        for endpoint in endpoints:
            if endpoint.SecurityMode == ua.MessageSecurityMode.None_:
                _use_token_policies(self.client, endpoint)
                return

    async def _learn_server(self) -> None:
        ids = [ua.NodeId(ua.ObjectIds.Server_NamespaceArray), *(ua.NodeId(i) for i in _LIMIT_NODES)]
        values = await self.read(ids)
        namespaces = values[0].Value.Value if values[0].Value is not None else None
        if not isinstance(namespaces, list):
            raise ConnectError(f"{self.config.endpoint}: server has no readable NamespaceArray")
        self.namespaces = [str(uri) for uri in namespaces]
        read, monitored, translate_ = (_uint_or_zero(dv) for dv in values[1:])
        self.limits = OperationLimits(read, monitored, translate_)
        _log.info("%s: connected; limits %s", self.config.name, self.limits)

    def resolve(self, spec: NodeIdSpec) -> ua.NodeId:
        """The NodeId of a tag on this server; raises `CodecError` for an unknown namespace URI."""
        return resolve_node_id(spec, self.namespaces)

    async def read(self, node_ids: Sequence[ua.NodeId]) -> list[ua.DataValue]:
        """One Read service call of the Value attribute (the caller respects MaxNodesPerRead)."""
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.NodesToRead = [
            ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in node_ids
        ]
        return await self.call("read", self.client.uaclient.read(params))

    async def call(self, what: str, request: Awaitable[_T]) -> _T:
        """Await one service request, counting it and translating its errors."""
        self.counters.requests += 1
        try:
            return await request
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            error = translate(exc, f"{self.config.name} {what}")
            if isinstance(error, DeviceTimeout):
                self.counters.timeouts += 1
            elif isinstance(error, DeviceError):
                self.counters.errors += 1
            raise error from exc

    async def engineering_units(self, nodes: Sequence[ua.NodeId]) -> list[str | None]:
        """Each node's EngineeringUnits display name (Part 8, 5.6.3), None where it has none."""
        paths = [_units_path(node) for node in nodes]
        targets: list[ua.NodeId | None] = []
        for path_part in chunks(paths, self.limits.chunk(self.limits.max_nodes_per_translate)):
            results = await self.call(
                "translate EngineeringUnits",
                self.client.uaclient.translate_browsepaths_to_nodeids(list(path_part)),
            )
            targets.extend(_first_target(result) for result in results)
        found = [t for t in targets if t is not None]
        values: list[ua.DataValue] = []
        for part in chunks(found, self.limits.chunk(self.limits.max_nodes_per_read)):
            values.extend(await self.read(part))
        units = iter(_unit_text(dv) for dv in values)
        return [None if t is None else next(units) for t in targets]

    async def write_value(self, node: ua.NodeId, value: Value) -> None:
        """Write `value` as the node's own DataType; raises `WriteError`/`CodecError`."""
        variant_type = self._data_types.get(node)
        if variant_type is None:
            params = ua.ReadParameters()
            params.NodesToRead = [ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.DataType)]
            (dv,) = await self.call("read DataType", self.client.uaclient.read(params))
            if dv.StatusCode is not None and not dv.StatusCode.is_good():
                raise WriteError(
                    f"{node.to_string()}: cannot read its DataType: {dv.StatusCode.name}"
                )
            variant_type = variant_type_of(dv.Value.Value)
            self._data_types[node] = variant_type
        data = ua.DataValue(to_variant(value, variant_type), StatusCode=None)
        (status,) = await self.call(
            "write", self.client.uaclient.write_attributes([node], [data], ua.AttributeIds.Value)
        )
        if not status.is_good():
            raise WriteError(f"{node.to_string()}: server refused {value!r}: {status.name}")

    async def _on_connection_lost(self, exc: Exception) -> None:
        self.lost_reason = f"connection lost: {type(exc).__name__}: {exc}".rstrip(": ")
        self.lost.set()

    def mark_lost(self, reason: str) -> None:
        """Declare the session unusable (e.g. its subscription went silent); reconnect follows."""
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    @property
    def token(self) -> ua.NodeId:
        """The session's AuthenticationToken (what a resume presents again)."""
        return self.client.uaclient.session.authentication_token

    async def abandon(self) -> None:
        """Drop a lost session locally without telling the server (so it can be resumed)."""
        protocol = self.client.uaclient.protocol
        if protocol is not None and not protocol.is_closed:
            # A half-open link (keep-alive probe failed): close our end first, so the
            # CloseSession below cannot go out and delete the session we want to resume.
            protocol.disconnect_socket()
            for _ in range(50):
                if protocol.is_closed:
                    break
                await asyncio.sleep(0.001)
        try:
            await self.client.close_session()  # stops asyncua's tasks; the socket is closed
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            _log.debug("%s: abandon: %r", self.config.name, exc)
        self.client.disconnect_socket()

    async def close(self) -> None:
        """Close session, channel and socket; never raises and never hangs past the timeout."""
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                await self.client.disconnect()
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            _log.debug("%s: close: %r", self.config.name, exc)


def _uint_or_zero(dv: ua.DataValue) -> int:
    value = dv.Value.Value if dv.Value is not None else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _units_path(node: ua.NodeId) -> ua.BrowsePath:
    element = ua.RelativePathElement(
        ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasProperty),
        IsInverse=False,
        IncludeSubtypes=True,
        TargetName=ua.QualifiedName("EngineeringUnits", 0),
    )
    return ua.BrowsePath(StartingNode=node, RelativePath=ua.RelativePath(Elements=[element]))


def _first_target(result: ua.BrowsePathResult) -> ua.NodeId | None:
    if not result.StatusCode.is_good() or not result.Targets:
        return None
    target = result.Targets[0].TargetId
    return ua.NodeId(target.Identifier, target.NamespaceIndex)


def _unit_text(dv: ua.DataValue) -> str | None:
    info = dv.Value.Value if dv.Value is not None else None
    if isinstance(info, ua.EUInformation):
        text = info.DisplayName.Text or info.Description.Text
        return text or None
    unit = plain_value(info)
    return unit if isinstance(unit, str) and unit else None


def _use_token_policies(client: Client, endpoint: ua.EndpointDescription) -> None:
    # asyncua keeps them in a private list that only CreateSession fills; `server_policy()`,
    # which builds every identity token, reads it.
    client._policy_ids = list(endpoint.UserIdentityTokens or [])


def _matching_endpoint(
    endpoints: Sequence[ua.EndpointDescription], config: OpcUaDeviceConfig
) -> ua.EndpointDescription:
    policy_uri = security_policies.SecurityPolicyBasic256Sha256.URI
    mode = _MODES[config.security_mode]
    for endpoint in endpoints:
        if endpoint.SecurityPolicyUri == policy_uri and endpoint.SecurityMode == mode:
            return endpoint
    offered = sorted(
        {
            f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name.rstrip('_')}"
            for e in endpoints
        }
    )
    raise SecurityError(
        f"{config.endpoint} offers no Basic256Sha256/{config.security_mode} endpoint "
        f"(it offers {', '.join(offered)})"
    )


_REFUSED_CERTIFICATE: Final = frozenset({
    "BadCertificateUntrusted", "BadCertificateInvalid", "BadCertificateIssuerUntrusted",
    "BadCertificateUriInvalid", "BadCertificateUseNotAllowed", "BadCertificateRevoked",
    "BadCertificateIssuerRevoked", "BadSecurityChecksFailed",
})  # fmt: skip


def _refuses_our_certificate(exc: BaseException) -> bool:
    """The server's answer to our OpenSecureChannel says it does not accept our certificate."""
    if not isinstance(exc, ua.UaStatusCodeError):
        return False
    return ua.StatusCode(exc.code).name in _REFUSED_CERTIFICATE


def refused_certificate(config: OpcUaDeviceConfig) -> SecurityError:
    """The installer's error when the server does not trust the gateway: what to do, and with
    which file (the gateway already checked the server's certificate against its trust list)."""
    return SecurityError(
        f"the server at {config.endpoint} did not accept this gateway's certificate "
        f"{config.certificate}; add it to the server's trusted certificates"
    )


def _connect_error(exc: BaseException, endpoint: str) -> ConnectError:
    error = translate(exc, f"connect {endpoint}")
    if isinstance(error, ConnectError):
        return error
    return ConnectError(str(error))
