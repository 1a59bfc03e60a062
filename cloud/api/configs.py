"""Remote configuration: config versions, rollouts, each gateway's config state and history,
and the gateway's own side (its document, its drifted file, ``tagway config push``).

Admins push versions and start rollouts; anyone in the tenant reads, with secrets redacted
below admin. The gateway learns its desired version on its channel (event ``config``, see
`cloud.api.commands`), fetches the document here, applies it with a probation and reports each
step through its outbox (`cloud.contract.ConfigReport`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Query, Response
from pydantic import AfterValidator, Field, model_validator

from cloud.api.deps import (
    AdminCaller,
    Caller,
    GatewayCaller,
    Id,
    IdFilter,
    Rt,
    Runtime,
    ViewerTenant,
    now_us,
    who,
)
from cloud.api.schemas import Body, JsonInt
from cloud.auth import Principal, PrincipalKind, Role
from cloud.config_docs import parse_document, parse_label, probation_s
from cloud.contract import MAX_CONFIG_BYTES, ConfigDocument, storable
from cloud.storage.fleet_records import (
    ConfigDiff,
    ConfigEvent,
    ConfigVersion,
    GatewayConfig,
    Rollout,
)

router = APIRouter(tags=["configs"])


def _storable(text: str) -> str:
    if not storable(text):
        raise ValueError("NUL and lone surrogates cannot be stored")
    return text


Document = Annotated[str, Field(min_length=1, max_length=MAX_CONFIG_BYTES)]
Comment = Annotated[str, Field(max_length=1_000), AfterValidator(_storable)]
Before = Annotated[int | None, Query(ge=1, le=2**63 - 1, description="ids below")]
Limit = Annotated[int, Query(ge=1, le=1_000)]
DEFAULT_WAVE_PERCENT = 20
CONFIG_BODY: dict[str, Any] = {"x-body-limit": "config"}  # a document, JSON-escaped: see guard


class ConfigCreate(Body):
    """A config document: the YAML or JSON the agent reads, as text."""

    document: Document
    comment: Comment | None = None


class RolloutCreate(Body):
    """Send a version to one gateway (`gateway_id`) or to every gateway carrying `label`
    (``key=value``), in waves of `wave_size` gateways or `wave_percent` of them (default 20%).
    `wave_timeout_s` is how long each gateway of a wave has to pass its probation (default:
    the document's ``fleet.probation`` plus a margin)."""

    version: Annotated[int, Field(ge=1, le=2**63 - 1), JsonInt]
    gateway_id: Annotated[int, Field(ge=1, le=2**63 - 1), JsonInt] | None = None
    label: Annotated[str, Field(max_length=310)] | None = None
    wave_size: Annotated[int, Field(ge=1, le=100_000), JsonInt] | None = None
    wave_percent: Annotated[int, Field(ge=1, le=100), JsonInt] | None = None
    wave_timeout_s: Annotated[int, Field(ge=1, le=86_400), JsonInt] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.gateway_id is None) == (self.label is None):
            raise ValueError("name exactly one target: gateway_id or label")
        if self.wave_size is not None and self.wave_percent is not None:
            raise ValueError("give wave_size or wave_percent, not both")
        return self


def reveals_secrets(caller: Principal) -> bool:
    """Admins see secrets in documents; operators and viewers see them redacted."""
    return caller.kind is PrincipalKind.USER and caller.role is Role.ADMIN


# ------------------------------------------------------------------------------- versions


@router.post("/v1/configs", status_code=201, openapi_extra=CONFIG_BODY)
async def create_config(body: ConfigCreate, caller: AdminCaller, rt: Rt) -> ConfigVersion:
    """Store a new config version (admin). It runs nowhere until a rollout assigns it.

    The cloud only checks that the document is a mapping of sections: validate it with
    ``tagway config validate`` first (``tagway cloud config push`` does); the gateway refuses
    an invalid one with the validator's problems and keeps running its current config."""
    tenant_id = caller.require_user(Role.ADMIN)
    parse_document(body.document, path=["body", "document"])
    async with rt.db.transaction(tenant_id) as tx:
        return await rt.configs.create_version(
            tx, tenant_id, document=body.document, comment=body.comment, by=who(caller),
            now_us=now_us(),
        )  # fmt: skip


@router.get("/v1/configs")
async def list_configs(
    tenant_id: ViewerTenant, rt: Rt, gateway_id: IdFilter = None, before: Before = None,
    limit: Limit = 100,
) -> list[ConfigVersion]:  # fmt: skip
    """Config versions newest first (with `gateway_id`: those assigned to or adopted from it)."""
    return await rt.configs.versions(tenant_id, gateway_id=gateway_id, before=before, limit=limit)


@router.get("/v1/configs/{version}")
async def get_config(version: Id, caller: Caller, rt: Rt) -> ConfigVersion:
    """One version with its document; secrets are redacted unless the caller is an admin."""
    tenant_id = caller.require_user(Role.VIEWER)
    return await rt.configs.version(tenant_id, version, reveal=reveals_secrets(caller))


@router.get("/v1/configs/{version}/diff")
async def diff_config(
    version: Id,
    caller: Caller,
    rt: Rt,
    from_version: Annotated[int, Query(alias="from", ge=1, le=2**63 - 1)],
) -> ConfigDiff:
    """A unified diff from version `from` to this one (secrets redacted below admin)."""
    tenant_id = caller.require_user(Role.VIEWER)
    return await rt.configs.diff(tenant_id, from_version, version, reveal=reveals_secrets(caller))


# ------------------------------------------------------------------------------- rollouts


@router.post("/v1/rollouts", status_code=201, tags=["rollouts"])
async def create_rollout(body: RolloutCreate, caller: AdminCaller, rt: Rt) -> Rollout:
    """Assign a version to a gateway or a label (admin), wave by wave: the next wave starts
    when every gateway of the previous one passed its probation; the first failure stops the
    rollout with every gateway on a known version. A newer rollout to the same target
    supersedes a running one. A gateway's own assignment wins over a label's."""
    tenant_id = caller.require_user(Role.ADMIN)
    label = parse_label(body.label, path=["body", "label"]) if body.label is not None else None
    timeout = body.wave_timeout_s or rt.settings.rollout_wave_timeout_s
    async with rt.repo.live(tenant_id) as (tx, news):
        if timeout is None:
            document = await rt.configs.document_text(tx, tenant_id, body.version)
            probation = probation_s(parse_document(document, path=["body", "version"]))
            timeout = int(probation) + rt.settings.rollout_wave_margin_s
        percent = body.wave_percent
        if body.wave_size is None and percent is None:
            percent = DEFAULT_WAVE_PERCENT
        rollout_id = await rt.rollouts.create(
            tx, tenant_id, version=body.version, gateway_id=body.gateway_id, label=label,
            wave_size=body.wave_size, wave_percent=percent, wave_timeout_s=timeout,
            by=who(caller), now_us=now_us(), news=news,
        )  # fmt: skip
        return await rt.rollouts.get_in(tx, tenant_id, rollout_id)


@router.get("/v1/rollouts", tags=["rollouts"])
async def list_rollouts(
    tenant_id: ViewerTenant,
    rt: Rt,
    state: Literal["running", "completed", "stopped", "cancelled", "superseded"] | None = None,
    before: Before = None,
    limit: Limit = 100,
) -> list[Rollout]:
    """Rollouts newest first, with counts per gateway state (no gateway list)."""
    return await rt.rollouts.find(tenant_id, state=state, before=before, limit=limit)


@router.get("/v1/rollouts/{rollout_id}", tags=["rollouts"])
async def get_rollout(rollout_id: Id, tenant_id: ViewerTenant, rt: Rt) -> Rollout:
    """A rollout's progress: its state, the current wave and every gateway's state."""
    return await rt.rollouts.get(tenant_id, rollout_id)


@router.post("/v1/rollouts/{rollout_id}/cancel", tags=["rollouts"])
async def cancel_rollout(rollout_id: Id, caller: AdminCaller, rt: Rt) -> Rollout:
    """Start no further wave (admin); gateways already sent the version finish their probation."""
    tenant_id = caller.require_user(Role.ADMIN)
    async with rt.db.transaction(tenant_id) as tx:
        await rt.rollouts.cancel(tx, tenant_id, rollout_id, by=who(caller), now_us=now_us())
        return await rt.rollouts.get_in(tx, tenant_id, rollout_id)


# ------------------------------------------------------------------ one gateway's config


@router.get("/v1/gateways/{gateway_id}/config", tags=["gateways"])
async def gateway_config(gateway_id: Id, caller: Caller, rt: Rt) -> GatewayConfig:
    """What the cloud wants the gateway to run, what it runs, how its last version went
    (outcome, reason, the validator's problems), and, when its file was edited on the gateway
    (drift), that file with a diff from the desired version."""
    tenant_id = caller.require_user(Role.VIEWER)
    return await rt.configs.gateway_config(tenant_id, gateway_id, reveal=reveals_secrets(caller))


@router.get("/v1/gateways/{gateway_id}/config/history", tags=["gateways"])
async def gateway_config_history(
    gateway_id: Id, tenant_id: ViewerTenant, rt: Rt, before: Before = None, limit: Limit = 100
) -> list[ConfigEvent]:
    """Who changed what and when: assignments and every outcome the gateway reported."""
    return await rt.configs.history(tenant_id, gateway_id, before=before, limit=limit)


@router.delete("/v1/gateways/{gateway_id}/config/pin", status_code=204, tags=["gateways"])
async def unpin_gateway(gateway_id: Id, caller: AdminCaller, rt: Rt) -> Response:
    """Forget the gateway's own assignment (admin): label rollouts reach it again."""
    tenant_id = caller.require_user(Role.ADMIN)
    await rt.configs.unpin(tenant_id, gateway_id, by=who(caller), now_us=now_us())
    return Response(status_code=204)


# ------------------------------------------------------------------ the gateway's own side


class LocalDocument(Body):
    """The config file on the gateway, as it is."""

    document: Document
    comment: Comment | None = None


@router.get("/v1/gateway/config", tags=["gateway"])
async def own_desired_config(gateway: GatewayCaller, rt: Rt) -> ConfigDocument:
    """The document the cloud wants this gateway to run (gateway token); 404 when none."""
    return await _document(rt, *gateway, None)


@router.get("/v1/gateway/config/{version}", tags=["gateway"])
async def own_config_version(version: Id, gateway: GatewayCaller, rt: Rt) -> ConfigDocument:
    """A version assigned to this gateway (gateway token); never another gateway's."""
    return await _document(rt, *gateway, version)


async def _document(
    rt: Runtime, tenant_id: int, gateway_id: int, version: int | None
) -> ConfigDocument:
    async with rt.repo.live(tenant_id) as (tx, news):
        return await rt.configs.document_for(
            tx, tenant_id, gateway_id, version, now_us=now_us(), news=news
        )


@router.put(
    "/v1/gateway/config/local", status_code=204, tags=["gateway"], openapi_extra=CONFIG_BODY
)
async def upload_local_config(body: LocalDocument, gateway: GatewayCaller, rt: Rt) -> Response:
    """The gateway's drifted file (gateway token), shown next to the desired version."""
    tenant_id, gateway_id = gateway
    parse_document(body.document, path=["body", "document"])
    await rt.configs.store_local(tenant_id, gateway_id, body.document, now_us=now_us())
    return Response(status_code=204)


@router.post("/v1/gateway/config", status_code=201, tags=["gateway"], openapi_extra=CONFIG_BODY)
async def adopt_local_config(body: LocalDocument, gateway: GatewayCaller, rt: Rt) -> ConfigVersion:
    """Make the gateway's file a new version and its own assignment (gateway token; ``tagway
    config push``): the cloud then wants what the gateway runs, and drift ends."""
    tenant_id, gateway_id = gateway
    parse_document(body.document, path=["body", "document"])
    async with rt.repo.live(tenant_id) as (tx, news):
        return await rt.configs.adopt(
            tx, tenant_id, gateway_id, body.document, comment=body.comment, now_us=now_us(),
            news=news,
        )  # fmt: skip
