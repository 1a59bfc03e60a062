"""Models shipped with tagway: `pump_anomaly.onnx`, the demo pump's anomaly model.

Trained by `python -m cli.train_anomaly` from the simulated plant's normal operation; see that
module for how, and `edge.inference.pca` for what the model computes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PUMP_FEATURES = ("flow", "discharge_pressure", "motor_current", "vibration", "bearing_temperature")
"""The input tags of `pump_anomaly.onnx`, in the order of its feature columns."""


def pump_anomaly_path() -> Path:
    """The file of the shipped pump anomaly model."""
    return Path(str(resources.files(__name__).joinpath("pump_anomaly.onnx")))


def suggested_threshold(path: Path) -> float | None:
    """The alarm threshold a model file suggests in its metadata (`threshold`), if any."""
    import onnxruntime as ort  # noqa: PLC0415 - only when a model is configured

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    value = session.get_modelmeta().custom_metadata_map.get("threshold")
    return float(value) if value is not None else None
