"""Several consumers of one outbox, each at its own durable position.

The cloud uplink and the Sparkplug publisher read the same chunks. Each consumer has a row in
`consumer` and a `pending` row for every chunk it has not acked yet (primary key ``(consumer,
chunk_id)``, so a consumer's queue is a range of that index, in chunk-id order: lanes first,
first-in first-out inside a lane, exactly like the `chunk` table itself). An append writes one
pending row per consumer in the same transaction; an ack deletes the acking consumer's rows and
then the chunks no consumer still needs. So:

- one consumer being down never blocks another: each leases from its own pending range, and a
  chunk leased by one is free for the others;
- positions are as durable as the chunks: both live in the same transactions;
- the quota policy deletes chunks for everyone, never one that any consumer holds in a live
  lease, and adds each dropped chunk to the counters of every consumer that had not sent it
  (`consumer_counter`), so each consumer reports its own losses.

A consumer added to the settings starts with what is appended from then on (a new Sparkplug
publisher does not replay the cloud's backlog as history); one removed from the settings is
forgotten with its pending rows, and chunks only it still needed are deleted. Opening with no
names (``consumers=None``) keeps the file's consumers as they are: only the agent, which knows
its configuration, decides who reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import apsw

from ._sqlite import as_int
from .errors import InvalidChunk
from .model import DEFAULT_CONSUMER
from .schema import LANE_SHIFT


@dataclass(frozen=True, slots=True)
class Consumers:
    """The registered consumers, by name, and the SQL fragments that name them all."""

    ids: Mapping[str, int]
    default: str

    def id_of(self, name: str | None) -> int:
        """The id of consumer `name` (None: the default one); `InvalidChunk` if unknown."""
        key = self.default if name is None else name
        try:
            return self.ids[key]
        except KeyError:
            known = ", ".join(self.ids)
            raise InvalidChunk(f"no consumer {key!r} in this outbox (it has: {known})") from None

    @property
    def id_list(self) -> str:
        """``(0,1)``: the ids as a SQL list (integers from our own table, safe to inline)."""
        return "(" + ",".join(str(int(i)) for i in self.ids.values()) + ")"

    @property
    def insert_pending(self) -> str:
        """One statement that makes chunk ``?1`` pending for every consumer."""
        rows = ",".join(f"({int(i)}, ?1)" for i in self.ids.values())
        return f"INSERT INTO pending(consumer, chunk_id) VALUES {rows}"  # noqa: S608 - integer ids


def register(
    conn: apsw.Connection, names: Sequence[str] | None, now: float
) -> tuple[Consumers, bool]:
    """Make the file's consumers exactly `names` (None: keep those it has), inside the caller's
    write transaction. Returns them and whether any was forgotten (then chunks may have gone:
    recount)."""
    known = {
        str(name): as_int(i)
        for i, name in conn.execute("SELECT id, name FROM consumer ORDER BY id")
    }
    if names is None:
        names = tuple(known) or (DEFAULT_CONSUMER,)
    for name in names:
        if name not in known:
            next_id = max(known.values(), default=-1) + 1
            conn.execute(
                "INSERT INTO consumer(id, name, registered) VALUES (?, ?, ?)", (next_id, name, now)
            )
            known[name] = next_id
    retired = [i for name, i in known.items() if name not in names]
    for consumer_id in retired:
        for table, column in (("pending", "consumer"), ("lease", "consumer"),
                              ("quarantine", "consumer"), ("consumer_counter", "consumer"),
                              ("consumer", "id")):  # fmt: skip
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (consumer_id,))  # noqa: S608 - literals above
    consumers = Consumers({name: known[name] for name in names}, names[0])
    if retired:
        conn.execute(
            "DELETE FROM chunk WHERE NOT EXISTS (SELECT 1 FROM pending WHERE consumer IN "  # noqa: S608 - integer ids
            f"{consumers.id_list} AND chunk_id = chunk.id)"
        )
    return consumers, bool(retired)


def settle(
    conn: apsw.Connection, consumers: Consumers, consumer_id: int, ids_json: str
) -> list[tuple[int, int, int]]:
    """The consumer is done with the chunks in `ids_json`: delete its pending rows, then the
    chunks no consumer needs any more; returns those as ``(id, count, size)``."""
    conn.execute(
        "DELETE FROM pending WHERE consumer = ? AND chunk_id IN (SELECT value FROM json_each(?))",
        (consumer_id, ids_json),
    )
    rows = conn.execute(
        "DELETE FROM chunk WHERE id IN (SELECT value FROM json_each(?1)) AND NOT EXISTS ("  # noqa: S608 - integer ids
        f"SELECT 1 FROM pending WHERE consumer IN {consumers.id_list} AND chunk_id = chunk.id) "
        "RETURNING id, count, size",
        (ids_json,),
    ).fetchall()
    return [(as_int(i), as_int(c), as_int(s)) for i, c, s in rows]


def count_drops(conn: apsw.Connection, consumers: Consumers, ids_json: str) -> None:
    """Before the chunks in `ids_json` are dropped: add them to the drop counters of every
    consumer that had not sent them, and delete those consumers' pending rows."""
    sums = conn.execute(
        f"SELECT p.consumer, c.id >> {LANE_SHIFT}, count(*), sum(c.count) FROM pending p "  # noqa: S608 - integer ids
        f"JOIN chunk c ON c.id = p.chunk_id WHERE p.consumer IN {consumers.id_list} "
        "AND p.chunk_id IN (SELECT value FROM json_each(?)) GROUP BY 1, 2",
        (ids_json,),
    ).fetchall()
    for consumer_id, rank, chunks, readings in sums:
        conn.execute(
            "INSERT INTO consumer_counter(consumer, lane, dropped_chunks, dropped_readings) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(consumer, lane) DO UPDATE SET "
            "dropped_chunks = dropped_chunks + excluded.dropped_chunks, "
            "dropped_readings = dropped_readings + excluded.dropped_readings",
            (consumer_id, rank, chunks, readings),
        )
    conn.execute(
        f"DELETE FROM pending WHERE consumer IN {consumers.id_list} "  # noqa: S608 - integer ids
        "AND chunk_id IN (SELECT value FROM json_each(?))",
        (ids_json,),
    )


def json_ids(chunk_ids: Iterable[int]) -> str:
    """Chunk ids as the JSON array SQLite's json_each reads."""
    return "[" + ",".join(map(str, chunk_ids)) + "]"
