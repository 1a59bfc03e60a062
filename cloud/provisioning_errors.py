"""The errors of enrollment, rotation and gateway-token authentication (all `CloudError`s, so the
API answers them in its one error shape with a stable code).

    CloudError (cloud.errors)
    ├── Unauthenticated                       401
    │   ├── ClaimTokenInvalid                 401 claim_token_invalid: unknown, malformed, revoked
    │   └── GatewayTokenRefused               401 gateway_token_refused: `details["reason"]`
    │                                         says why (expired, audience, signature, revoked,
    │                                         unknown_certificate, certificate_rotated, ...)
    ├── ClaimTokenExpired                     410 claim_token_expired
    ├── ClaimTokenExhausted                   410 claim_token_exhausted: every use already taken
    ├── GatewayNameTaken                      409 gateway_name_taken
    ├── CsrInvalid                            422 csr_invalid: does not parse or does not verify
    └── ProvisioningUnavailable               503 provisioning_unavailable: no master key here
"""

from __future__ import annotations

from cloud.errors import CloudError, Unauthenticated


class ClaimTokenInvalid(Unauthenticated):
    """The claim token is unknown, malformed or revoked."""

    code = "claim_token_invalid"


class ClaimTokenExpired(CloudError):
    """The claim token's expiry has passed."""

    status = 410
    code = "claim_token_expired"


class ClaimTokenExhausted(CloudError):
    """The claim token has been used as many times as it allows."""

    status = 410
    code = "claim_token_exhausted"


class GatewayNameTaken(CloudError):
    """The tenant already has a gateway with the requested name."""

    status = 409
    code = "gateway_name_taken"


class CsrInvalid(CloudError):
    """The CSR does not parse, does not verify with its own key, or is not P-256/ECDSA-SHA256."""

    status = 422
    code = "csr_invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message, details={"path": ["body", "csr"]})


class GatewayTokenRefused(Unauthenticated):
    """A gateway token is refused; `reason` is a stable word for the edge and the logs."""

    code = "gateway_token_refused"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, details={"reason": reason})
        self.reason = reason


class ProvisioningUnavailable(CloudError):
    """This replica has no master key, so it cannot open or create tenant CAs."""

    status = 503
    code = "provisioning_unavailable"
