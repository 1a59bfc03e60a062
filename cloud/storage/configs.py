"""Config versions, what each gateway should run, and who changed what and when.

A version is an immutable document (the YAML or JSON the agent reads) with its SHA-256. The
cloud's wish for a gateway is its *desired* version (`assign`): set by a rollout (`cloud.storage
.rollouts`), wave by wave, or, for a gateway that joins a label after that label's rollout
completed, when it next connects. A gateway with its own assignment is *pinned*: label rollouts
pass it by. Every assignment and every outcome the gateway reports is a `ConfigEvent`.

Secrets never leave here for users below admin: documents, diffs and the gateway's drifted file
go through `cloud.config_docs.redact` unless the caller may see them (`reveal`).
"""

from __future__ import annotations

import json
from typing import Any, Final

from cloud.config_docs import diff, redact
from cloud.contract import ConfigDocument, config_digest
from cloud.errors import NotFound
from cloud.live import GatewayWake, News
from cloud.storage.base import Database, Row, Tx
from cloud.storage.fleet_records import (
    Assignment,
    ConfigDiff,
    ConfigEvent,
    ConfigOutcome,
    ConfigVersion,
    Drift,
    GatewayConfig,
)

_VERSION: Final = "id, digest, size, created_at, created_by, comment, source, gateway_id"
_GATEWAY_CONFIG: Final = (
    "pinned, desired_version, desired_at, desired_by, desired_via, rollout_id, managed,"
    " running_version, running_digest, outcome, outcome_version, outcome_digest, reason,"
    " problems, outcome_at, last_good_version, local_digest, local_document, local_at"
)
_NAMES: Final = _GATEWAY_CONFIG.replace(" ", "").split(",")


def _version(row: Row, document: str | None = None, *, reveal: bool = True) -> ConfigVersion:
    shown = document if document is None or reveal else redact(document)
    return ConfigVersion(
        version=row[0], digest=row[1], size=row[2], created_at=row[3], created_by=row[4],
        comment=row[5], source=row[6], gateway_id=row[7], document=shown,
        redacted=document is not None and not reveal,
    )  # fmt: skip


async def gateway_exists(tx: Tx, tenant_id: int, gateway_id: int) -> None:
    """`NotFound` unless the tenant has this gateway."""
    if not await tx.fetchone(
        "SELECT 1 FROM gateways WHERE tenant_id = %s AND id = %s", [tenant_id, gateway_id]
    ):
        raise NotFound("gateway not found")


async def log_event(
    tx: Tx,
    tenant_id: int,
    gateway_id: int,
    *,
    at: int,
    kind: str,
    version: int | None,
    by: str,
    detail: dict[str, Any],
) -> None:
    """One line of the gateway's config history."""
    await tx.execute(
        "INSERT INTO config_events (tenant_id, gateway_id, at, kind, version, by_whom, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        [tenant_id, gateway_id, at, kind, version, by, json.dumps(detail)],
    )


async def ensure_row(tx: Tx, tenant_id: int, gateway_id: int) -> None:
    """The gateway's `gateway_configs` row exists afterwards."""
    await tx.execute(
        "INSERT INTO gateway_configs (gateway_id, tenant_id) VALUES (%s, %s)"
        " ON CONFLICT (gateway_id) DO NOTHING",
        [gateway_id, tenant_id],
    )


async def assign(
    tx: Tx,
    tenant_id: int,
    gateway_id: int,
    *,
    version: int | None,
    by: str,
    via: str,
    rollout_id: int | None,
    now_us: int,
    news: News,
    pin: bool | None = None,
) -> None:
    """Make `version` the gateway's desired version (None: the cloud wants nothing), record it
    in the history and wake the gateway's channel."""
    await ensure_row(tx, tenant_id, gateway_id)
    await tx.execute(
        "UPDATE gateway_configs SET desired_version = %s, desired_at = %s, desired_by = %s,"
        " desired_via = %s, rollout_id = %s, pinned = COALESCE(%s, pinned)"
        " WHERE tenant_id = %s AND gateway_id = %s",
        [version, now_us, by, via, rollout_id, None if pin is None else int(pin),
         tenant_id, gateway_id],
    )  # fmt: skip
    detail: dict[str, Any] = {"via": via}
    if rollout_id is not None:
        detail["rollout_id"] = rollout_id
    await log_event(tx, tenant_id, gateway_id, at=now_us, kind="assigned", version=version,
                    by=by, detail=detail)  # fmt: skip
    news.add(GatewayWake(gateway_id))


class ConfigStore:
    """The tenant's config versions and its gateways' config state."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------------------ versions

    async def create_version(
        self,
        tx: Tx,
        tenant_id: int,
        *,
        document: str,
        comment: str | None,
        by: str,
        source: str = "cloud",
        gateway_id: int | None = None,
        now_us: int,
    ) -> ConfigVersion:
        """Store a new version of a document (already checked by `parse_document`)."""
        row = await tx.fetchone(
            "INSERT INTO config_versions (tenant_id, document, digest, size, created_at,"
            " created_by, comment, source, gateway_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            f" RETURNING {_VERSION}",
            [tenant_id, document, config_digest(document), len(document.encode("utf-8")), now_us,
             by, comment, source, gateway_id],
        )  # fmt: skip
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
        return _version(row)

    async def _row(self, tx: Tx, tenant_id: int, version: int) -> tuple[Row, str]:
        row = await tx.fetchone(
            f"SELECT {_VERSION}, document FROM config_versions WHERE tenant_id = %s AND id = %s",
            [tenant_id, version],
        )
        if row is None:
            raise NotFound(f"config version {version} not found")
        return row[:-1], str(row[-1])

    async def document_text(self, tx: Tx, tenant_id: int, version: int) -> str:
        """The stored text of a version (secrets included: for the service's own use)."""
        return (await self._row(tx, tenant_id, version))[1]

    async def version(self, tenant_id: int, version: int, *, reveal: bool) -> ConfigVersion:
        """One version with its document (secrets redacted unless `reveal`)."""
        async with self.db.transaction(tenant_id) as tx:
            row, document = await self._row(tx, tenant_id, version)
        return _version(row, document, reveal=reveal)

    async def versions(
        self, tenant_id: int, *, gateway_id: int | None, before: int | None, limit: int
    ) -> list[ConfigVersion]:
        """Versions newest first; with `gateway_id`, those assigned to or adopted from it."""
        sql = f"SELECT {_VERSION} FROM config_versions v WHERE tenant_id = %s"
        params: list[Any] = [tenant_id]
        if gateway_id is not None:
            sql += (
                " AND (v.gateway_id = %s OR EXISTS (SELECT 1 FROM config_events e"
                " WHERE e.tenant_id = v.tenant_id AND e.gateway_id = %s AND e.version = v.id"
                " AND e.kind = 'assigned'))"
            )
            params += [gateway_id, gateway_id]
        if before is not None:
            sql += " AND id < %s"
            params.append(before)
        async with self.db.transaction(tenant_id) as tx:
            if gateway_id is not None:
                await gateway_exists(tx, tenant_id, gateway_id)
            rows = await tx.fetch(sql + " ORDER BY id DESC LIMIT %s", [*params, limit])
        return [_version(r) for r in rows]

    async def diff(self, tenant_id: int, old: int, new: int, *, reveal: bool) -> ConfigDiff:
        """A unified diff from version `old` to version `new`."""
        async with self.db.transaction(tenant_id) as tx:
            _, before = await self._row(tx, tenant_id, old)
            _, after = await self._row(tx, tenant_id, new)
        if not reveal:
            before, after = redact(before), redact(after)
        text = diff(before, after, old_name=f"version {old}", new_name=f"version {new}")
        return ConfigDiff(from_version=old, to_version=new, diff=text, redacted=not reveal)

    # ---------------------------------------------------------------------- gateway's state

    async def gateway_config(
        self, tenant_id: int, gateway_id: int, *, reveal: bool
    ) -> GatewayConfig:
        """What the cloud wants the gateway to run, what it runs, how the last version went,
        and its drifted file (with a diff from the desired version) if it was edited there."""
        async with self.db.transaction(tenant_id) as tx:
            await gateway_exists(tx, tenant_id, gateway_id)
            row = await tx.fetchone(
                f"SELECT {_GATEWAY_CONFIG} FROM gateway_configs"
                " WHERE tenant_id = %s AND gateway_id = %s",
                [tenant_id, gateway_id],
            )
            if row is None:
                return GatewayConfig(gateway_id=gateway_id, redacted=not reveal)
            c = dict(zip(_NAMES, row, strict=True))
            desired = None
            if c["desired_version"] is not None:
                _, desired_doc = await self._row(tx, tenant_id, c["desired_version"])
                desired = Assignment(
                    version=c["desired_version"], digest=config_digest(desired_doc),
                    at=c["desired_at"], by=c["desired_by"], via=c["desired_via"],
                    rollout_id=c["rollout_id"],
                )  # fmt: skip
            else:
                desired_doc = None
        return GatewayConfig(
            gateway_id=gateway_id, managed=c["managed"], pinned=bool(c["pinned"]),
            desired=desired, running_version=c["running_version"],
            running_digest=c["running_digest"], last_good_version=c["last_good_version"],
            last=_outcome(c), drift=_drift(c, desired_doc, reveal=reveal), redacted=not reveal,
        )  # fmt: skip

    async def history(
        self, tenant_id: int, gateway_id: int, *, before: int | None, limit: int
    ) -> list[ConfigEvent]:
        """The gateway's config history, newest first."""
        sql = (
            "SELECT id, gateway_id, at, kind, version, by_whom, detail FROM config_events"
            " WHERE tenant_id = %s AND gateway_id = %s"
        )
        params: list[Any] = [tenant_id, gateway_id]
        if before is not None:
            sql += " AND id < %s"
            params.append(before)
        async with self.db.transaction(tenant_id) as tx:
            await gateway_exists(tx, tenant_id, gateway_id)
            rows = await tx.fetch(sql + " ORDER BY id DESC LIMIT %s", [*params, limit])
        return [_event(r) for r in rows]

    async def unpin(self, tenant_id: int, gateway_id: int, *, by: str, now_us: int) -> None:
        """Forget the gateway's own assignment: the next label rollout reaches it again."""
        async with self.db.transaction(tenant_id) as tx:
            await gateway_exists(tx, tenant_id, gateway_id)
            await tx.execute(
                "UPDATE gateway_configs SET pinned = 0 WHERE tenant_id = %s AND gateway_id = %s",
                [tenant_id, gateway_id],
            )
            await log_event(tx, tenant_id, gateway_id, at=now_us, kind="unpinned", version=None,
                            by=by, detail={})  # fmt: skip

    # -------------------------------------------------------------------- the gateway's side

    async def desired(
        self, tx: Tx, tenant_id: int, gateway_id: int, *, now_us: int, news: News
    ) -> tuple[int, str, int, str, int | None] | None:
        """(version, digest, assigned at, by, rollout) the gateway should run, or None.

        A gateway without one that is not pinned takes the version of the newest completed
        rollout to one of its labels (it joined the label after that rollout).
        """
        row = await tx.fetchone(
            "SELECT c.desired_version, v.digest, c.desired_at, c.desired_by, c.rollout_id,"
            " c.pinned FROM gateway_configs c LEFT JOIN config_versions v"
            " ON v.tenant_id = c.tenant_id AND v.id = c.desired_version"
            " WHERE c.tenant_id = %s AND c.gateway_id = %s",
            [tenant_id, gateway_id],
        )
        if row is not None and row[0] is not None:
            return int(row[0]), str(row[1]), int(row[2]), str(row[3]), row[4]
        if row is not None and row[5]:
            return None
        joined = await tx.fetchone(
            "SELECT r.id, r.version_id, r.label_key, r.label_value FROM rollouts r"
            " JOIN gateway_labels l ON l.tenant_id = r.tenant_id AND l.gateway_id = %s"
            " AND l.key = r.label_key AND l.value = r.label_value"
            " WHERE r.tenant_id = %s AND r.state = 'completed' ORDER BY r.id DESC LIMIT 1",
            [gateway_id, tenant_id],
        )
        if joined is None:
            return None
        via = f"label {joined[2]}={joined[3]}"
        await assign(tx, tenant_id, gateway_id, version=int(joined[1]), by=f"rollout {joined[0]}",
                     via=via, rollout_id=int(joined[0]), now_us=now_us, news=news)  # fmt: skip
        return await self.desired(tx, tenant_id, gateway_id, now_us=now_us, news=news)

    async def document_for(
        self, tx: Tx, tenant_id: int, gateway_id: int, version: int | None, *, now_us: int,
        news: News,
    ) -> ConfigDocument:  # fmt: skip
        """A document the gateway may read: its desired one (`version` None), or any version
        assigned to it or adopted from it (never another gateway's)."""
        if version is None:
            found = await self.desired(tx, tenant_id, gateway_id, now_us=now_us, news=news)
            if found is None:
                raise NotFound("the cloud assigns no config version to this gateway")
            version = found[0]
        allowed = await tx.fetchone(
            "SELECT 1 FROM config_versions v WHERE v.tenant_id = %s AND v.id = %s"
            " AND (v.gateway_id = %s OR EXISTS (SELECT 1 FROM config_events e"
            " WHERE e.tenant_id = v.tenant_id AND e.gateway_id = %s AND e.version = v.id"
            " AND e.kind = 'assigned'))",
            [tenant_id, version, gateway_id, gateway_id],
        )
        if allowed is None:
            raise NotFound(f"config version {version} is not one assigned to this gateway")
        row, document = await self._row(tx, tenant_id, version)
        return ConfigDocument(version=row[0], digest=row[1], document=document,
                              created_at=row[3], created_by=row[4])  # fmt: skip

    async def store_local(
        self, tenant_id: int, gateway_id: int, document: str, *, now_us: int
    ) -> None:
        """Keep the gateway's drifted file, to show next to the desired version."""
        async with self.db.transaction(tenant_id) as tx:
            await ensure_row(tx, tenant_id, gateway_id)
            digest = config_digest(document)
            await tx.execute(
                "UPDATE gateway_configs SET local_document = %s, local_digest = %s,"
                " local_at = CASE WHEN local_digest = %s THEN local_at ELSE %s END"
                " WHERE tenant_id = %s AND gateway_id = %s",
                [document, digest, digest, now_us, tenant_id, gateway_id],
            )

    async def adopt(
        self, tx: Tx, tenant_id: int, gateway_id: int, document: str, *, comment: str | None,
        now_us: int, news: News,
    ) -> ConfigVersion:  # fmt: skip
        """The gateway's own file becomes a new version and its own assignment (``tagway
        config push``): from now on the cloud wants what the gateway runs."""
        by = f"gateway {gateway_id}"
        created = await self.create_version(
            tx, tenant_id, document=document, comment=comment or "adopted from the gateway",
            by=by, source="gateway", gateway_id=gateway_id, now_us=now_us,
        )  # fmt: skip
        await log_event(tx, tenant_id, gateway_id, at=now_us, kind="adopted",
                        version=created.version, by=by,
                        detail={"digest": created.digest})  # fmt: skip
        await assign(tx, tenant_id, gateway_id, version=created.version, by=by, via="gateway",
                     rollout_id=None, now_us=now_us, news=news, pin=True)  # fmt: skip
        return created


def _event(r: Row) -> ConfigEvent:
    return ConfigEvent(
        id=r[0], gateway_id=r[1], at=r[2], kind=r[3], version=r[4], by=r[5],
        detail=json.loads(r[6]) if r[6] else {},
    )  # fmt: skip


def _outcome(c: dict[str, Any]) -> ConfigOutcome | None:
    if c["outcome"] is None:
        return None
    return ConfigOutcome(
        outcome=c["outcome"], version=c["outcome_version"], digest=c["outcome_digest"],
        reason=c["reason"], problems=json.loads(c["problems"] or "[]"), at=c["outcome_at"],
    )  # fmt: skip


def _drift(c: dict[str, Any], desired_doc: str | None, *, reveal: bool) -> Drift | None:
    """The drifted file, while the gateway runs it and it is not what the cloud wants."""
    digest = c["local_digest"]
    if digest is None or digest != c["running_digest"]:
        return None
    if desired_doc is not None and config_digest(desired_doc) == digest:
        return None  # adopted, or the same text pushed from the cloud
    local = c["local_document"]
    if local is not None and config_digest(local) != digest:
        local = None  # an upload of an earlier edit
    shown_local = local if local is None or reveal else redact(local)
    shown_desired = desired_doc if desired_doc is None or reveal else redact(desired_doc)
    text = None
    if shown_local is not None and shown_desired is not None:
        text = diff(shown_desired, shown_local, old_name="desired", new_name="on the gateway")
    return Drift(digest=digest, at=c["local_at"], document=shown_local, diff=text)
