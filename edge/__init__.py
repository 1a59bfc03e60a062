"""edge: the gateway agent.

Config loading, the runtime object, the supervisor, the pipeline stages (latest values, report by
exception, derived tags, ONNX inference, alarms, chunker), the uplink and the local API. It may
import `protocols`, `store_forward`, `provisioning` and `cloud.contract` (the wire models),
nothing else of tagway.
"""
