"""The driver's subscription: monitored items in, one batch of readings per publish response out.

asyncua's `Subscription` delivers notifications one by one (a task per item in handler mode, a
silently bounded queue in iterator mode). Here the raw publish callback is used instead: every
`PublishResponse` becomes one `list[Reading]` put into the `ReadingBuffer`, so 10,000 changes cost
one sink call, not 10,000.

Across reconnects the subscription is kept when the server still has it: after a link drop the
old session's subscription is moved to the new session with TransferSubscriptions (Part 4,
5.13.7) and the notification messages we missed are fetched with Republish, so nothing the server
queued is lost. After a server restart the transfer fails and the subscription and its monitored
items are created anew (the server then sends every item's current value).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from asyncua import ua

from protocols.driver import DriverCounters
from protocols.errors import DeviceError
from protocols.opcua.buffer import ReadingBuffer
from protocols.opcua.codec import status_reason, to_reading
from protocols.opcua.config import OpcUaDeviceConfig, OpcUaTag
from protocols.opcua.session import ServerSession, chunks
from protocols.reading import Quality, Reading, now_us

_log = logging.getLogger(__name__)

_DEADBAND_TYPES: Final = {"absolute": ua.DeadbandType.Absolute, "percent": ua.DeadbandType.Percent}
_KEEPALIVE_TARGET_MS: Final = 5000.0  # a keep-alive at least this often when nothing changes
_MAX_REPUBLISH: Final = (
    10_000  # bound on messages fetched after a transfer (a server bug cannot loop us)
)


@dataclass(slots=True)
class ItemState:
    """What the driver knows about one subscribed tag on the current server."""

    tag: OpcUaTag
    node: ua.NodeId | None = None
    unit: str | None = None


class MonitoredItems:
    """The subscription of one driver: created once, transferred or re-created on reconnect.

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
        self._session: ServerSession | None = None

    # Client handles are indexes into `items`: a list lookup on the hot path, and stable across
    # re-creation so a late notification from the old subscription still names the right tag.

    async def attach(self, session: ServerSession) -> list[Reading]:
        """Make the subscription live on `session`; returns bad readings for items that failed."""
        self._session = session
        self.last_heard = time.monotonic()
        if not self.items:
            return []
        if self.subscription_id is not None and await self._transfer(session):
            return []
        return await self._create(session)

    async def _transfer(self, session: ServerSession) -> bool:
        params = ua.TransferSubscriptionsParameters(
            SubscriptionIds=[self.subscription_id], SendInitialValues=False
        )
        try:
            results = await session.call(
                "transfer subscription", session.client.uaclient.transfer_subscriptions(params)
            )
        except DeviceError as exc:
            _log.info("%s: transfer refused (%s); creating anew", self._config.name, exc)
            return False
        if not results or not results[0].StatusCode.is_good():
            return False
        # asyncua 2.1 has no public way to route a transferred subscription's publish responses;
        # its own Subscription.restore() registers the callback in this same table.
        uasession = session.client.uaclient.session
        uasession._subscription_callbacks[self.subscription_id] = self.on_publish
        uasession.ensure_publish_loop()
        await self._republish(session, results[0].AvailableSequenceNumbers or [])
        _log.info("%s: subscription %s transferred", self._config.name, self.subscription_id)
        return True

    async def _republish(self, session: ServerSession, available: Sequence[int]) -> None:
        missed = sorted(seq for seq in available if seq > self.last_sequence)[:_MAX_REPUBLISH]
        for seq in missed:
            try:
                message = await session.call(
                    "republish",
                    session.client.uaclient.session.republish(self.subscription_id, seq),
                )
            except DeviceError:
                continue  # BadMessageNotAvailable: the server already discarded it
            if message.NotificationData:
                await self.on_publish(
                    ua.PublishResult(self.subscription_id, NotificationMessage=message)
                )

    async def _create(self, session: ServerSession) -> list[Reading]:
        result = await session.call(
            "create subscription",
            session.client.uaclient.create_subscription(self._parameters(), self.on_publish),
        )
        self.subscription_id = result.SubscriptionId
        self.last_sequence = 0
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
        # so a reconnect within session_timeout_s can transfer it; at least 3 keep-alives (5.13.2).
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
        keepalive_s = self.keepalive_count * self._config.publishing_interval_ms / 1000
        return 2 * keepalive_s + self._config.request_timeout_s

    async def on_publish(self, result: ua.PublishResult) -> None:
        """asyncua's publish callback: one publish response in, one batch to the buffer."""
        self.last_heard = time.monotonic()
        message = result.NotificationMessage
        data = message.NotificationData
        if not data or result.SubscriptionId != self.subscription_id:
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
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                for change in notification.MonitoredItems:
                    handle = change.ClientHandle
                    if 0 <= handle < len(items):
                        item = items[handle]
                        batch.append(
                            to_reading(
                                name, item.tag.name, change.Value, received, item.unit, simulated
                            )
                        )
            elif isinstance(notification, ua.StatusChangeNotification):
                self._status_changed(notification.Status)
        self._buffer.put(batch)

    def _status_changed(self, status: ua.StatusCode) -> None:
        if status.is_good() or self._session is None:
            return
        # BadTimeout (subscription expired), BadShutdown (server stopping or asyncua reporting a
        # lost link): the subscription is gone; the driver reconnects and re-subscribes.
        self._session.mark_lost(f"subscription status {status_reason(status)}")

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
