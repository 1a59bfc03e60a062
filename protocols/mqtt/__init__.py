"""MQTT: the embedded broker devices publish into, and the subscriber driver.

- `config`: frozen pydantic models (`EmbeddedBrokerConfig`, `MqttSourceConfig`, subscriptions and
  their JSON/raw decoders).
- `codec`: pure payload decoding; bad payloads become `DeadLetter` values, never exceptions.
- `broker`: `EmbeddedBroker`, amqtt behind an async context manager with per-device credentials,
  ACLs, session expiry and optional TLS.
- `driver`: `MqttDriver` (aiomqtt), the `protocols.driver.Driver` contract for a broker.
"""
