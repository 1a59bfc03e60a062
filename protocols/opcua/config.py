"""Typed, frozen configuration of one OPC UA server (device) and its tags.

    device = OpcUaDeviceConfig(
        name="boiler1",
        endpoint="opc.tcp://10.0.0.5:4840",
        security_policy="Basic256Sha256",
        security_mode="SignAndEncrypt",
        certificate=Path("/var/lib/tagway/opcua/gateway.der"),
        private_key=Path("/var/lib/tagway/opcua/gateway.pem"),
        trust_dir=Path("/etc/tagway/opcua/trusted"),
        tags=(OpcUaTag(name="steam_p", node_id="nsu=urn:acme:boiler;s=P101"),),
    )

Every validator names the field it rejects, so a YAML error points at the line to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from protocols.errors import CodecError
from protocols.opcua.nodeid import NodeIdSpec, parse_node_id

TimestampSource = Literal["source", "server", "gateway"]
"""Which clock stamps an OPC UA reading."""


class OpcUaTag(BaseModel):
    """One OPC UA variable read as one tag.

    Args:
        name: the tag name readings carry, unique within the device.
        node_id: ``nsu=<uri>;s=...`` (preferred: survives namespace reordering), ``ns=<i>;...``
            or ``i=<n>``.
        mode: ``subscribe`` (a monitored item, the default) or ``poll`` (read every
            `OpcUaDeviceConfig.poll_interval_ms`; for servers with poor subscription support).
        sampling_interval_ms: how often the server samples the value; None uses the
            publishing interval (requested as -1, Part 4, 5.12.1.2), 0 the server's fastest.
        queue_size: notifications the server keeps per item between publishes; with a sampling
            interval shorter than the publishing interval, a queue of 1 keeps only the last.
        deadband_type: ``none``, ``absolute`` (engineering units) or ``percent`` (of EURange).
        deadband_value: the deadband; 0..100 for percent.
        unit: engineering unit override; otherwise the node's EngineeringUnits property is used.
        timestamp: which clock stamps this tag's readings; None follows the device.
        writable: whether `write()` may set this tag.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    node_id: str
    mode: Literal["subscribe", "poll"] = "subscribe"
    sampling_interval_ms: float | None = Field(default=None, ge=0)
    queue_size: int = Field(default=10, ge=1, le=100_000)
    deadband_type: Literal["none", "absolute", "percent"] = "none"
    deadband_value: float = Field(default=0.0, ge=0)
    unit: str | None = None
    writable: bool = False
    timestamp: TimestampSource | None = None

    @field_validator("node_id")
    @classmethod
    def _node_id_parses(cls, value: str) -> str:
        try:
            parse_node_id(value)
        except CodecError as exc:
            raise ValueError(f"node_id: {exc}") from None
        return value.strip()

    @model_validator(mode="after")
    def _deadband_fits(self) -> Self:
        if self.deadband_type == "none" and self.deadband_value != 0:
            raise ValueError(
                f"tag {self.name!r}: deadband_value {self.deadband_value} needs deadband_type "
                "'absolute' or 'percent'"
            )
        if self.deadband_type == "percent" and self.deadband_value > 100:
            raise ValueError(
                f"tag {self.name!r}: deadband_value {self.deadband_value} is a percentage; "
                "expected 0..100"
            )
        if self.deadband_type != "none" and self.mode == "poll":
            raise ValueError(
                f"tag {self.name!r}: deadband_type applies to subscribed tags; mode is 'poll'"
            )
        return self

    @property
    def node(self) -> NodeIdSpec:
        """The parsed node id (namespace still unresolved)."""
        return parse_node_id(self.node_id)


class OpcUaDeviceConfig(BaseModel):
    """One OPC UA server the gateway reads, with its security and its tags.

    Args:
        name: the device name readings carry.
        endpoint: ``opc.tcp://host:port[/path]``.
        security_policy: ``None`` or ``Basic256Sha256``.
        security_mode: ``None`` (with policy None), ``Sign`` or ``SignAndEncrypt``.
        application_uri: the gateway's ApplicationUri; the certificate's SAN URI carries it.
        certificate: the gateway's application certificate (DER); created on first use.
        private_key: its private key (PEM); created on first use, mode 0600.
        trust_dir: directory of trusted server certificates or CA certificates (DER or PEM);
            a server whose certificate is not trusted is refused.
        username: user name for a UserName identity token; anonymous when None.
        password: its password.
        publishing_interval_ms: how often the server sends notifications.
        poll_interval_ms: read period of tags in ``poll`` mode.
        request_timeout_s: per-request timeout.
        session_timeout_s: how long the server keeps our session (and its queues) after a link
            drop; a reconnect within this window resumes the subscription without loss.
        keepalive_interval_s: how often asyncua probes the link (a ServerStatus read); a probe
            unanswered for this long means the link is lost. Too short, and a server busy with a
            large publish is taken for dead.
        reconnect_max_delay_s: the cap of the jittered reconnect backoff.
        max_queued_readings: readings buffered between the network and the sink; None sizes it
            for the tag count (4 publishes' worth, at least 10,000). Overflow is counted.
        read_engineering_units: read each tag's EngineeringUnits property at connect.
        session_state_dir: where the open session's token is kept (0600) so that a reconnect, or
            a restarted agent, resumes the server's session and its queued notifications; a
            private temporary directory when None.
        timestamp: which clock stamps readings: ``source`` (SourceTimestamp, else
            ServerTimestamp, else receive time), ``server`` (ServerTimestamp, else receive time)
            or ``gateway`` (the receive time); a tag may choose its own.
        simulated: readings carry ``simulated=True`` (firmware_sim devices).
        tags: the tags, unique by name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    endpoint: str
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    application_uri: str = "urn:tagway:gateway"
    certificate: Path | None = None
    private_key: Path | None = None
    trust_dir: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    publishing_interval_ms: float = Field(default=1000.0, gt=0)
    poll_interval_ms: float = Field(default=1000.0, gt=0)
    request_timeout_s: float = Field(default=5.0, gt=0)
    session_timeout_s: float = Field(default=60.0, gt=0)
    keepalive_interval_s: float = Field(default=5.0, gt=0)
    reconnect_max_delay_s: float = Field(default=30.0, gt=0)
    max_queued_readings: int | None = Field(default=None, ge=1)
    read_engineering_units: bool = True
    session_state_dir: Path | None = None
    timestamp: TimestampSource = Field(
        default="source", description="source | server | gateway: which clock stamps readings"
    )
    simulated: bool = False
    tags: tuple[OpcUaTag, ...] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_opc_tcp(cls, value: str) -> str:
        if not value.startswith("opc.tcp://") or len(value) <= len("opc.tcp://"):
            raise ValueError(f"endpoint: {value!r} must look like 'opc.tcp://host:port[/path]'")
        return value

    @model_validator(mode="after")
    def _security_is_complete(self) -> Self:
        secure = self.security_policy != "None"
        if secure != (self.security_mode != "None"):
            raise ValueError(
                f"security_mode {self.security_mode!r} does not fit security_policy "
                f"{self.security_policy!r}: use 'None' with 'None', 'Sign' or 'SignAndEncrypt' "
                "with 'Basic256Sha256'"
            )
        if secure:
            missing = [
                f for f in ("certificate", "private_key", "trust_dir") if not getattr(self, f)
            ]
            if missing:
                raise ValueError(
                    f"security_policy {self.security_policy!r} needs {', '.join(missing)}"
                )
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: set both or neither")
        return self

    @model_validator(mode="after")
    def _tag_names_unique(self) -> Self:
        seen: set[str] = set()
        for tag in self.tags:
            if tag.name in seen:
                raise ValueError(f"tags: duplicate tag name {tag.name!r}")
            seen.add(tag.name)
        return self

    @property
    def secure(self) -> bool:
        """True when a security policy other than None is configured."""
        return self.security_policy != "None"

    @property
    def queue_limit(self) -> int:
        """The reading queue bound: the configured one, or 4 publishes of every tag."""
        if self.max_queued_readings is not None:
            return self.max_queued_readings
        return max(10_000, 4 * len(self.tags))
