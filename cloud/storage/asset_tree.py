"""The asset tree's primitives (rows, paths, inserts) and the placement of devices by the
ISA-95 paths their gateways report (event `AssetPaths`), shared by ingest and
`cloud.storage.assets`.

A gateway path is ``enterprise/site/area/line/cell``: the cloud drops the enterprise (the tenant
is that), maps site, area, line and cell to its levels site, area, line and equipment, creates
the assets missing along the path and places the device under the last one (``asset_source =
'gateway'``), unless a user pinned the device (``api``), which always wins. A path that runs into
an existing asset of another level places nothing (logged). A device the gateway names before
its first reading is placed when ingest creates it.

Bounded per tenant: at most `MAX_ASSETS` assets, and at most `MAX_NEW_ASSETS` made by one report
(or one placement); a path that would need an asset beyond either places nothing (counted and
logged: never an error, the batch's readings are stored all the same). Lookups are cached per
path prefix, so the paths of one report share the work of their common levels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cloud.contract import AssetPaths
from cloud.errors import NotFound
from cloud.storage.asset_schema import LEVELS
from cloud.storage.base import Row, Tx
from cloud.storage.records import Asset, Device

log = logging.getLogger("tagway.cloud.assets")

ASSET_COLUMNS: Final = "id, parent_id, level, name, path, created_at"
DEVICE_COLUMNS: Final = (
    "d.id, d.gateway_id, d.name, d.display_name, d.metadata, d.created_at, EXISTS (SELECT 1"
    " FROM series s WHERE s.tenant_id = d.tenant_id AND s.device_id = d.id AND s.simulated),"
    " d.asset_id, a.path, d.asset_source"
)
DEVICE_FROM: Final = (
    "devices d LEFT JOIN assets a ON a.id = d.asset_id AND a.tenant_id = d.tenant_id"
)
MAX_NAME: Final = 200
PATH_LEVELS: Final = ("site", "area", "line", "equipment")
"""The cloud level of each gateway path level after the enterprise (site, area, line, cell)."""
_INSERT_ROWS: Final = 1_000
MAX_ASSETS: Final = 10_000
"""The most assets a tenant's gateways' paths fill its tree to (users' own assets count too),
unless the tenant has its own limit (``tenants.max_assets``, ``PUT /v1/tenants/{id}/limits``)."""
MAX_NEW_ASSETS: Final = 1_000
"""The most assets one path report (or one placement by ingest) makes."""


@dataclass(slots=True)
class AssetBudget:
    """How many assets the paths being placed may still make, and how many paths it refused."""

    left: int
    refused: int = 0


async def asset_budget(tx: Tx, tenant_id: int) -> AssetBudget:
    """The budget of one report: `MAX_NEW_ASSETS`, less what would pass the tenant's limit
    (its own, else `MAX_ASSETS`)."""
    row = await tx.fetchone("SELECT count(*) FROM assets WHERE tenant_id = %s", [tenant_id])
    held = int(row[0]) if row else 0
    own = await tx.fetchone("SELECT max_assets FROM tenants WHERE id = %s", [tenant_id])
    limit = MAX_ASSETS if own is None or own[0] is None else int(own[0])
    return AssetBudget(max(0, min(MAX_NEW_ASSETS, limit - held)))


def asset_from_row(row: Row) -> Asset:
    """An `Asset` from a row of `ASSET_COLUMNS`."""
    return Asset(id=row[0], parent_id=row[1], level=row[2], name=row[3], path=row[4],
                 created_at=row[5])  # fmt: skip


def device_from_row(row: Row) -> Device:
    """A `Device` from a row of `DEVICE_COLUMNS` over `DEVICE_FROM`."""
    return Device(
        id=row[0], gateway_id=row[1], name=row[2], display_name=row[3],
        metadata=json.loads(row[4]), created_at=row[5], simulated=bool(row[6]),
        asset_id=row[7], asset_path=row[8], asset_source=row[9],
    )  # fmt: skip


def rank(level: str) -> int:
    """The depth of a level: site 0 ... equipment 3."""
    return LEVELS.index(level)


def subtree(id_path: str) -> str:
    """The LIKE pattern of an asset's subtree, itself included (ids and slashes only: nothing
    to escape)."""
    return id_path + "%"


@dataclass(frozen=True, slots=True)
class Node:
    """An asset with its path of ids."""

    asset: Asset
    id_path: str


async def node(tx: Tx, tenant_id: int, asset_id: int, what: str = "asset") -> Node:
    """The tenant's asset `asset_id`; `NotFound` (naming `what`) when it has none."""
    row = await tx.fetchone(
        f"SELECT {ASSET_COLUMNS}, id_path FROM assets WHERE tenant_id = %s AND id = %s",
        [tenant_id, asset_id],
    )
    if row is None:
        raise NotFound(f"{what} not found")
    return Node(asset_from_row(row), row[6])


async def sibling_named(tx: Tx, tenant_id: int, parent_id: int | None, name: str) -> int | None:
    """The id of the asset named `name` under `parent_id` (None: at the root), if any."""
    row = await tx.fetchone(
        "SELECT id FROM assets WHERE tenant_id = %s AND COALESCE(parent_id, 0) = %s AND name = %s",
        [tenant_id, parent_id or 0, name],
    )
    return None if row is None else int(row[0])


async def insert(
    tx: Tx, tenant_id: int, parent: Node | None, *, level: str, name: str, now_us: int
) -> int | None:
    """Insert an asset and set its paths; None when a sibling has the name (taken meanwhile)."""
    path = name if parent is None else f"{parent.asset.path}/{name}"
    row = await tx.fetchone(
        "INSERT INTO assets (tenant_id, parent_id, level, name, path, id_path, created_at)"
        " VALUES (%s, %s, %s, %s, %s, '', %s) ON CONFLICT DO NOTHING RETURNING id",
        [tenant_id, None if parent is None else parent.asset.id, level, name, path, now_us],
    )
    if row is None:
        return None
    asset_id = int(row[0])
    id_path = f"{'/' if parent is None else parent.id_path}{asset_id}/"
    await tx.execute(
        "UPDATE assets SET id_path = %s WHERE tenant_id = %s AND id = %s",
        [id_path, tenant_id, asset_id],
    )
    return asset_id


def gateway_levels(path: str) -> list[tuple[str, str]] | None:
    """The (cloud level, name) pairs a gateway's ``enterprise/site/area/line/cell`` path names
    below the enterprise, or None when it names nothing the cloud can place (only the
    enterprise, more than five levels, an empty or overlong level)."""
    levels = [level.strip() for level in path.strip().strip("/").split("/")]
    if len(levels) < 2 or len(levels) > 1 + len(PATH_LEVELS):
        return None
    if any(not level or len(level) > MAX_NAME or "\x00" in level for level in levels):
        return None
    return list(zip(PATH_LEVELS, levels[1:], strict=False))


async def _resolve(
    tx: Tx, tenant_id: int, levels: Sequence[tuple[str, str]], now_us: int, *,
    cache: dict[tuple[str, ...], Node | None], budget: AssetBudget,
) -> int | None:  # fmt: skip
    """The asset at the end of a gateway path, creating those missing along it (within
    `budget`); None when the path runs into an asset of another level (it is left as it is) or
    needs more assets than the budget holds."""
    names = tuple(name for _, name in levels)
    parent: Node | None = None
    for depth, (level, name) in enumerate(levels, start=1):
        key = names[:depth]
        if key in cache:
            parent = cache[key]
            if parent is None:
                return None
            continue
        parent_id = None if parent is None else parent.asset.id
        found = await sibling_named(tx, tenant_id, parent_id, name)
        if found is None:
            if budget.left <= 0:
                budget.refused += 1  # not cached: the budget may differ for another report
                return None
            found = await insert(tx, tenant_id, parent, level=level, name=name, now_us=now_us)
            if found is None:  # created meanwhile by another replica
                found = await sibling_named(tx, tenant_id, parent_id, name)
            else:
                budget.left -= 1
        if found is None:
            cache[key] = None
            return None
        parent = await node(tx, tenant_id, found)
        if parent.asset.level != level:
            log.info(
                "tenant %s: gateway path %s meets %s %r, not a %s; device not placed",
                tenant_id,
                "/".join(names),
                parent.asset.level,
                parent.asset.path,
                level,
            )
            cache[key] = None
            return None
        cache[key] = parent
    return None if parent is None else parent.asset.id


async def place_reported(
    tx: Tx, tenant_id: int, gateway_id: int, *, now_us: int, devices: Sequence[str] | None = None,
    cache: dict[tuple[str, ...], Node | None] | None = None, budget: AssetBudget | None = None,
) -> None:  # fmt: skip
    """Place the gateway's devices that are not pinned by the paths it reported (all of them,
    or only `devices`); a device whose path was withdrawn and that the gateway had placed
    becomes unassigned."""
    sql = (
        "SELECT d.id, p.path, d.asset_id, d.asset_source FROM devices d"
        " LEFT JOIN device_paths p ON p.tenant_id = d.tenant_id AND p.gateway_id = d.gateway_id"
        " AND p.device = d.name WHERE d.tenant_id = %s AND d.gateway_id = %s"
        " AND (d.asset_source IS NULL OR d.asset_source = 'gateway')"
    )
    params: list[Any] = [tenant_id, gateway_id]
    if devices is not None:
        if not devices:
            return
        sql += f" AND d.name IN ({', '.join(['%s'] * len(devices))})"
        params.extend(devices)
    cache = {} if cache is None else cache
    rows = await tx.fetch(sql, params)
    if budget is None:
        budget = await asset_budget(tx, tenant_id) if rows else AssetBudget(0)
    moves: dict[int | None, list[int]] = {}
    for device_id, path, current, source in rows:
        levels = gateway_levels(path) if path is not None else None
        target = None
        if levels is not None:
            target = await _resolve(tx, tenant_id, levels, now_us, cache=cache, budget=budget)
        if target is None and source is None:
            continue  # nothing to place, and nothing the gateway placed to undo
        if target != current or source is None:
            moves.setdefault(target, []).append(int(device_id))
    for target, ids in moves.items():
        marks = ", ".join(["%s"] * len(ids))
        await tx.execute(
            "UPDATE devices SET asset_id = %s, asset_source = %s"
            f" WHERE tenant_id = %s AND id IN ({marks})",
            [target, None if target is None else "gateway", tenant_id, *ids],
        )


async def apply_asset_paths(
    tx: Tx, tenant_id: int, gateway_id: int, report: AssetPaths, *, now_us: int
) -> None:
    """Keep the paths a gateway reported (the newest report only), create the assets they
    name, and place the gateway's devices that are not pinned."""
    changed = await tx.execute(
        "UPDATE gateways SET paths_seq = %s WHERE tenant_id = %s AND id = %s"
        " AND (paths_seq IS NULL OR paths_seq < %s)",
        [report.seq, tenant_id, gateway_id, report.seq],
    )
    if not changed:
        return  # a replay, or an older report arriving late
    await tx.execute(
        "DELETE FROM device_paths WHERE tenant_id = %s AND gateway_id = %s", [tenant_id, gateway_id]
    )
    rows = sorted(report.devices.items())
    for first in range(0, len(rows), _INSERT_ROWS):
        part = rows[first : first + _INSERT_ROWS]
        marks = ", ".join(["(%s, %s, %s, %s)"] * len(part))
        await tx.execute(
            f"INSERT INTO device_paths (tenant_id, gateway_id, device, path) VALUES {marks}",
            [v for device, path in part for v in (tenant_id, gateway_id, device, path)],
        )
    # every path names assets, whether its device has appeared yet or not, but for the devices
    # a user pinned (a renamed, moved or deleted subtree's old paths would come back)
    pinned = {str(r[0]) for r in await tx.fetch(
        "SELECT name FROM devices WHERE tenant_id = %s AND gateway_id = %s"
        " AND asset_source = 'api'", [tenant_id, gateway_id],
    )}  # fmt: skip
    cache: dict[tuple[str, ...], Node | None] = {}
    budget = await asset_budget(tx, tenant_id)
    for path in sorted({p for d, p in report.devices.items() if d not in pinned}):
        levels = gateway_levels(path)
        if levels is not None:
            await _resolve(tx, tenant_id, levels, now_us, cache=cache, budget=budget)
    await place_reported(tx, tenant_id, gateway_id, now_us=now_us, cache=cache, budget=budget)
    if budget.refused:
        log.warning(
            "tenant %s gateway %s: %d paths need assets past the limits (%d per tenant, %d per"
            " report); their devices are not placed",
            tenant_id, gateway_id, budget.refused, MAX_ASSETS, MAX_NEW_ASSETS,
        )  # fmt: skip
