"""An anomaly model for a machine: PCA reconstruction error, exported as a plain ONNX graph.

Fit: standardize normal-operation samples, keep the top principal components. Score: standardize,
project onto the components and back, and take the mean squared residual. Normal operation scores
near the fit's residual level; a pump whose vibration and bearing temperature drift away from how
they relate to flow and current scores far above it.

The graph uses only Sub, Div, MatMul, Mul and ReduceMean, so any onnxruntime runs it.
Input ``x``: float32 [N, F] (F = window * tags, time-major). Output ``score``: float32 [N, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT = "x"
OUTPUT = "score"


@dataclass(frozen=True)
class PcaFit:
    """The parameters of a fitted PCA anomaly model."""

    mean: npt.NDArray[np.float32]  # [F]
    scale: npt.NDArray[np.float32]  # [F]
    components: npt.NDArray[np.float32]  # [F, k]
    threshold: float  # a suggested alarm threshold (a high quantile of the training scores)

    def score(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The same computation as the ONNX graph, in numpy (for training and tests)."""
        z = (x - self.mean) / self.scale
        residual = z - (z @ self.components) @ self.components.T
        score: npt.NDArray[np.float32] = np.mean(residual * residual, axis=1, keepdims=True)
        return score.astype(np.float32)


def fit_pca(
    samples: npt.NDArray[np.floating], *, components: int, quantile: float = 0.999
) -> PcaFit:
    """Fit on normal-operation rows [N, F]; the threshold is 1.5x the training score quantile."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] <= x.shape[1]:
        raise ValueError(f"need more rows than features to fit, got shape {x.shape}")
    if not 0 < components < x.shape[1]:
        raise ValueError(f"components must be between 1 and {x.shape[1] - 1}, got {components}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature must not divide by zero
    z = (x - mean) / scale
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    fit = PcaFit(
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        components=vt[:components].T.astype(np.float32),
        threshold=0.0,
    )
    scores = fit.score(x.astype(np.float32))
    threshold = float(np.quantile(scores, quantile)) * 1.5
    return PcaFit(fit.mean, fit.scale, fit.components, threshold)


def to_onnx(fit: PcaFit, *, name: str = "pca_anomaly") -> onnx.ModelProto:
    """Export the fit as an ONNX model with input ``x`` [N, F] and output ``score`` [N, 1]."""
    features = int(fit.mean.shape[0])
    inits = [
        numpy_helper.from_array(fit.mean, "mean"),
        numpy_helper.from_array(fit.scale, "scale"),
        numpy_helper.from_array(fit.components, "w"),
        numpy_helper.from_array(np.ascontiguousarray(fit.components.T), "wt"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT, "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "scale"], ["z"]),
        helper.make_node("MatMul", ["z", "w"], ["projected"]),
        helper.make_node("MatMul", ["projected", "wt"], ["reconstructed"]),
        helper.make_node("Sub", ["z", "reconstructed"], ["residual"]),
        helper.make_node("Mul", ["residual", "residual"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], [OUTPUT], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    model.metadata_props.append(
        onnx.StringStringEntryProto(key="threshold", value=str(fit.threshold))
    )
    onnx.checker.check_model(model)
    return model


def save(fit: PcaFit, path: Path) -> None:
    """Write the model to `path`."""
    path.write_bytes(to_onnx(fit).SerializeToString())
