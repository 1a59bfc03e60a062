"""The driver's subscription: monitored items in, one batch of readings per publish response out.

asyncua's `Subscription` delivers notifications one by one (a task per item in handler mode, a
silently bounded queue in iterator mode). Here the raw publish callback is used instead: every
`PublishResponse` becomes one `list[Reading]` put into the `ReadingBuffer`, so 10,000 changes cost
one sink call, not 10,000.

Across reconnects the subscription is kept when the server still has it: after a link drop the
session is resumed on a new SecureChannel (Part 4, 6.7), the notification messages that were in
flight are fetched with Republish (5.13.6), and the server then delivers what it queued while the
link was down, so nothing is lost beyond what the server itself discards (its monitored item queue
size). After a server restart the resume fails and the subscription and its monitored items are
created anew (the server then sends every item's current value).

TransferSubscriptions (5.13.7) is not used: the resume covers the link-drop case, and asyncua's
own server (firmware_sim) transfers without rerouting publish requests, which would leave a
transferred subscription silent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from asyncua import ua

from protocols.driver import DriverCounters
from protocols.errors import DeviceError
from protocols.opcua.buffer import ReadingBuffer
from protocols.opcua.codec import raw_to_reading, status_reason, to_reading
from protocols.opcua.config import OpcUaDeviceConfig, OpcUaTag, TimestampSource
from protocols.opcua.session import ServerSession, chunks
from protocols.opcua.wire import DataChanges, RawChange, install_fast_publish
from protocols.reading import Quality, Reading, now_us

_log = logging.getLogger(__name__)

_DEADBAND_TYPES: Final = {"absolute": ua.DeadbandType.Absolute, "percent": ua.DeadbandType.Percent}
_KEEPALIVE_TARGET_MS: Final = 5000.0  # a keep-alive at least this often when nothing changes
_MAX_REPUBLISH: Final = 10_000  # bound on messages fetched after a resume


@dataclass(slots=True)
class ItemState:
    """What the driver knows about one subscribed tag on the current server."""

    tag: OpcUaTag
    node: ua.NodeId | None = None
    unit: str | None = None


class MonitoredItems:
    """The subscription of one driver: created once, kept on resume, re-created otherwise.

    Args:
        config: the device config (publishing interval, names, simulated flag).
        buffer: where each publish response's batch goes.
        counters: the driver's counters (errors, dropped via the buffer).
    """

    def __init__(
        self, *, config: OpcUaDeviceConfig, buffer: ReadingBuffer, counters: DriverCounters
    ) -> None:
        self._config = config
        self._buffer = buffer
        self._counters = counters
        self.items: list[ItemState] = [ItemState(t) for t in config.tags if t.mode == "subscribe"]
        self.subscription_id: int | None = None
        self.last_sequence = 0
        self.last_heard = time.monotonic()
        self.keepalive_count = max(
            3, math.ceil(_KEEPALIVE_TARGET_MS / config.publishing_interval_ms)
        )
        self._unconfirmed = False
        self._keepalive_s = self.keepalive_count * config.publishing_interval_ms / 1000
        # DataChangeNotifications decoded by protocols.opcua.wire ("fast") or by asyncua.
        self.decoded = {"fast": 0, "general": 0}

    # Client handles are indexes into `items`: a list lookup on the hot path, and stable across
    # re-creation so a late notification from the old subscription still names the right tag.

    async def attach(self, session: ServerSession) -> list[Reading]:
        """Make the subscription live on `session`; returns bad readings for items that failed."""
        self._session = session
        self.last_heard = time.monotonic()
        if not self.items:
            return []
        if self.subscription_id is not None and session.resumed and not self._unconfirmed:
            await self._resume(session)
            return []
        if self.subscription_id is not None and session.resumed:
            await self._delete_quietly(session, self.subscription_id)
        return await self._create(session)

    async def _resume(self, session: ServerSession) -> None:
        """The server kept our session, so it kept the subscription and what it queued."""
        await self._republish(session)
        # asyncua 2.1 has no public way to route publish responses of a subscription that this
        # client object did not create; its own Subscription.restore() uses this same table.
        uasession = session.client.uaclient.session
        install_fast_publish(uasession)
        uasession._subscription_callbacks[self.subscription_id] = self._callback(session)
        uasession.ensure_publish_loop()
        # Until a publish response proves the subscription alive, a second loss re-creates it
        # instead of resuming again (a server that lost it must not trap us in a resume loop).
        self._unconfirmed = True
        _log.info(
            "%s: session resumed, subscription %s kept", self._config.name, self.subscription_id
        )

    async def _republish(self, session: ServerSession) -> None:
        """Fetch the notification messages that were in flight when the link dropped."""
        seq = self.last_sequence + 1
        for _ in range(_MAX_REPUBLISH):
            try:
                message = await session.call(
                    "republish",
                    session.client.uaclient.session.republish(self.subscription_id, seq),
                )
            except DeviceError:
                return  # BadMessageNotAvailable: nothing more was in flight
            if not message.NotificationData:
                return  # some servers answer an empty message instead
            await self._on_publish(
                ua.PublishResult(self.subscription_id, NotificationMessage=message), session
            )
            seq += 1

    async def _delete_quietly(self, session: ServerSession, subscription_id: int) -> None:
        try:
            await session.call(
                "delete subscription",
                session.client.uaclient.delete_subscriptions([subscription_id]),
            )
        except DeviceError as exc:
            _log.debug("%s: delete of stale subscription: %s", self._config.name, exc)

    def _callback(self, session: ServerSession) -> Callable[[ua.PublishResult], Awaitable[None]]:
        async def on_publish(result: ua.PublishResult) -> None:
            await self._on_publish(result, session)

        return on_publish

    async def _create(self, session: ServerSession) -> list[Reading]:
        install_fast_publish(session.client.uaclient.session)
        result = await session.call(
            "create subscription",
            session.client.uaclient.create_subscription(
                self._parameters(), self._callback(session)
            ),
        )
        self.subscription_id = result.SubscriptionId
        # The server may revise both (Part 4, 5.13.2); silence is judged by what it granted.
        revised = result.RevisedPublishingInterval * result.RevisedMaxKeepAliveCount / 1000
        self._keepalive_s = max(revised, self._keepalive_s)
        self.last_sequence = 0
        self._unconfirmed = False
        failed: list[Reading] = []
        requests: list[ua.MonitoredItemCreateRequest] = []
        handles: list[int] = []
        for handle, item in enumerate(self.items):
            if item.node is None:
                continue  # unresolved; the driver already reported it
            requests.append(_item_request(handle, item.node, item.tag))
            handles.append(handle)
        size = session.limits.chunk(session.limits.max_monitored_items_per_call)
        for part_requests, part_handles in zip(
            chunks(requests, size), chunks(handles, size), strict=True
        ):
            params = ua.CreateMonitoredItemsParameters(
                SubscriptionId=self.subscription_id,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                ItemsToCreate=list(part_requests),
            )
            results = await session.call(
                "create monitored items", session.client.uaclient.create_monitored_items(params)
            )
            for handle, res in zip(part_handles, results, strict=True):
                if not res.StatusCode.is_good():
                    failed.append(self.bad(self.items[handle], status_reason(res.StatusCode)))
        self._counters.errors += len(failed)
        _log.info(
            "%s: subscription %s with %d monitored items (%d refused)",
            self._config.name,
            self.subscription_id,
            len(requests),
            len(failed),
        )
        return failed

    def _parameters(self) -> ua.CreateSubscriptionParameters:
        interval = self._config.publishing_interval_ms
        # The server keeps the subscription (and its queues) about as long as it keeps the session,
        # so a reconnect within session_timeout_s finds it; at least 3 keep-alives (5.13.2).
        lifetime = max(
            3 * self.keepalive_count, math.ceil(self._config.session_timeout_s * 1000 / interval)
        )
        return ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval,
            RequestedLifetimeCount=lifetime,
            RequestedMaxKeepAliveCount=self.keepalive_count,
            MaxNotificationsPerPublish=0,  # no limit: one response carries a whole cycle
            PublishingEnabled=True,
            Priority=0,
        )

    def silent_for(self) -> float:
        """Seconds since the last publish response (data or keep-alive)."""
        return time.monotonic() - self.last_heard

    def silence_limit(self) -> float:
        """How long without any publish response means the subscription is dead."""
        return 2 * self._keepalive_s + self._config.request_timeout_s

    async def _on_publish(self, result: ua.PublishResult, session: ServerSession) -> None:
        """asyncua's publish callback: one publish response in, one batch to the buffer."""
        if result.SubscriptionId != self.subscription_id:
            return
        self.last_heard = time.monotonic()
        self._unconfirmed = False
        message = result.NotificationMessage
        data = message.NotificationData
        if not data:
            return
        seq = message.SequenceNumber
        batch: list[Reading] = []
        if seq and seq <= self.last_sequence:
            return  # already delivered (a republish overlapping the live stream)
        if seq:
            self.last_sequence = seq
        received = now_us()
        items = self.items
        name, simulated = self._config.name, self._config.simulated
        stamp = self._config.timestamp
        for notification in data:
            if isinstance(notification, DataChanges):
                self.decoded["fast"] += 1
                batch += self._fast_readings(notification.changes, received, stamp)
            elif isinstance(notification, ua.DataChangeNotification):
                self.decoded["general"] += 1
                for change in notification.MonitoredItems:
                    handle = change.ClientHandle
                    if 0 <= handle < len(items):
                        item = items[handle]
                        batch.append(
                            to_reading(
                                name,
                                item.tag.name,
                                change.Value,
                                received,
                                item.unit,
                                simulated,
                                item.tag.timestamp or stamp,
                            )
                        )
            elif (
                isinstance(notification, ua.StatusChangeNotification)
                and not notification.Status.is_good()
            ):
                # BadTimeout (subscription expired), BadShutdown (server stopping, or asyncua
                # reporting a lost link): this session's subscription is gone; reconnect.
                session.mark_lost(f"subscription status {status_reason(notification.Status)}")
        self._buffer.put(batch)

    def _fast_readings(
        self, changes: list[RawChange], received: int, stamp: TimestampSource
    ) -> list[Reading]:
        """Readings of decoded changes: a Good value stamped by its source is one tuple built in
        a comprehension (the hot path at tens of thousands of items per second); anything else
        goes through `raw_to_reading`. Changes for handles we never gave out are skipped."""
        items = self.items
        count = len(items)
        tags = [item.tag.name for item in items]
        units = [item.unit for item in items]
        stamps = [item.tag.timestamp or stamp for item in items]
        name, simulated = self._config.name, self._config.simulated
        return [
            Reading(name, tags[h], s or t or received, v, Quality.GOOD, units[h], simulated, None)
            if st == 0 and v is not None and stamps[h] == "source"
            else raw_to_reading(
                name, tags[h], RawChange(h, v, st, s, t), received, units[h], simulated, stamps[h]
            )
            for h, v, st, s, t in changes
            if 0 <= h < count
        ]

    def bad(self, item: ItemState, reason: str) -> Reading:
        """A bad reading for one subscribed tag, with the reason."""
        return Reading(
            self._config.name,
            item.tag.name,
            now_us(),
            0,
            Quality.BAD,
            item.unit,
            self._config.simulated,
            reason,
        )


def _item_request(handle: int, node: ua.NodeId, tag: OpcUaTag) -> ua.MonitoredItemCreateRequest:
    sampling = -1.0 if tag.sampling_interval_ms is None else tag.sampling_interval_ms
    params = ua.MonitoringParameters(
        ClientHandle=handle,
        SamplingInterval=sampling,
        QueueSize=tag.queue_size,
        DiscardOldest=True,
    )
    if tag.deadband_type != "none":
        params.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=_DEADBAND_TYPES[tag.deadband_type],
            DeadbandValue=tag.deadband_value,
        )
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=params,
    )
