"""asyncua and transport errors translated into the protocols error tree (pure mapping)."""

from __future__ import annotations

import pytest
from asyncua import ua

from protocols.errors import ConnectError, DeviceError, DeviceTimeout, ProtocolError, SecurityError
from protocols.opcua.session import OperationLimits, chunks, translate


@pytest.mark.parametrize(
    ("exc", "kind", "message"),
    [
        (TimeoutError(), DeviceTimeout, "pump1 read: timed out"),
        (ConnectionRefusedError(111, "refused"), ConnectError, "ConnectionRefusedError"),
        (ConnectionError("client is disconnected"), ConnectError, "client is disconnected"),
        (
            ua.UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied),
            SecurityError,
            "BadUserAccessDenied",
        ),
        (
            ua.UaStatusCodeError(ua.StatusCodes.BadCertificateUntrusted),
            SecurityError,
            "BadCertificateUntrusted",
        ),
        (
            ua.UaStatusCodeError(ua.StatusCodes.BadSecurityChecksFailed),
            SecurityError,
            "BadSecurityChecksFailed",
        ),
        (
            ua.UaStatusCodeError(ua.StatusCodes.BadTooManyOperations),
            DeviceError,
            "BadTooManyOperations",
        ),
        (ua.UaError("Server certificate mismatch"), SecurityError, "certificate mismatch"),
        (ua.UaError("No matching endpoints"), ConnectError, "No matching endpoints"),
    ],
)
def test_translate(exc: BaseException, kind: type[ProtocolError], message: str) -> None:
    error = translate(exc, "pump1 read")
    assert type(error) is kind
    assert message in str(error)


def test_device_error_carries_the_status_code() -> None:
    error = translate(ua.UaStatusCodeError(ua.StatusCodes.BadNodeIdUnknown), "pump1 write")
    assert isinstance(error, DeviceError)
    assert error.code == ua.StatusCodes.BadNodeIdUnknown


@pytest.mark.parametrize(("limit", "size"), [(0, 1000), (7, 7), (1000, 1000), (10_000, 1000)])
def test_request_size_respects_the_server_limit_and_our_cap(limit: int, size: int) -> None:
    assert OperationLimits.chunk(limit) == size


def test_chunks_keep_order_and_cover_everything() -> None:
    assert chunks(list(range(20)), 7) == [list(range(7)), list(range(7, 14)), list(range(14, 20))]
    assert chunks([], 7) == []
