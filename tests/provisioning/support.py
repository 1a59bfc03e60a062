"""Shared test values for the provisioning tests."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from provisioning.keys import PrivateKey

CLOUD_URL = "https://cloud.tagway.test"


@dataclass(frozen=True)
class Gateway:
    """A gateway as the cloud issued it: its key, certificate and id."""

    key: PrivateKey
    certificate: x509.Certificate
    gateway_id: str
