"""The agent's Prometheus metrics: one registry per agent, written by `prometheus_client`.

The figures already live where they are counted (pipeline counters, driver counters, the uplink's
status, the outbox's stats), so a custom collector reads them at scrape time instead of keeping a
second copy in sync. The library writes the text format, label values escaped: a device may be
named `pump "A"\\1`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from edge.runtime import Runtime
from protocols.driver import DriverCounters
from store_forward import OutboxStats

Metric = CounterMetricFamily | GaugeMetricFamily


class AgentMetrics(Collector):
    """The metrics of one running agent.

    Args:
        runtime: the agent's resources, read at every scrape.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._outbox: OutboxStats | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def exposition(self) -> bytes:
        """The text format of every metric, with fresh outbox figures."""
        self._outbox = await self._runtime.outbox.stats()
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """Called by the registry at each scrape."""
        yield from self._pipeline()
        yield from self._drivers()
        yield from self._clock()
        yield from self._reloads()
        yield from self._outbox_figures()
        yield from self._uplink()
        yield from self._broker()

    def _broker(self) -> Iterator[Metric]:
        broker = self._runtime.broker
        if broker is None:
            return
        c = broker.counters
        for name, value, doc in (
            ("broadcasts", c.broadcasts, "PUBLISHes the embedded broker accepted for delivery"),
            (
                "undelivered",
                c.undelivered,
                "deliveries the embedded broker discarded (subscriber gone, broker stopping)",
            ),
            (
                "refused_publishes",
                c.refused_publishes,
                "PUBLISHes dropped before delivery (ACL, '$' topic, DUP flag on QoS 0)",
            ),
            ("connections", c.connections, "connections the embedded broker accepted"),
            ("refused_connections", c.refused_connections, "connections over max_connections"),
            ("oversize_packets", c.oversize_packets, "packets over max_message_bytes"),
            ("malformed_topics", c.malformed_topics, "PUBLISH topics MQTT forbids"),
        ):
            yield CounterMetricFamily(f"tagway_mqtt_broker_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "tagway_mqtt_broker_backlog",
            "messages queued in the embedded broker or pending delivery to a subscriber",
            value=broker.backlog,
        )

    def _pipeline(self) -> Iterator[Metric]:
        c = self._runtime.pipeline.counters
        for name, value, doc in (
            ("readings_received", c.received, "readings delivered by drivers"),
            ("readings_committed", c.committed, "readings committed to the outbox"),
            ("readings_suppressed", c.suppressed, "readings filtered by deadband"),
            ("readings_dropped", c.dropped, "readings refused with a full buffer"),
        ):
            yield CounterMetricFamily(f"tagway_{name}", doc, value=value)

    def _drivers(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "tagway_driver_connected", "1 when the device link is up", labels=["device"]
        )
        restarts = CounterMetricFamily(
            "tagway_driver_restarts", "driver restarts", labels=["device"]
        )
        readings = CounterMetricFamily(
            "tagway_driver_readings", "readings the driver handed to the pipeline",
            labels=["device"],
        )  # fmt: skip
        overruns = CounterMetricFamily(
            "tagway_driver_poll_overruns", "poll cycles started late (the device is overloaded)",
            labels=["device"],
        )  # fmt: skip
        clock_faults = CounterMetricFamily(
            "tagway_driver_clock_faults",
            "readings whose source timestamp was outside the plausible window",
            labels=["device"],
        )  # fmt: skip
        dropped = CounterMetricFamily(
            "tagway_driver_dropped_readings",
            "readings of the device dropped and counted (driver queue, dead letters, full "
            "pipeline buffer)",
            labels=["device"],
        )  # fmt: skip
        queue_dropped = self._runtime.pipeline.counters.dropped_by_device
        for name, slot in self._runtime.supervisor.slots.items():
            connected.add_metric([name], 1 if slot.healthy else 0)
            restarts.add_metric([name], slot.restarts)
            counters = slot.driver.counters if slot.driver is not None else DriverCounters()
            readings.add_metric([name], counters.readings)
            overruns.add_metric([name], counters.overruns)
            dropped.add_metric([name], counters.dropped + queue_dropped.get(name, 0))
            clock_faults.add_metric([name], slot.clock.faults)
        yield from (connected, restarts, readings, overruns, dropped, clock_faults)
        tasks = CounterMetricFamily(
            "tagway_task_restarts", "restarts of an auxiliary task (uplink, channel, UNS...) "
            "after it failed", labels=["task"],
        )  # fmt: skip
        for name, count in list(self._runtime.supervisor.tasks.restarts.items()):
            tasks.add_metric([name], count)
        yield tasks

    def _clock(self) -> Iterator[Metric]:
        clock = self._runtime.clock
        if clock.synchronized is not None:
            yield GaugeMetricFamily(
                "tagway_clock_synchronized",
                f"1 when the gateway clock is synchronized (from {clock.source})",
                value=1 if clock.synchronized else 0,
            )
        yield CounterMetricFamily(
            "tagway_readings_unsynchronized",
            "readings accepted while the gateway clock was not synchronized",
            value=clock.unsynchronized_readings,
        )

    def _reloads(self) -> Iterator[Metric]:
        reloads = self._runtime.config.reloads
        family = CounterMetricFamily(
            "tagway_config_reloads", "config reloads (SIGHUP)", labels=["outcome"]
        )
        family.add_metric(["applied"], reloads.applied)
        family.add_metric(["rejected"], reloads.rejected)
        yield family

    def _outbox_figures(self) -> Iterator[Metric]:
        stats = self._outbox
        if stats is None:
            return
        yield GaugeMetricFamily(
            "tagway_outbox_used_bytes", "payload bytes in the outbox", value=stats.used_bytes
        )
        yield GaugeMetricFamily(
            "tagway_outbox_quota_bytes", "outbox quota", value=stats.quota_bytes
        )
        chunks = GaugeMetricFamily("tagway_outbox_chunks", "chunks waiting", labels=["lane"])
        dropped = CounterMetricFamily(
            "tagway_outbox_dropped_readings", "readings dropped by the quota policy",
            labels=["lane"],
        )  # fmt: skip
        for lane, figures in stats.lanes.items():
            chunks.add_metric([lane.value], figures.chunks)
            dropped.add_metric([lane.value], figures.dropped_readings)
        yield chunks
        yield dropped

    def _uplink(self) -> Iterator[Metric]:
        uplink = self._runtime.uplink
        if uplink is None:
            return
        status = uplink.status
        yield CounterMetricFamily(
            "tagway_uplink_batches_sent", "batches acknowledged", value=status.batches_sent
        )
        yield CounterMetricFamily(
            "tagway_uplink_readings_sent", "readings acknowledged", value=status.readings_sent
        )
        yield CounterMetricFamily(
            "tagway_uplink_token_renewals", "tokens renewed after a 401",
            value=status.token_renewals,
        )  # fmt: skip
