"""Local inference with real onnxruntime sessions on models the tests build with onnx.helper."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge.inference import pca
from edge.inference.model import InferenceStage, ModelError, ModelSpec
from protocols.reading import Quality, Reading

S = 1_000_000


def sum_model(path: Path, features: int) -> Path:
    """A model whose score is the sum of its features: easy to predict exactly."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["score"], keepdims=1)],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[InferenceStage]:
    spec = ModelSpec(
        name="sum",
        path=sum_model(tmp_path / "sum.onnx", features=4),
        devices=("pump1", "pump2"),
        inputs=("flow", "vibration"),
        window=2,
        hop=1,
        outputs=("anomaly_score",),
    )
    stage = InferenceStage([spec])
    yield stage
    stage.close()


def poll(device: str, t: int, flow: float, vib: float) -> list[Reading]:
    return [Reading(device, "flow", t * S, flow), Reading(device, "vibration", t * S, vib)]


async def test_windows_fill_then_slide_by_the_hop(stage: InferenceStage) -> None:
    assert await stage(poll("pump1", 0, 1, 2)) == poll("pump1", 0, 1, 2)  # window not full yet
    out = await stage(poll("pump1", 1, 3, 4))
    assert [(r.tag, r.value, r.ts) for r in out[2:]] == [("anomaly_score", 10.0, 1 * S)]
    out = await stage(poll("pump1", 2, 5, 6))
    assert out[-1].value == 18.0  # rows (3,4) and (5,6)


async def test_windows_of_several_devices_run_in_one_call(stage: InferenceStage) -> None:
    await stage(poll("pump1", 0, 1, 1) + poll("pump2", 0, 2, 2))
    out = await stage(poll("pump1", 1, 1, 1) + poll("pump2", 1, 2, 2))
    assert sorted((r.device, r.value) for r in out if r.tag == "anomaly_score") == [
        ("pump1", 4.0),
        ("pump2", 8.0),
    ]
    assert stage.windows_run == 2


async def test_bad_inputs_never_reach_the_model(stage: InferenceStage) -> None:
    await stage(poll("pump1", 0, 1, 1))
    bad = [r.with_quality(Quality.BAD, "timeout") for r in poll("pump1", 1, 100, 100)]
    assert await stage(bad) == bad  # no row from values we cannot trust
    out = await stage(poll("pump1", 2, 2, 2))
    assert out[-1].value == 6.0  # rows (1,1) and (2,2): the bad 100s were never used


def test_shape_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    spec = ModelSpec(
        name="sum", path=sum_model(tmp_path / "m.onnx", 3), devices=("p",), inputs=("a", "b")
    )
    with pytest.raises(ModelError, match="takes 3 features, but window 1 x 2 inputs gives 2"):
        InferenceStage([spec])


def test_missing_model_file_names_the_file(tmp_path: Path) -> None:
    spec = ModelSpec(name="gone", path=tmp_path / "gone.onnx", devices=("p",), inputs=("a",))
    with pytest.raises(ModelError, match=r"model 'gone': cannot load .*gone\.onnx"):
        InferenceStage([spec])


async def test_pca_model_scores_anomalies_high_and_normal_low(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    flow = rng.normal(100, 5, 2000)
    # Normal operation: current and vibration follow flow.
    normal = np.column_stack(
        [flow, 0.2 * flow + rng.normal(0, 0.3, 2000), 0.02 * flow + rng.normal(0, 0.05, 2000)]
    )
    fit = pca.fit_pca(normal, components=1)
    path = tmp_path / "pca.onnx"
    pca.save(fit, path)
    spec = ModelSpec(name="pca", path=path, devices=("pump1",),
                     inputs=("flow", "current", "vibration"))  # fmt: skip
    stage = InferenceStage([spec])
    try:
        ok = await stage([Reading("pump1", t, 1, float(v)) for t, v in zip(
            ("flow", "current", "vibration"), normal[5], strict=True)])  # fmt: skip
        worn = await stage([Reading("pump1", t, 2, v) for t, v in zip(
            ("flow", "current", "vibration"), (100.0, 20.0, 6.0), strict=True)])  # fmt: skip
    finally:
        stage.close()
    assert ok[-1].value < fit.threshold < worn[-1].value
    # The ONNX graph and the numpy reference agree.
    assert ok[-1].value == pytest.approx(
        float(fit.score(normal[5:6].astype(np.float32))[0, 0]), rel=1e-4
    )
