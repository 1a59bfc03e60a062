"""`tagway cloud retention` as an operator uses it: a subprocess against the database of a
running cloud, on SQLite and each PostgreSQL engine (as the app role, which may only run the
function)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.cli.test_cli import tagway
from tests.cloud.conftest import now_us
from tests.cloud.test_retention import DAY, OLD_AGES, _old_and_new, _stored, day_label

pytestmark = pytest.mark.integration


async def test_dry_run_drops_nothing_and_the_pass_drops_the_old_days(
    make_cloud: Any, settings_for: Any, backend: str
) -> None:
    cloud = await make_cloud(max_age_days=60, retention_interval_s=0)
    key, _, series, _ = await _old_and_new(cloud)
    before = await _stored(cloud, key, series)
    database = settings_for().database_url
    old = {day_label(backend, now_us() - int(age * DAY)) for age in OLD_AGES}

    code, out, err = await tagway(
        "cloud", "retention", "--database", database, "--days", "10", "--dry-run"
    )

    assert (code, err) == (0, ""), err
    if backend != "sqlite":
        assert out.startswith("would drop ")
        assert all(name in out for name in old), out
    else:
        assert out.startswith(f"would delete {len(OLD_AGES)} readings older than ")
    assert await _stored(cloud, key, series) == before

    code, out, err = await tagway(
        "cloud", "retention", "--database", database, "--days", "10", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    if backend == "timescaledb":
        assert {day_label(backend, d * DAY) for d in result["days"]} >= old
    elif backend != "sqlite":
        assert old <= set(result["partitions"])
    else:
        assert result["rows_deleted"] == len(OLD_AGES)
    assert await _stored(cloud, key, series) == before[len(OLD_AGES) :]


async def test_an_unreachable_database_is_one_line() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = f"postgresql://nobody@127.0.0.1:{port}/none?connect_timeout=2"
    code, out, err = await tagway("cloud", "retention", "--database", database)
    assert (code, out) == (1, "")
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tagway: error: cannot use PostgreSQL")
