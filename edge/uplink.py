"""The uplink: from the outbox to the cloud, exactly once.

Loop: lease chunks (alarms first, then events, then telemetry) up to a byte limit, post them as ONE
batch with the gateway's next `seq` (a small header and the chunks as they are in the outbox:
`cloud.contract.chunked`, nothing decoded or re-encoded), with the gateway token, and ack the lease
only on a 2xx. The same bytes under the same seq are retried until the cloud answers, so
a retry is always harmless: the cloud stores a batch once per (gateway, seq).

What the cloud says decides what happens to the chunks:

    2xx                 ack: the chunks are deleted for good
    422, 413 (1 chunk)  quarantine: kept, counted, visible; the queue moves on
    409 seq_conflict    quarantine, and a critical alarm record: a bug signal (the seq state
                        went back in time), never seen from a correct gateway
    413 (many chunks)   release, and lease half as many chunks next time
    413 too_many_new_series (1 chunk)
                        the chunk is sound, the tenant's limit is too low for it: kept and
                        retried like a 429 (an operator raises `max_new_series_per_batch`)
    401                 renew the token and retry at once, one time; then as below
    429, 503            wait for Retry-After, then retry the same batch
    other / no answer   capped, jittered exponential backoff, retry the same batch
                        (403 too: the data is not at fault, a person must act); while the
                        outbox drops readings under its quota, at most 2 s between tries

Drops are reported as the outbox's running totals per lane and outbox life
(`dropped_totals`): the cloud keeps the largest it has seen, so a report replayed under a new
seq after a lost answer or a kill -9 counts once.

The retry policy is tenacity's (`AsyncRetrying`, full-jitter exponential wait capped at the
config's `retry_max_delay`, Retry-After taking precedence): the same bytes are posted until the
cloud settles them, however long that takes.

Alarms and events always go first. A telemetry backlog drains oldest-first while every other batch
is leased newest-first, so live data keeps flowing during a long drain. `max_batches_per_s` caps
the drain rate so a returning gateway does not flood the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from cloud.contract import CHUNKS, DroppedTotals, LeasedChunk, chunk, encode_chunk_batch
from cloud.contract.window import refusals_from_answer
from edge.credentials import UplinkIdentity
from edge.errors import EdgeError
from edge.kill_points import kill_point
from edge.seq_state import SeqState
from store_forward import DEFAULT_CONSUMER, Lane, Lease, OutboxError, OutboxStats, RefusedReadings

_LATENCY_SAMPLES = 500  # readings sampled per batch for the latency percentiles
_RATE_WINDOW_S = 60.0  # the send rate is readings acknowledged over the last minute
NEW_SERIES_LIMIT = "too_many_new_series"  # the cloud's code for a batch creating too many series
NEW_SERIES_RETRY_S = 30.0  # how long one chunk over that limit waits between tries
SEQ_CONFLICT = "seq_conflict"  # the cloud holds this seq with other content: a gateway bug
PRESSED_RETRY_S = 2.0  # the longest wait between retries while the outbox drops readings

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class LeaseSource(Protocol):
    """What the uplink needs from the (async) outbox."""

    async def lease(self, *, max_bytes: int, max_chunks: int, newest_first: bool) -> Lease: ...
    async def ack(self, lease: Lease) -> int: ...
    async def renew(self, lease: Lease) -> bool: ...
    async def release(self, lease: Lease) -> int: ...
    async def quarantine(self, lease: Lease, reason: str) -> int: ...
    async def record_refused(self, refused: Sequence[RefusedReadings]) -> None: ...
    async def stats(self) -> OutboxStats: ...


class UplinkState(StrEnum):
    """Where the uplink is."""

    IDLE = "idle"  # nothing to send
    SENDING = "sending"
    BACKOFF = "backoff"  # the last attempt failed; waiting to retry
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkSettings:
    """How the uplink behaves.

    Args:
        ingest_url: the cloud's `/v1/ingest` URL.
        gateway_id: this gateway's id, as issued at provisioning.
        max_batch_bytes: payload bytes leased per batch (compressed chunk bytes).
        max_batches_per_s: cap on the send rate while draining a backlog (0 = no cap).
        connect_timeout / read_timeout: HTTP timeouts, seconds.
        retry_max_delay: the cap of the jittered exponential backoff between retries, seconds.
        max_chunks: chunks per batch.
        idle_poll_s: how often to look for new chunks when the outbox was empty.
        lease_renew_s: how often the lease of the batch in flight is renewed (well inside the
            outbox's lease timeout): a chunk in flight is never dropped by the quota policy.

    The fields named like the config's `cloud` section take its values (and its defaults); the
    last two are not configurable.
    """

    ingest_url: str
    gateway_id: str
    max_batch_bytes: int
    max_batches_per_s: float
    connect_timeout: float
    read_timeout: float
    retry_max_delay: float
    max_chunks: int = 64
    idle_poll_s: float = 0.25
    lease_renew_s: float = 10.0


@dataclass(slots=True)
class UplinkStatus:
    """What the local API shows about the uplink."""

    state: UplinkState = UplinkState.IDLE
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None  # Unix time, so a reader can tell an old error
    batches_sent: int = 0
    readings_sent: int = 0
    duplicates: int = 0  # batches the cloud already had (a retry after a lost answer)
    refused_readings: int = 0  # refused one by one by the cloud (clock far off); rest stored
    quarantined_chunks: int = 0
    seq_conflicts: int = 0  # batches the cloud held under their seq with other content
    retries: int = 0
    token_renewals: int = 0  # tokens renewed after the cloud answered 401
    latency_p50_s: float | None = None  # reading time -> the cloud's commit, recent readings
    latency_p99_s: float | None = None


class UplinkError(EdgeError):
    """Root of the uplink's own errors (they steer its send loop and never leave it)."""


class Refused(UplinkError):
    """The cloud refused a batch in a way that a retry will not fix (422, 413, 409
    seq_conflict); `code` is the cloud's error code, if it gave one."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class RetryLater(UplinkError):
    """The cloud or the network failed in a way that a retry may fix.

    Args:
        message: what happened.
        retry_after: seconds the cloud asked us to wait, if it did.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _RetryAfterOr(wait_base):
    """Wait what the cloud's Retry-After said, or else what `otherwise` says: at most
    `PRESSED_RETRY_S` while `pressed()` (the outbox is dropping readings)."""

    def __init__(self, otherwise: wait_base, *, pressed: Callable[[], bool]) -> None:
        self._otherwise = otherwise
        self._pressed = pressed

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        if isinstance(failure, RetryLater) and failure.retry_after is not None:
            return failure.retry_after
        wait = float(self._otherwise(retry_state))
        return min(wait, PRESSED_RETRY_S) if self._pressed() else wait


def chunk_batch(
    lease: Lease, *, gateway_id: str, seq: int, dropped_totals: DroppedTotals | None
) -> bytes:
    """The leased chunks as one batch (`cloud.contract.chunked`), their payloads as they are."""
    return encode_chunk_batch(
        gateway_id=gateway_id, seq=seq, created_at=time.time_ns() // 1_000, dropped={},
        chunks=[LeasedChunk(c.lane.value, c.count, c.payload) for c in lease.chunks],
        dropped_totals=dropped_totals,
    )  # fmt: skip


def drop_totals(stats: OutboxStats) -> DroppedTotals | None:
    """The outbox's drop counters as they are (running totals of its life), or None if nothing
    was ever dropped. The cloud keeps the largest total per (gateway, life, lane): a report sent
    again after a lost answer, under a new seq, counts once."""
    # The readings the quota took before this uplink sent them; with a second consumer
    # (Sparkplug) the other one's drops may have reached the cloud here already.
    mine = stats.consumers.get(DEFAULT_CONSUMER)
    counts = ({lane: n.dropped_readings for lane, n in stats.lanes.items()} if mine is None
              else mine.dropped_readings)  # fmt: skip
    lanes = {lane.value: n for lane, n in counts.items() if n}
    return DroppedTotals(stats.life, lanes) if lanes else None


class Uplink:
    """Sends the outbox to the cloud until cancelled.

    Args:
        settings: URLs, limits and timeouts.
        outbox: the async outbox to lease from.
        identity: the gateway id's token source, renewed after a 401.
        seq_state: the durable seq counter.
        client: an httpx client; one is created when not given.
        sleep: how to wait between retries and paced batches (tests pass a recorder).
        on_conflict: called with the reason when the cloud answers 409 seq_conflict (the batch
            is quarantined; the agent raises a critical alarm record with it).
    """

    def __init__(
        self,
        *,
        settings: UplinkSettings,
        outbox: LeaseSource,
        identity: UplinkIdentity,
        seq_state: SeqState,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        on_conflict: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.status = UplinkStatus()
        self._outbox = outbox
        self._identity = identity
        self._seq = seq_state
        self._client = client
        self._max_chunks = settings.max_chunks
        self._newest_next = True  # flipped before the first lease: the first is oldest-first
        self._latencies: deque[list[float]] = deque(maxlen=20)  # samples of recent batches
        self._acked: deque[tuple[float, int]] = deque()  # (monotonic time, readings) per 2xx
        self._started = time.monotonic()
        self._sleep = sleep
        self._on_conflict = on_conflict
        self._dropped_seen = 0  # the outbox's drop total when the current batch was leased
        self._pressed = False  # the outbox dropped readings since: retry sooner
        self.wake = asyncio.Event()  # set by the pipeline after each flush

    async def run(self) -> None:
        """Send until cancelled."""
        timeout = httpx.Timeout(self.settings.read_timeout, connect=self.settings.connect_timeout)
        own = self._client is None
        client = self._client or httpx.AsyncClient(timeout=timeout)
        try:
            while True:
                sent = await self.send_once(client)
                if not sent:
                    self.status.state = UplinkState.IDLE
                    self.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), self.settings.idle_poll_s)
                elif self.settings.max_batches_per_s > 0:
                    await self._sleep(1.0 / self.settings.max_batches_per_s)
        finally:
            self.status.state = UplinkState.STOPPED
            if own:
                await client.aclose()

    async def send_once(self, client: httpx.AsyncClient) -> bool:
        """Lease, send and settle one batch; False when there was nothing to send."""
        # Alternate oldest-first and newest-first telemetry: a backlog drains while live data
        # still arrives within a batch or two (alarms and events always go first).
        self._newest_next = not self._newest_next
        lease = await self._outbox.lease(
            max_bytes=self.settings.max_batch_bytes,
            max_chunks=self._max_chunks,
            newest_first=self._newest_next,
        )
        if not lease:
            return False
        _kill_point("leased", lease)
        self.status.state = UplinkState.SENDING
        stats = await self._outbox.stats()
        self._dropped_seen = stats.dropped_readings
        seq = self._seq.next_seq()
        body = chunk_batch(lease, gateway_id=self.settings.gateway_id, seq=seq,
                           dropped_totals=drop_totals(stats))  # fmt: skip
        _kill_point("built", lease)
        try:
            async with self._keeping(lease):
                answer = await self._post_until_settled(client, body, len(lease))
        except Refused as exc:
            await self._outbox.quarantine(lease, str(exc))
            self.status.quarantined_chunks += len(lease)
            self.status.last_error, self.status.last_error_at = str(exc), time.time()
            log.error("cloud refused batch seq=%s: %s; %d chunks quarantined",  # noqa: TRY400
                      seq, exc, len(lease))  # fmt: skip
            if exc.code == SEQ_CONFLICT:
                # Never happens with a correct gateway: the seq state went back in time (a
                # restored backup, two gateways under one id). Raise it where people look.
                self.status.seq_conflicts += 1
                if self._on_conflict is not None:
                    await self._on_conflict(f"batch seq={seq} refused: {exc}")
            return True
        except _TooLarge:
            await self._outbox.release(lease)
            self._max_chunks = max(1, len(lease) // 2)
            return True
        except BaseException:
            await asyncio.shield(self._outbox.release(lease))
            raise
        _kill_point("answered", lease)
        acked_us = time.time_ns() // 1_000
        await self._outbox.ack(lease)
        _kill_point("acked", lease)
        self._settled(lease, bool(answer.get("duplicate", False)))
        await self._keep_refused(answer, seq)
        self._measure_latency(lease, acked_us)
        return True

    async def _keep_refused(self, answer: dict[str, Any], seq: int) -> None:
        """Record the readings the cloud refused one by one (a device clock far off) while it
        stored the rest of the batch: counted, kept in the outbox, never resent."""
        refused = refusals_from_answer(answer)
        if not refused:
            return
        await self._outbox.record_refused([
            RefusedReadings(r.device, r.tag, r.reason, r.count, r.first_ts) for r in refused
        ])  # fmt: skip
        count = sum(r.count for r in refused)
        self.status.refused_readings += count
        log.warning("the cloud refused %d readings of batch seq=%s one by one (first: %s/%s %s); "
                    "the rest are stored", count, seq, refused[0].device, refused[0].tag,
                    refused[0].reason)  # fmt: skip

    @contextlib.asynccontextmanager
    async def _keeping(self, lease: Lease) -> AsyncIterator[None]:
        """Renew the lease every `lease_renew_s` while its batch is being sent, however long the
        cloud takes: its chunks stay out of the quota policy's reach and nobody else's."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.lease_renew_s)
                try:
                    await self._outbox.renew(lease)
                except OutboxError as exc:  # the next renewal tries again
                    log.warning("uplink: cannot renew the lease of the batch in flight: %s", exc)

        keeper = asyncio.create_task(renew(), name="uplink-lease")
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _outbox_dropping(self) -> bool:
        """Whether the outbox dropped readings since the batch was leased (it is at its quota:
        every second the cloud stays unretried costs readings)."""
        try:
            stats = await self._outbox.stats()
        except Exception:  # noqa: BLE001 - a figure for pacing retries; never stop the uplink
            return False
        return stats.dropped_readings > self._dropped_seen

    def _measure_latency(self, lease: Lease, acked_us: int) -> None:
        """Device-to-database latency of the batch's readings: the 2xx came after the commit.

        Only the timestamps are read back from the chunks (one decompression each, no values).
        """
        stamps = [ts for c in lease.chunks if c.lane is Lane.TELEMETRY
                  for ts in chunk.timestamps(c.payload)]  # fmt: skip
        if not stamps:
            return
        step = max(1, len(stamps) // _LATENCY_SAMPLES)  # evenly spread, bounded work per batch
        self._latencies.append([(acked_us - ts) / 1e6 for ts in stamps[::step]])
        recent = sorted(itertools.chain.from_iterable(self._latencies))
        self.status.latency_p50_s = _percentile(recent, 0.50)
        self.status.latency_p99_s = _percentile(recent, 0.99)

    def _settled(self, lease: Lease, duplicate: bool) -> None:
        status = self.status
        status.batches_sent += 1
        status.readings_sent += lease.count
        status.duplicates += int(duplicate)
        status.last_success = time.time()
        self._acked.append((time.monotonic(), lease.count))
        self._max_chunks = min(self.settings.max_chunks, self._max_chunks * 2)

    def send_rate(self, now: float | None = None) -> float:
        """Readings the cloud acknowledged per second over the last minute (or since start,
        when the uplink is younger than that)."""
        now = time.monotonic() if now is None else now
        while self._acked and self._acked[0][0] < now - _RATE_WINDOW_S:
            self._acked.popleft()
        span = min(_RATE_WINDOW_S, now - self._started)
        return sum(count for _, count in self._acked) / span if span > 0 else 0.0

    def _retrying(self) -> AsyncRetrying:
        """The retry policy: forever, full-jitter exponential waits, Retry-After first."""
        return AsyncRetrying(
            retry=retry_if_exception_type(RetryLater),
            wait=_RetryAfterOr(
                wait_random_exponential(multiplier=0.5, max=self.settings.retry_max_delay),
                pressed=lambda: self._pressed,
            ),
            stop=stop_never,
            sleep=self._sleep,
            before_sleep=self._backing_off,
            reraise=True,
        )

    def _backing_off(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        self.status.state = UplinkState.BACKOFF
        self.status.last_error, self.status.last_error_at = str(failure), time.time()
        self.status.retries += 1
        log.warning("uplink: %s; retrying in %.1f s", failure, retry_state.upcoming_sleep)

    async def _post_until_settled(
        self, client: httpx.AsyncClient, body: bytes, chunks: int
    ) -> dict[str, Any]:
        """POST the same body until the cloud settles it; the cloud's answer."""
        settled: dict[str, Any] = await self._retrying()(self._post, client, body, chunks)
        return settled

    async def _post(self, client: httpx.AsyncClient, body: bytes, chunks: int) -> dict[str, Any]:
        self._pressed = await self._outbox_dropping()
        response = await self._send(client, body)
        if response.status_code == 401:
            # The token expired in flight, or the cloud's clock moved: a fresh token is worth
            # one immediate try before the batch backs off like any other failure.
            self._identity.renew()
            self.status.token_renewals += 1
            response = await self._send(client, body)
        code = response.status_code
        if 200 <= code < 300:
            return _json(response)
        reason = f"HTTP {code}: {_error_message(response)}"
        if code == 413 and chunks > 1:
            raise _TooLarge(reason)
        if code == 413 and _error_code(response) == NEW_SERIES_LIMIT:
            # One chunk cannot be split: it holds what one flush read. Quarantining it would lose
            # a sound chunk to a setting; retrying keeps it until the limit is raised.
            raise RetryLater(reason, retry_after=_retry_after(response) or NEW_SERIES_RETRY_S)
        if code in (413, 422) or (code == 409 and _error_code(response) == SEQ_CONFLICT):
            raise Refused(reason, code=_error_code(response))
        raise RetryLater(reason, retry_after=_retry_after(response))

    async def _send(self, client: httpx.AsyncClient, body: bytes) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {await self._identity.token()}",
            "Content-Type": CHUNKS,
        }
        try:
            return await client.post(self.settings.ingest_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RetryLater(f"cannot reach the cloud: {type(exc).__name__}: {exc}") from exc


def _kill_point(step: str, lease: Lease) -> None:
    """`edge.kill_points` at a step of a batch that carries readings (the tests count those)."""
    if any(c.lane is Lane.TELEMETRY for c in lease.chunks):
        kill_point(step)


class _TooLarge(UplinkError):
    """413 for a batch of several chunks: send fewer at a time."""


def _percentile(ordered: list[float], fraction: float) -> float:
    """The value at `fraction` of a sorted list, interpolated between neighbours."""
    at = (len(ordered) - 1) * fraction
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_code(response: httpx.Response) -> str | None:
    error = _json(response).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _error_message(response: httpx.Response) -> str:
    error = _json(response).get("error")
    if isinstance(error, dict):
        return f"{error.get('code', '?')}: {error.get('message', '')}"
    return response.text[:200]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), 3600.0)
    except ValueError:
        return None
