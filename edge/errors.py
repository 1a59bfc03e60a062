"""The edge's one error root: every error the agent's packages raise on purpose derives from
`EdgeError`, so the CLI (and anything else at the boundary) maps them by type, not by a list.

Errors::

    EdgeError
    ├── ConfigError            (edge.config_loader) the config file cannot be used; `issues`
    ├── ReloadRejected         (edge.reload) a reloaded config does not fit the running one
    ├── IdentityError          (edge.identity) identity files missing, unreadable, inconsistent
    │   ├── IdentityNotFound   not provisioned yet
    │   ├── IdentityRefused    a certificate chain from the cloud does not fit
    │   └── RotationFailed     (edge.rotation) the cloud did not issue the new certificate
    ├── AlarmStoreError        (edge.alarm_store) the alarm-state file cannot be used
    │   └── AlarmStateTooNew   written by a newer release
    ├── UnknownAlarm           (edge.alarms) an acknowledgement named no alarm (also a KeyError)
    ├── ExpressionError        (edge.pipeline.expressions) a derived-tag expression is refused
    ├── ModelError             (edge.inference.model) an ONNX model does not load or fit
    ├── AgentNotRunning        (edge.agent) the runtime was asked for before start or after stop
    ├── DeviceNotRunning       (edge.supervisor) a write named a device with no running driver
    └── UplinkError            (edge.uplink) internal to the uplink's send loop
        ├── Refused            the cloud refused a batch for good (422, 413 of one chunk)
        └── RetryLater         the cloud or the network failed in a way a retry may fix

The other packages keep their own roots (the import rules forbid a shared one): `OutboxError`
(store_forward), `ProtocolError` (protocols), `ProvisioningError` (provisioning) and
`ContractError` (cloud.contract, which also holds the chunk codec's `ChunkError`); the
credentials' `NotProvisioned` is an `IdentityNotFound`.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Root of the errors the edge agent raises on purpose; the message says what and where."""
