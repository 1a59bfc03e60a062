"""The provisioning error tree. Errors from `cryptography` and the file system are translated into
these at the boundary with ``raise ... from exc``, so callers never import a library to catch its
exceptions. Every message names what was refused and why (the file and its mode, the claim that
did not match), never a secret.

    ProvisioningError                 root of everything this package raises
    ├── KeyFileError                  a key or master-key file is missing, unreadable, readable
    │                                 by group/other, not P-256, or could not be written
    ├── SealedKeyError                a sealed (encrypted at rest) CA key cannot be opened: wrong
    │                                 master key, another tenant's blob, or tampered bytes
    ├── CsrError                      a CSR is malformed, its signature does not verify, its key
    │                                 is not P-256, or the requested name is not acceptable
    ├── CertificateError              a certificate is malformed or lacks what tagway needs
    │   ├── CertificateUntrusted      not issued by the expected CA (issuer, signature, the CA
    │   │                             is not a CA), or the chain does not lead to the anchor
    │   ├── CertificateExpired        the validity window ended (beyond the clock-skew leeway)
    │   └── CertificateNotYetValid    the validity window has not begun (beyond the leeway)
    ├── ClaimTokenMalformed           a claim token does not have the tagway claim-token shape
    └── TokenError                    a gateway token is refused
        ├── TokenMalformed            not three base64url parts of JSON objects, bad claim types
        ├── TokenAlgorithmRefused     ``alg`` is not ES256 (``none``, HS256, ...), or ``crit``
        ├── TokenSignatureInvalid     the signature does not verify with the gateway's key
        ├── TokenExpired              ``exp`` has passed (beyond the leeway)
        ├── TokenNotYetValid          ``nbf``/``iat`` lie in the future (beyond the leeway)
        ├── TokenLifetimeTooLong      ``exp - iat`` exceeds what the verifier accepts
        ├── TokenAudienceMismatch     ``aud`` is another cloud
        ├── TokenIssuerMismatch       ``iss`` is not the gateway the certificate was issued to
        └── TokenCertificateMismatch  ``x5t#S256`` names another certificate (rotated, revoked)
"""

from __future__ import annotations


class ProvisioningError(Exception):
    """Root of the errors raised by `provisioning`."""


class KeyFileError(ProvisioningError):
    """A key file cannot be used; the message names the file (and its mode, if that is why)."""


class SealedKeyError(ProvisioningError):
    """A sealed CA private key cannot be opened with this master key for this tenant."""


class CsrError(ProvisioningError):
    """A certificate signing request is refused."""


class CertificateError(ProvisioningError):
    """A certificate is malformed or lacks an extension tagway relies on."""


class CertificateUntrusted(CertificateError):
    """The certificate was not issued by the expected CA, or the chain does not lead to it."""


class CertificateExpired(CertificateError):
    """The certificate's validity window ended (beyond the clock-skew leeway)."""


class CertificateNotYetValid(CertificateError):
    """The certificate's validity window has not begun (beyond the clock-skew leeway)."""


class ClaimTokenMalformed(ProvisioningError):
    """The string is not a tagway claim token (wrong prefix, length or alphabet)."""


class TokenError(ProvisioningError):
    """A gateway token is refused; the subclass says why."""


class TokenMalformed(TokenError):
    """The token is not three base64url parts of JSON objects with well-typed claims."""


class TokenAlgorithmRefused(TokenError):
    """The header names an algorithm other than ES256, or critical extensions."""


class TokenSignatureInvalid(TokenError):
    """The signature does not verify with the gateway's public key."""


class TokenExpired(TokenError):
    """The token's ``exp`` has passed, beyond the clock-skew leeway."""


class TokenNotYetValid(TokenError):
    """The token's ``nbf`` or ``iat`` lies in the future, beyond the clock-skew leeway."""


class TokenLifetimeTooLong(TokenError):
    """``exp - iat`` exceeds the verifier's maximum: gateway tokens are meant to be short-lived."""


class TokenAudienceMismatch(TokenError):
    """The token was minted for another cloud (``aud``)."""


class TokenIssuerMismatch(TokenError):
    """The token's ``iss`` is not the gateway id in the certificate."""


class TokenCertificateMismatch(TokenError):
    """The token's ``x5t#S256`` is not the thumbprint of the gateway's current certificate."""
