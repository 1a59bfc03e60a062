"""Northbound publishers besides the cloud uplink: the Sparkplug B edge node (`sparkplug_node`,
with its pure payload side in `sparkplug_metrics`), configured by the `north:` section
(`edge.north.config`). Each reads the outbox as a consumer of its own (`store_forward.consumers`).
"""
