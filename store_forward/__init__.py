"""store_forward: the durable outbox, a crash-safe SQLite queue of encoded chunks.

A reading is *accepted* once the chunk that holds it is committed here. The outbox stores opaque
payloads with a reading count and a priority lane (alarm, event, telemetry), leases them to the
uplink, deletes them only on ack, enforces a disk quota with counted drops, and survives kill -9 and
damaged files. It knows nothing of readings or protocols and imports nothing else of tagway.
"""
