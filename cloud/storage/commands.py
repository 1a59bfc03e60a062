"""Commands to gateways: created by users, delivered on the gateway's channel, finished by the
result the gateway sends back through its outbox.

The states and who moves them::

    queued ──channel──▶ delivered ──result──▶ succeeded | failed | expired | unknown
      │  └──TTL ran out (sweep)──▶ expired
      └──DELETE──▶ cancelled

A delivered command is delivered again on every new channel connection until its result
arrives (the gateway runs each id once and reports its stored result again), so a lost answer,
a cloud restart or a replica change never loses one. Results are applied once: only a queued or
delivered command takes one, and a replayed batch finds it finished.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, Final

from cloud.contract import CommandResult
from cloud.errors import CommandNotQueued, IdempotencyConflict, NotFound, RateLimited
from cloud.live import CommandChange, GatewayWake, News
from cloud.storage.base import Database, Row, Tx
from cloud.storage.records import Command

_COMMAND: Final = (
    "id, gateway_id, kind, args, state, created_by, created_at, expires_at, idempotency_key,"
    " delivered_at, deliveries, finished_at, result, error, cancelled_by"
)
_NAMES: Final = _COMMAND.replace(" ", "").split(",")
PENDING: Final = ("queued", "delivered")
STATES: Final = ("queued", "delivered", "succeeded", "failed", "expired", "unknown", "cancelled")


def _command(row: Row) -> Command:
    data = dict(zip(_NAMES, row, strict=True))
    data["args"] = json.loads(data["args"])
    data["result"] = None if data["result"] is None else json.loads(data["result"])
    return Command(**data)


def change(command: Command, *, at: int) -> CommandChange:
    """The live message of a command's new state."""
    return CommandChange(command.gateway_id, {
        "id": command.id, "gateway_id": command.gateway_id, "kind": command.kind,
        "state": command.state, "at": at, "error": command.error,
    })  # fmt: skip


class CommandStore:
    """Commands of the tenant's gateways. The methods that change state take the open
    transaction and a `news` list, to which they add the live messages of the change."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        tx: Tx,
        tenant_id: int,
        gateway_id: int,
        *,
        kind: str,
        args: dict[str, Any],
        ttl_s: int,
        created_by: str,
        idempotency_key: str | None,
        max_pending: int,
        now_us: int,
        news: News,
    ) -> tuple[Command, bool]:
        """Queue a command (or find the one this idempotency key made); (command, created)."""
        if not await tx.fetchone(
            "SELECT 1 FROM gateways WHERE tenant_id = %s AND id = %s AND revoked_at IS NULL",
            [tenant_id, gateway_id],
        ):
            raise NotFound("gateway not found (or revoked)")
        encoded = json.dumps(args, sort_keys=True)
        if idempotency_key is not None:
            row = await tx.fetchone(
                f"SELECT {_COMMAND} FROM commands"
                " WHERE tenant_id = %s AND gateway_id = %s AND idempotency_key = %s",
                [tenant_id, gateway_id, idempotency_key],
            )
            if row is not None:
                found = _command(row)
                if found.kind != kind or json.dumps(found.args, sort_keys=True) != encoded:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used for a different command",
                        details={"command_id": found.id},
                    )
                return found, False
        pending = await tx.fetchone(
            "SELECT count(*) FROM commands WHERE tenant_id = %s AND gateway_id = %s"
            " AND state IN ('queued', 'delivered')",
            [tenant_id, gateway_id],
        )
        if pending is not None and int(pending[0]) >= max_pending:
            raise RateLimited(
                f"the gateway has {max_pending} commands waiting; let them finish or expire",
                retry_after=10, code="too_many_pending_commands",
            )  # fmt: skip
        row = await tx.fetchone(
            "INSERT INTO commands (tenant_id, gateway_id, kind, args, idempotency_key, created_by,"
            " created_at, expires_at, state) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'queued')"
            f" RETURNING {_COMMAND}",
            [tenant_id, gateway_id, kind, encoded, idempotency_key, created_by, now_us,
             now_us + ttl_s * 1_000_000],
        )  # fmt: skip
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
        command = _command(row)
        news.add(GatewayWake(gateway_id), change(command, at=now_us))
        return command, True

    async def get(self, tenant_id: int, gateway_id: int, command_id: int) -> Command:
        """One command of one of the tenant's gateways."""
        async with self.db.transaction(tenant_id) as tx:
            return await self._get(tx, tenant_id, gateway_id, command_id)

    async def _get(self, tx: Tx, tenant_id: int, gateway_id: int, command_id: int) -> Command:
        row = await tx.fetchone(
            f"SELECT {_COMMAND} FROM commands WHERE tenant_id = %s AND gateway_id = %s AND id = %s",
            [tenant_id, gateway_id, command_id],
        )
        if row is None:
            raise NotFound("command not found")
        return _command(row)

    async def find(
        self,
        tenant_id: int,
        gateway_id: int,
        *,
        state: str | None,
        kind: str | None,
        before: int | None,
        limit: int,
    ) -> list[Command]:
        """The gateway's commands, newest first."""
        sql = f"SELECT {_COMMAND} FROM commands WHERE tenant_id = %s AND gateway_id = %s"
        params: list[Any] = [tenant_id, gateway_id]
        for column, op, value in (("state", "=", state), ("kind", "=", kind),
                                  ("id", "<", before)):  # fmt: skip
            if value is not None:
                sql += f" AND {column} {op} %s"
                params.append(value)
        async with self.db.transaction(tenant_id) as tx:
            if not await tx.fetchone(
                "SELECT 1 FROM gateways WHERE tenant_id = %s AND id = %s", [tenant_id, gateway_id]
            ):
                raise NotFound("gateway not found")
            rows = await tx.fetch(sql + " ORDER BY id DESC LIMIT %s", [*params, limit])
        return [_command(r) for r in rows]

    async def cancel(
        self,
        tx: Tx,
        tenant_id: int,
        gateway_id: int,
        command_id: int,
        *,
        by: str,
        now_us: int,
        news: News,
    ) -> Command:
        """Cancel a queued command; `CommandNotQueued` once it reached the gateway."""
        row = await tx.fetchone(
            "UPDATE commands SET state = 'cancelled', finished_at = %s, cancelled_by = %s"
            " WHERE tenant_id = %s AND gateway_id = %s AND id = %s AND state = 'queued'"
            f" RETURNING {_COMMAND}",
            [now_us, by, tenant_id, gateway_id, command_id],
        )
        if row is None:
            found = await self._get(tx, tenant_id, gateway_id, command_id)
            raise CommandNotQueued(
                f"command {command_id} is {found.state}: only a queued command can be cancelled",
                details={"state": found.state},
            )
        command = _command(row)
        news.add(change(command, at=now_us))
        return command

    async def deliver(
        self,
        tx: Tx,
        tenant_id: int,
        gateway_id: int,
        *,
        sent: Collection[int],
        now_us: int,
        news: News,
    ) -> list[Command]:
        """The gateway's pending, unexpired commands not yet `sent` on this connection, oldest
        first, each marked delivered (once more) as it goes."""
        rows = await tx.fetch(
            f"SELECT {_COMMAND} FROM commands WHERE tenant_id = %s AND gateway_id = %s"
            " AND state IN ('queued', 'delivered') AND expires_at > %s ORDER BY id",
            [tenant_id, gateway_id, now_us],
        )
        out = [c for c in map(_command, rows) if c.id not in sent]
        if not out:
            return out
        await tx.execute(
            "UPDATE commands SET state = 'delivered', deliveries = deliveries + 1,"
            " delivered_at = COALESCE(delivered_at, %s) WHERE tenant_id = %s AND gateway_id = %s"
            f" AND id IN ({', '.join(['%s'] * len(out))})",
            [now_us, tenant_id, gateway_id, *(c.id for c in out)],
        )
        news.add(*(change(c.model_copy(update={"state": "delivered"}), at=now_us)
                   for c in out if c.state == "queued"))  # fmt: skip
        return out


async def apply_result(
    tx: Tx,
    tenant_id: int,
    gateway_id: int,
    result: CommandResult,
    *,
    now_us: int,
    news: News,
) -> None:
    """Finish a command with the gateway's result, once (a replay finds it finished)."""
    row = await tx.fetchone(
        "UPDATE commands SET state = %s, result = %s, error = %s, finished_at = %s,"
        " delivered_at = COALESCE(delivered_at, %s) WHERE tenant_id = %s AND gateway_id = %s"
        f" AND id = %s AND state IN ('queued', 'delivered') RETURNING {_COMMAND}",
        [result.state, json.dumps(result.result), result.error, result.finished_at, now_us,
         tenant_id, gateway_id, result.command_id],
    )  # fmt: skip
    if row is not None:
        news.add(change(_command(row), at=now_us))
