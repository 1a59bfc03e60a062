"""Pipeline stages: each maps a `list[Reading]` to a `list[Reading]` (lists in, lists out).

latest values -> report by exception -> derived tags -> inference -> alarms -> chunker. Stages hold
per-series state in plain dicts keyed by (device, tag); none of them does I/O.
"""
