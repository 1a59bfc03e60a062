"""Sparkplug B (Eclipse Sparkplug 3.0) over MQTT: the pure codec layer.

- `sparkplug_b.proto` / `sparkplug_b_pb2`: the payload schema, compiled by protoc for Google's
  `protobuf` runtime (the generated module is checked in; the .proto says how to regenerate).
- `payload`: frozen `Payload` and `Metric` values, datatypes, `encode_payload` and
  `decode_payload` (which refuses hostile bytes with `Malformed`, never anything else).
- `topic`: the ``spBv1.0/<group>/<type>/<node>[/<device>]`` and ``spBv1.0/STATE/<host>``
  namespace.
- `sequence`: the ``seq`` (0-255 per message) and ``bdSeq`` (per MQTT session) rules.
- `conventions`: ``bdSeq``, ``Node Control/Rebirth``, and the ``Quality``/``engUnit`` metric
  properties hosts understand.
- `host`: `HostSession`, a host's view of other edge nodes (births, aliases, deaths, rebirth
  requests) turning their messages into readings.

No I/O here: the MQTT driver (`protocols.mqtt`) and the edge node publisher use these.
"""
