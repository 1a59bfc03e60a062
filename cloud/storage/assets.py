"""The ISA-95 asset tree of a tenant (`cloud.storage.asset_schema`), devices placed in it by
users, and telemetry read by asset.

Sites, areas, lines and equipment; a child's level always below its parent's, names unique among
siblings. Renaming or moving an asset rewrites the stored paths of its subtree in one statement
and pins the devices their gateways placed in it (``asset_source = 'api'``: the gateways' old
paths would make the old chain again and move them there); a move may not put an asset under
itself. Deleting refuses while the asset has children or
devices, unless cascading: then the subtree goes, and its devices stay, unassigned and pinned so
(``asset_source = 'api'``): their gateways' paths do not place them again (a gateway's next report
does create the assets its paths name), and ``DELETE /v1/devices/{id}/asset`` hands a device
back to its gateway's path. A user's placement
(a pin) always wins over the gateway's path (`cloud.storage.asset_tree`).

Reads by asset look up the series of the subtree in the metadata first and then read telemetry
by series id alone, never joining the two in one query (Citus refuses such joins).
"""

from __future__ import annotations

from typing import Any

from cloud.errors import AssetCycle, AssetLevel, AssetNameTaken, AssetNotEmpty, NotFound
from cloud.storage.asset_schema import LEVELS
from cloud.storage.asset_tree import (
    ASSET_COLUMNS,
    DEVICE_COLUMNS,
    DEVICE_FROM,
    Node,
    asset_from_row,
    device_from_row,
    insert,
    node,
    place_reported,
    rank,
    sibling_named,
    subtree,
)
from cloud.storage.base import Database, Row, Tx
from cloud.storage.records import Asset, AssetLatestValue, Device, SeriesBuckets
from cloud.storage.telemetry import buckets_of_series, latest_of_series, value_of


def _level_error(level: str, parent_level: str) -> AssetLevel:
    return AssetLevel(
        f"a {level} cannot be under a {parent_level}: a child's level must be below its"
        f" parent's ({', '.join(LEVELS)}, from the top)",
        details={"parent_level": parent_level, "level": level},
    )


def _name_taken(name: str) -> AssetNameTaken:
    return AssetNameTaken(f"an asset named {name!r} exists there", details={"name": name})


class AssetStore:
    """A tenant's asset tree, device placement and reads by asset.

    Args:
        db: the backend.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---------------------------------------------------------------------------- the tree

    async def create(
        self, tenant_id: int, *, parent_id: int | None, level: str, name: str, now_us: int
    ) -> Asset:
        """A new asset under `parent_id` (None: at the root)."""
        async with self.db.transaction(tenant_id) as tx:
            parent = None
            if parent_id is not None:
                parent = await node(tx, tenant_id, parent_id, "parent asset")
                if rank(level) <= rank(parent.asset.level):
                    raise _level_error(level, parent.asset.level)
            if await sibling_named(tx, tenant_id, parent_id, name) is not None:
                raise _name_taken(name)
            asset_id = await insert(tx, tenant_id, parent, level=level, name=name, now_us=now_us)
            if asset_id is None:
                raise _name_taken(name)
            return (await node(tx, tenant_id, asset_id)).asset

    async def list_assets(self, tenant_id: int, *, parent_id: int | None = None) -> list[Asset]:
        """The tenant's assets in path order (only the children of `parent_id`, if given)."""
        sql = f"SELECT {ASSET_COLUMNS} FROM assets WHERE tenant_id = %s"
        params: list[Any] = [tenant_id]
        if parent_id is not None:
            sql += " AND parent_id = %s"
            params.append(parent_id)
        async with self.db.transaction(tenant_id) as tx:
            if parent_id is not None:
                await node(tx, tenant_id, parent_id)
            rows = await tx.fetch(sql + " ORDER BY path, id", params)
        return [asset_from_row(r) for r in rows]

    async def get(self, tenant_id: int, asset_id: int) -> Asset:
        """One asset."""
        async with self.db.transaction(tenant_id) as tx:
            return (await node(tx, tenant_id, asset_id)).asset

    async def update(
        self, tenant_id: int, asset_id: int, *, name: str | None = None,
        move: bool = False, parent_id: int | None = None,
    ) -> Asset:  # fmt: skip
        """Rename the asset and/or (with `move`) move it under `parent_id` (None: the root),
        its subtree with it; the devices their gateways placed in the subtree become pinned."""
        async with self.db.transaction(tenant_id) as tx:
            this = await node(tx, tenant_id, asset_id)
            old = this.asset
            new_parent_id = parent_id if move else old.parent_id
            parent: Node | None = None
            if new_parent_id is not None:
                parent = await node(tx, tenant_id, new_parent_id, "parent asset")
                if parent.id_path.startswith(this.id_path):
                    raise AssetCycle("an asset cannot move under itself or its descendants",
                                     details={"parent_id": new_parent_id})  # fmt: skip
                if rank(old.level) <= rank(parent.asset.level):
                    raise _level_error(old.level, parent.asset.level)
            new_name = old.name if name is None else name
            if (new_name, new_parent_id) == (old.name, old.parent_id):
                return old
            taken = await sibling_named(tx, tenant_id, new_parent_id, new_name)
            if taken is not None and taken != asset_id:
                raise _name_taken(new_name)
            path = new_name if parent is None else f"{parent.asset.path}/{new_name}"
            id_path = f"{'/' if parent is None else parent.id_path}{asset_id}/"
            await tx.execute(
                "UPDATE assets SET name = %s, parent_id = %s WHERE tenant_id = %s AND id = %s",
                [new_name, new_parent_id, tenant_id, asset_id],
            )
            # the asset and its descendants: the new prefix, then what followed the old one
            await tx.execute(
                "UPDATE assets SET path = %s || substr(path, CAST(%s AS INTEGER)),"
                " id_path = %s || substr(id_path, CAST(%s AS INTEGER))"
                " WHERE tenant_id = %s AND id_path LIKE %s",
                [path, len(old.path) + 1, id_path, len(this.id_path) + 1, tenant_id,
                 subtree(this.id_path)],
            )  # fmt: skip
            # the operator's decision stands: the gateways' old paths would otherwise make the
            # old chain again and move the subtree's devices there
            await tx.execute(
                "UPDATE devices SET asset_source = 'api' WHERE tenant_id = %s"
                " AND asset_source = 'gateway' AND asset_id IN"
                " (SELECT id FROM assets WHERE tenant_id = %s AND id_path LIKE %s)",
                [tenant_id, tenant_id, subtree(id_path)],
            )
            return (await node(tx, tenant_id, asset_id)).asset

    async def delete(self, tenant_id: int, asset_id: int, *, cascade: bool) -> None:
        """Delete the asset; `AssetNotEmpty` while it has children or devices, unless
        `cascade`: then its subtree goes and the devices under it stay, unassigned and pinned
        so (their gateways' paths do not place them again)."""
        async with self.db.transaction(tenant_id) as tx:
            this = await node(tx, tenant_id, asset_id)
            pattern = subtree(this.id_path)
            counts = await tx.fetchone(
                "SELECT (SELECT count(*) FROM assets WHERE tenant_id = %s AND parent_id = %s),"
                " (SELECT count(*) FROM devices WHERE tenant_id = %s AND asset_id IN"
                " (SELECT id FROM assets WHERE tenant_id = %s AND id_path LIKE %s))",
                [tenant_id, asset_id, tenant_id, tenant_id, pattern],
            )
            children, devices = (int(counts[0]), int(counts[1])) if counts else (0, 0)
            if (children or devices) and not cascade:
                raise AssetNotEmpty(
                    f"the asset has {children} children and {devices} devices under it; move"
                    " or delete them first, or delete with ?cascade=true",
                    details={"children": children, "devices": devices},
                )
            await tx.execute(
                "UPDATE devices SET asset_id = NULL, asset_source = 'api' WHERE tenant_id = %s"
                " AND asset_id IN (SELECT id FROM assets WHERE tenant_id = %s AND id_path LIKE %s)",
                [tenant_id, tenant_id, pattern],
            )
            await tx.execute(
                "DELETE FROM assets WHERE tenant_id = %s AND id_path LIKE %s", [tenant_id, pattern]
            )

    # ------------------------------------------------------------------- device placement

    async def _device(self, tx: Tx, tenant_id: int, device_id: int) -> Device:
        row = await tx.fetchone(
            f"SELECT {DEVICE_COLUMNS} FROM {DEVICE_FROM} WHERE d.tenant_id = %s AND d.id = %s",
            [tenant_id, device_id],
        )
        if row is None:
            raise NotFound("device not found")
        return device_from_row(row)

    async def pin_device(self, tenant_id: int, device_id: int, asset_id: int | None) -> Device:
        """Place a device under `asset_id` (None: nowhere), pinned: its gateway's path no
        longer moves it."""
        async with self.db.transaction(tenant_id) as tx:
            await self._device(tx, tenant_id, device_id)
            if asset_id is not None:
                await node(tx, tenant_id, asset_id)
            await tx.execute(
                "UPDATE devices SET asset_id = %s, asset_source = 'api'"
                " WHERE tenant_id = %s AND id = %s",
                [asset_id, tenant_id, device_id],
            )
            return await self._device(tx, tenant_id, device_id)

    async def unpin_device(self, tenant_id: int, device_id: int, *, now_us: int) -> Device:
        """Hand a device back to its gateway's path: placed by the path the gateway reported
        for it, unassigned when it reported none."""
        async with self.db.transaction(tenant_id) as tx:
            device = await self._device(tx, tenant_id, device_id)
            await tx.execute(
                "UPDATE devices SET asset_id = NULL, asset_source = NULL"
                " WHERE tenant_id = %s AND id = %s",
                [tenant_id, device_id],
            )
            await place_reported(tx, tenant_id, device.gateway_id, now_us=now_us,
                                 devices=[device.name])  # fmt: skip
            return await self._device(tx, tenant_id, device_id)

    # ------------------------------------------------------------------- reads by asset

    async def _subtree_series(self, tx: Tx, tenant_id: int, asset_id: int,
                              tag: str | None = None) -> list[Row]:  # fmt: skip
        """(series id, device id, device, tag, unit, simulated, asset id, asset path) of every
        series of every device under the asset, by path, device and tag (metadata only)."""
        where, params = await _subtree_series_where(tx, tenant_id, asset_id, tag)
        return await tx.fetch(
            "SELECT s.id, d.id, d.name, s.tag, s.unit, s.simulated, a.id, a.path"
            f" {where} ORDER BY a.path, d.name, s.tag",
            params,
        )

    async def latest(self, tenant_id: int, asset_id: int) -> list[AssetLatestValue]:
        """The newest reading of every series of every device under the asset (its whole
        subtree); series without a reading are left out."""
        async with self.db.transaction(tenant_id) as tx:
            series = await self._subtree_series(tx, tenant_id, asset_id)
            newest = await latest_of_series(self.db, tx, tenant_id, [int(s[0]) for s in series])
        out = []
        for s in series:
            found = newest.get(int(s[0]))
            if found is None:
                continue
            ts, num, text, quality, exact = found
            out.append(AssetLatestValue(
                series_id=s[0], device_id=s[1], device=s[2], tag=s[3], unit=s[4], ts=ts,
                value=value_of(num, text, exact), quality=quality, simulated=bool(s[5]),
                asset_id=s[6], asset_path=s[7],
            ))  # fmt: skip
        return out

    async def count_series(self, tenant_id: int, asset_id: int, *, tag: str | None) -> int:
        """How many series the asset's subtree holds (of `tag` only, when given)."""
        async with self.db.transaction(tenant_id) as tx:
            where, params = await _subtree_series_where(tx, tenant_id, asset_id, tag)
            row = await tx.fetchone(f"SELECT count(*) {where}", params)
        return 0 if row is None else int(row[0])

    async def aggregate(
        self, tenant_id: int, asset_id: int, *, start: int, end: int, bucket_us: int,
        tag: str | None = None,
    ) -> list[SeriesBuckets]:  # fmt: skip
        """Per series under the asset (of `tag` only, when given): min/max/avg/last/count per
        time bucket in [start, end), as for one series."""
        async with self.db.transaction(tenant_id) as tx:
            series = await self._subtree_series(tx, tenant_id, asset_id, tag)
            ids = [int(s[0]) for s in series]
            buckets = await buckets_of_series(
                self.db, tx, tenant_id, ids, start=start, end=end, bucket_us=bucket_us
            )
        return [
            SeriesBuckets(
                series_id=s[0],
                device_id=s[1],
                device=s[2],
                tag=s[3],
                unit=s[4],
                simulated=bool(s[5]),
                asset_id=s[6],
                asset_path=s[7],
                buckets=buckets[int(s[0])],
            )
            for s in series
        ]


async def _subtree_series_where(
    tx: Tx, tenant_id: int, asset_id: int, tag: str | None
) -> tuple[str, list[Any]]:
    """The FROM ... WHERE of the series of every device under the asset (of `tag` only, when
    given), with its parameters; `NotFound` for an asset the tenant does not have."""
    this = await node(tx, tenant_id, asset_id)
    sql = (
        "FROM assets a"
        " JOIN devices d ON d.tenant_id = a.tenant_id AND d.asset_id = a.id"
        " JOIN series s ON s.tenant_id = d.tenant_id AND s.device_id = d.id"
        " WHERE a.tenant_id = %s AND a.id_path LIKE %s"
    )
    params: list[Any] = [tenant_id, subtree(this.id_path)]
    if tag is not None:
        sql += " AND s.tag = %s"
        params.append(tag)
    return sql, params
