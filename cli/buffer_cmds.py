"""`tagway buffer`: look into the outbox file directly, also while the agent runs."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.agent_cmds import ApiOpt, ConfigOpt, JsonOpt
from cli.errors import fail
from cli.local import DEFAULT_CONFIG, LocalClient

if TYPE_CHECKING:
    from protocols.reading import Reading

buffer_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                         help="Inspect and repair the outbox (the durable buffer).")  # fmt: skip

OutboxOpt = Annotated[
    Path | None, typer.Option("--outbox", help="The outbox file (default: from the config).")
]


def _outbox_path(config: Path | None, outbox: Path | None) -> Path:
    if outbox is not None:
        return outbox
    from edge.config import load_config  # noqa: PLC0415

    return load_config(config or DEFAULT_CONFIG).outbox_path


@buffer_app.command("stats")
def stats(config: ConfigOpt = None, outbox: OutboxOpt = None, json_out: JsonOpt = False) -> None:
    """Depth per lane, oldest age, dropped and quarantined counts, file size.

    Safe while the agent runs. Example: tagway buffer stats --outbox /var/lib/tagway/outbox.db
    """
    from store_forward import read_stats  # noqa: PLC0415

    path = _outbox_path(config, outbox)
    figures = read_stats(path)
    data: dict[str, Any] = {
        "path": str(path), "used_bytes": figures.used_bytes, "quota_bytes": figures.quota_bytes,
        "file_bytes": figures.file_bytes, "leased_chunks": figures.leased_chunks,
        "schema_version": figures.schema_version, "dropped_readings": figures.dropped_readings,
        "lanes": {lane.value: asdict(lane_stats) for lane, lane_stats in figures.lanes.items()},
        "recoveries": [{"at": r.at, "moved_to": str(r.moved_to), "reason": r.reason}
                       for r in figures.recoveries],
        "refused_readings": dict(figures.refused),
        "consumers": {name: {"pending_chunks": c.pending_chunks,
                             "pending_readings": c.pending_readings,
                             "dropped_readings": c.dropped_total}
                      for name, c in figures.consumers.items()},
    }  # fmt: skip
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(
        f"{path}: {figures.used_bytes / 2**20:.2f} of {figures.quota_bytes / 2**20:.0f} MiB"
        f" used, file {figures.file_bytes / 2**20:.2f} MiB, schema v{figures.schema_version}"
    )
    typer.echo(f"{'lane':<10} {'chunks':>8} {'readings':>10} {'oldest':>9} {'dropped':>9} "
               f"{'quarantined':>11}")  # fmt: skip
    for lane, s in figures.lanes.items():
        oldest = f"{s.oldest_age_s:.0f}s" if s.oldest_age_s is not None else "-"
        typer.echo(f"{lane.value:<10} {s.chunks:>8} {s.readings:>10} {oldest:>9} "
                   f"{s.dropped_readings:>9} {s.quarantined_chunks:>11}")  # fmt: skip
    if len(figures.consumers) > 1:  # the uplink and a northbound publisher, each at its pace
        for name, c in figures.consumers.items():
            typer.echo(f"consumer {name}: {c.pending_readings} readings to send "
                       f"({c.pending_chunks} chunks), {c.dropped_total} dropped before it "
                       "sent them")  # fmt: skip
    for r in figures.recoveries:
        typer.echo(
            f"recovered from a damaged file at {r.at:.0f}: {r.reason} (moved to {r.moved_to})"
        )
    for reason, count in figures.refused.items():
        typer.echo(f"refused by the cloud ({reason}): {count} readings; the rest of their "
                   "batches was stored (tagway buffer export --refused)")  # fmt: skip


@buffer_app.command("requeue-quarantine")
def requeue_quarantine(
    config: ConfigOpt = None, api: ApiOpt = None, outbox: OutboxOpt = None
) -> None:
    """Put quarantined chunks (refused by the cloud) back in the queue, after a fix.

    Goes through the running agent when there is one, else opens the file directly.
    Example: tagway buffer requeue-quarantine
    """
    if outbox is None:
        from edge.api_contract import Requeued  # noqa: PLC0415 - keep `--help` fast

        try:
            result = LocalClient(config, api).post("/v1/outbox/requeue-quarantine", Requeued)
        except Exception:  # noqa: BLE001 - any failure to reach the agent means: do it directly
            result = None
        if result is not None:
            typer.echo(f"{result.requeued} chunks requeued through the running agent")
            return
    from store_forward import Outbox  # noqa: PLC0415

    with Outbox(_outbox_path(config, outbox)) as box:
        typer.echo(f"{box.requeue_quarantine()} chunks requeued")


@buffer_app.command("export")
def export(
    out: Annotated[Path, typer.Argument(help="The file to write (.csv, .json or .db/.sqlite).")],
    config: ConfigOpt = None,
    outbox: OutboxOpt = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv, json or sqlite (default: from the file name)."),
    ] = None,
    refused: Annotated[
        bool, typer.Option("--refused", help="Export the readings the cloud refused instead.")
    ] = False,
) -> None:
    """Write the readings still waiting in the outbox to a CSV, JSON or SQLite file.

    Reads a snapshot without leasing anything: safe while the agent runs, and nothing is removed.
    Numbers stay numbers (64-bit integers exactly; SQLite keeps an integer past int64 as text),
    and a bad or uncertain reading carries its reason.
    With --refused, the readings the cloud refused one by one (a device clock far off) instead:
    one row per series, reason and batch, the most recent 1,000.
    Example: tagway buffer export backlog.csv
    """
    from store_forward import Lane, iter_chunks  # noqa: PLC0415

    kind = fmt or {".csv": "csv", ".json": "json"}.get(out.suffix.lower(), "sqlite")
    if kind not in {"csv", "json", "sqlite"}:
        fail(f"--format {kind!r}: expected csv, json or sqlite")
    path = _outbox_path(config, outbox)
    if refused:
        _export_refused(path, out, kind)
        return
    rows = (
        {"device": r.device, "tag": r.tag, "time": _iso(r.ts), "ts_us": r.ts, "value": r.value,
         "quality": r.quality.value, "reason": r.reason or "", "unit": r.unit or "",
         "simulated": r.simulated}
        for c in iter_chunks(path, lanes=frozenset({Lane.TELEMETRY}))
        for r in _readings(path, c.id, c.payload)
    )  # fmt: skip
    if kind == "csv":
        count = _write_csv(out, rows)
    elif kind == "json":
        count = _write_json(out, rows)
    else:
        count = _write_sqlite(out, rows, _READING_FIELDS)
    typer.echo(f"wrote {count} readings from {path} to {out}")


def _export_refused(path: Path, out: Path, kind: str) -> None:
    from store_forward import read_refused  # noqa: PLC0415

    rows = [
        {"device": r.device, "tag": r.tag, "reason": r.reason, "count": r.count,
         "first_time": _iso(r.first_ts), "first_ts_us": r.first_ts, "recorded_at": r.at}
        for r in read_refused(path)
    ]  # fmt: skip
    fields = ["device", "tag", "reason", "count", "first_time", "first_ts_us", "recorded_at"]
    if kind == "csv":
        count = _write_csv(out, rows, fields)
    elif kind == "json":
        count = _write_json(out, rows)
    else:
        count = _write_sqlite(out, rows, fields, "refused")
    typer.echo(f"wrote {count} refused-reading entries from {path} to {out}")


def _readings(path: Path, chunk_id: int, payload: bytes) -> list[Reading]:
    """The readings of one chunk; a damaged one stops the export, naming the chunk."""
    from edge.chunk import ChunkError, decode_readings  # noqa: PLC0415

    try:
        return decode_readings(payload)
    except ChunkError as exc:
        raise ChunkError(f"{path}: chunk {chunk_id} is damaged and was not exported: {exc}; "
                         "the readings before it were written") from exc  # fmt: skip


def _iso(ts: int) -> str:
    from protocols.reading import us_to_datetime  # noqa: PLC0415

    return us_to_datetime(ts).isoformat()


_READING_FIELDS = ["device", "tag", "time", "ts_us", "value", "quality", "reason", "unit",
                   "simulated"]  # fmt: skip


def _write_csv(
    out: Path, rows: Iterable[Mapping[str, object]], fields: list[str] = _READING_FIELDS
) -> int:
    import csv  # noqa: PLC0415

    count = 0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def _write_json(out: Path, rows: Iterable[Mapping[str, object]], *_: object) -> int:
    """A JSON array of objects, written as it is read (numbers stay numbers, exactly)."""
    count = 0
    with out.open("w", encoding="utf-8") as handle:
        handle.write("[")
        for row in rows:
            handle.write(",\n" if count else "\n")
            handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False))
            count += 1
        handle.write("\n]\n")
    return count


def _write_sqlite(
    out: Path, rows: Iterable[Mapping[str, object]], columns: list[str], name: str = "readings"
) -> int:
    """A table whose `value` column has no declared type, so each value keeps its own: INTEGER
    (64-bit exact), REAL or TEXT. (A typed column would turn a mixed column into text.) An
    integer past int64, which SQLite cannot hold as a number, is stored as its decimal text.
    The table is made even when there are no rows: an empty export is an empty table."""
    import sqlite3  # noqa: PLC0415

    declared = ", ".join(f'"{c}"' if c in ("value", "count") else f'"{c}" {_TYPE[c]}'
                         for c in columns)  # fmt: skip
    insert = f'INSERT INTO "{name}" VALUES ({", ".join("?" * len(columns))})'  # noqa: S608 - our names
    counted = itertools.count(1)
    values = ([_sqlite_value(row[c]) for c in columns] for row in rows if next(counted))
    with contextlib.closing(sqlite3.connect(out)) as db, db:
        db.execute(f'CREATE TABLE IF NOT EXISTS "{name}" ({declared})')
        db.executemany(insert, values)
    return next(counted) - 1


_TYPE = {"device": "TEXT", "tag": "TEXT", "time": "TEXT", "ts_us": "INTEGER", "quality": "TEXT",
         "reason": "TEXT", "unit": "TEXT", "simulated": "INTEGER", "first_time": "TEXT",
         "first_ts_us": "INTEGER", "recorded_at": "REAL"}  # fmt: skip


def _sqlite_value(value: object) -> object:
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return str(value)
    return value
