"""Fixtures for the provisioning tests: a tenant CA, a gateway key and its certificate."""

from __future__ import annotations

import pytest

from provisioning.ca import TenantCA, create_tenant_ca, issue_gateway_certificate
from provisioning.csr import create_csr
from provisioning.keys import generate_private_key
from tests.provisioning.support import Gateway


@pytest.fixture
def tenant_ca() -> TenantCA:
    return create_tenant_ca("acme")


@pytest.fixture
def gateway(tenant_ca: TenantCA) -> Gateway:
    key = generate_private_key()
    certificate = issue_gateway_certificate(
        tenant_ca, create_csr(key, "press line 3"), gateway_id="gw-0001"
    )
    return Gateway(key=key, certificate=certificate, gateway_id="gw-0001")


# The cloud app on each backend, for the tests against the real API (test_cloud_*.py).
from tests.cloud.conftest import (  # noqa: E402, F401 - fixtures shared with the cloud tests
    backend,
    make_cloud,
    migrated_pg,
    owner_dsn,
    pg_engine,
    settings_for,
)
