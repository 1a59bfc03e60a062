"""The shadow: per gateway, the setpoints the cloud wants held (`desired`), the gateway's facts
(`reported`) and what differs (`delta`).

`desired` is ``{"setpoints": {device: {tag: {value, expires_at, version, set_at, set_by}}}}``.
The document's version counts every change; each setpoint carries the version that last set
it, so the gateway applies a setpoint once per change (it remembers the versions it applied).
A PATCH is a JSON merge patch of ``setpoints`` (``null`` removes a setpoint or a device) and
may carry ``If-Match: "<version>"``: when the document moved on meanwhile, it is refused with
412 and nothing changes.

`reported` is the gateway's `ShadowReport` as last received (its own version counter keeps a
late copy from replacing a newer one). `delta` lists each desired, unexpired setpoint whose
reported value differs, with what the gateway said it did with it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from cloud.contract import ShadowReport
from cloud.errors import NotFound, PreconditionFailed
from cloud.live import GatewayWake, News
from cloud.storage.base import Database, Tx
from cloud.storage.records import Shadow


def same_value(a: Any, b: Any) -> bool:
    """Setpoint equality as a plant sees it: numbers within float32 precision, the rest exact."""
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return bool(a == b and type(a) is type(b))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return False


def delta(desired: dict[str, Any], reported: dict[str, Any], *, now_us: int) -> dict[str, Any]:
    """Desired, unexpired setpoints that the reported values do not match yet."""
    out: dict[str, dict[str, Any]] = {}
    values = reported.get("setpoints", {})
    applied = reported.get("applied", {})
    for device, tags in desired.get("setpoints", {}).items():
        for tag, want in tags.items():
            if want.get("expires_at") is not None and want["expires_at"] <= now_us:
                continue
            have = values.get(device, {}).get(tag, {})
            if "value" in have and same_value(have["value"], want["value"]):
                continue
            out.setdefault(device, {})[tag] = {
                "desired": want["value"], "reported": have.get("value"),
                "version": want["version"], "applied": applied.get(device, {}).get(tag),
            }  # fmt: skip
    return {"setpoints": out}


def merge_setpoints(
    current: dict[str, Any], patch: dict[str, Any], *, version: int, by: str, now_us: int
) -> dict[str, Any]:
    """`current` setpoints with a merge patch applied; changed entries get `version`."""
    merged = {device: dict(tags) for device, tags in current.items()}
    for device, tags in patch.items():
        if tags is None:
            merged.pop(device, None)
            continue
        entries = merged.setdefault(device, {})
        for tag, entry in tags.items():
            if entry is None:
                entries.pop(tag, None)
            else:
                entries[tag] = {"value": entry["value"], "expires_at": entry.get("expires_at"),
                                "version": version, "set_at": now_us, "set_by": by}  # fmt: skip
        if not entries:
            merged.pop(device)
    return merged


class ShadowStore:
    """The tenant's gateways' shadows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, tenant_id: int, gateway_id: int, *, now_us: int) -> Shadow:
        """The shadow (an empty one for a gateway nobody set anything for)."""
        async with self.db.transaction(tenant_id) as tx:
            return await self._get(tx, tenant_id, gateway_id, now_us=now_us)

    async def _get(self, tx: Tx, tenant_id: int, gateway_id: int, *, now_us: int) -> Shadow:
        if not await tx.fetchone(
            "SELECT 1 FROM gateways WHERE tenant_id = %s AND id = %s", [tenant_id, gateway_id]
        ):
            raise NotFound("gateway not found")
        row = await tx.fetchone(
            "SELECT desired, desired_version, desired_at, desired_by, reported, reported_version,"
            " reported_at FROM shadows WHERE tenant_id = %s AND gateway_id = %s",
            [tenant_id, gateway_id],
        )
        if row is None:
            row = ("{}", 0, None, None, "{}", 0, None)
        desired, reported = json.loads(row[0]), json.loads(row[4])
        return Shadow(
            gateway_id=gateway_id, version=row[1], desired=desired, desired_at=row[2],
            desired_by=row[3], reported=reported, reported_version=row[5], reported_at=row[6],
            delta=delta(desired, reported, now_us=now_us),
        )  # fmt: skip

    async def patch_desired(
        self,
        tx: Tx,
        tenant_id: int,
        gateway_id: int,
        setpoints: dict[str, Any],
        *,
        if_match: int | None,
        by: str,
        now_us: int,
        news: News,
    ) -> Shadow:
        """Apply a merge patch to the desired setpoints (optimistic concurrency on If-Match)."""
        shadow = await self._get(tx, tenant_id, gateway_id, now_us=now_us)
        if if_match is not None and if_match != shadow.version:
            raise PreconditionFailed(
                f"the desired document is at version {shadow.version}, not {if_match}",
                details={"version": shadow.version},
            )
        version = shadow.version + 1
        desired = {"setpoints": merge_setpoints(
            shadow.desired.get("setpoints", {}), setpoints, version=version, by=by, now_us=now_us
        )}  # fmt: skip
        await tx.execute(
            "INSERT INTO shadows (tenant_id, gateway_id, desired, desired_version, desired_at,"
            " desired_by) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (gateway_id) DO UPDATE SET"
            " desired = excluded.desired, desired_version = excluded.desired_version,"
            " desired_at = excluded.desired_at, desired_by = excluded.desired_by",
            [tenant_id, gateway_id, json.dumps(desired), version, now_us, by],
        )
        news.add(GatewayWake(gateway_id))
        return shadow.model_copy(update={
            "version": version, "desired": desired, "desired_at": now_us, "desired_by": by,
            "delta": delta(desired, shadow.reported, now_us=now_us),
        })  # fmt: skip

    async def desired(self, tx: Tx, tenant_id: int, gateway_id: int) -> tuple[int, dict[str, Any]]:
        """(version, setpoints) of the desired document, for the gateway's channel."""
        row = await tx.fetchone(
            "SELECT desired_version, desired FROM shadows WHERE tenant_id = %s AND gateway_id = %s",
            [tenant_id, gateway_id],
        )
        if row is None:
            return 0, {}
        setpoints: dict[str, Any] = json.loads(row[1]).get("setpoints", {})
        return int(row[0]), setpoints


async def apply_report(
    tx: Tx, tenant_id: int, gateway_id: int, report: ShadowReport, *, now_us: int
) -> None:
    """Store the gateway's report unless a newer one is already there."""
    reported = report.model_dump(mode="json", exclude={"type"})
    await tx.execute(
        "INSERT INTO shadows (tenant_id, gateway_id, reported, reported_version, reported_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (gateway_id) DO UPDATE SET"
        " reported = excluded.reported, reported_version = excluded.reported_version,"
        " reported_at = excluded.reported_at"
        " WHERE shadows.reported_version < excluded.reported_version",
        [tenant_id, gateway_id, json.dumps(reported), report.version, now_us],
    )
