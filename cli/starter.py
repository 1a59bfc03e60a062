"""The commented starter config `tagway init` writes."""

from __future__ import annotations

STARTER = """\
# tagway agent configuration. Validate with: tagway config validate {path}
# Every key is documented in the README; unknown keys are errors.

gateway:
  name: {name}                 # shown in the TUI and the cloud
  state_dir: {state_dir}       # outbox, identity, alarm states live here

# The cloud section is written by `tagway provision --cloud URL --claim-token TOKEN`.
# cloud:
#   url: https://cloud.example.com

outbox:
  quota: 1GiB                  # disk the buffer may use during an outage
  when_full: drop_oldest       # drop_oldest (never alarms) | reject_new
  synchronous: full            # full: survives power cuts | normal: survives crashes
  flush_interval: 0.25         # seconds; the most a power cut can lose

report:                        # report by exception, for every tag unless a tag says otherwise
  deadband: 0                  # absolute
  deadband_percent: 0          # of the last reported value
  heartbeat: 60                # seconds: send an unchanged value at least this often

devices:
  # - protocol: modbus
  #   name: pump1
  #   host: 192.168.1.20
  #   unit_id: 1
  #   poll_groups: [{{name: default, interval: 1.0}}]
  #   tags:
  #     - {{name: flow, table: input_register, address: 0, type: float32, order: ABCD, unit: m3/h}}
  #     - {{name: running, table: coil, address: 0, type: bool}}
  # - protocol: opcua
  #   name: boiler1
  #   endpoint: opc.tcp://192.168.1.30:4840
  #   tags:
  #     - {{name: temperature, node_id: "ns=2;s=Boiler.Temperature", deadband: 0.5}}
  # - protocol: mqtt
  #   name: site-broker
  #   url: mqtt://127.0.0.1:1883
  #   subscriptions:
  #     - {{topic: "plant/{{device}}/telemetry"}}

alarms:
  # - {{name: pump1_flow_low, device: pump1, tag: flow, kind: low, limit: 5, hysteresis: 1,
  #    on_delay: 10, severity: high}}

local_api:
  host: 127.0.0.1
  port: 8470
"""
