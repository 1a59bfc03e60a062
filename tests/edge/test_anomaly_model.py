"""The shipped pump anomaly model sees bearing wear in the simulated pump, not normal running."""

from __future__ import annotations

import numpy as np

from cli.train_anomaly import sample_pump
from edge.inference.model import InferenceStage, ModelSpec
from edge.models import PUMP_FEATURES, pump_anomaly_path, suggested_threshold
from protocols.reading import Reading

ON_DELAY = 10  # the demo's alarm needs the score above the threshold for 10 s


def first_sustained(scores: np.ndarray, threshold: float) -> int | None:
    """The second at which the score has been above the threshold for ON_DELAY seconds."""
    run = 0
    for second, score in enumerate(scores):
        run = run + 1 if score > threshold else 0
        if run >= ON_DELAY:
            return second
    return None


async def scores_through_the_pipeline(rows: np.ndarray) -> np.ndarray:
    spec = ModelSpec(name="pump_anomaly", path=pump_anomaly_path(), devices=("pump1",),
                     inputs=PUMP_FEATURES,
                     outputs=("anomaly_score",))  # fmt: skip
    stage = InferenceStage([spec])
    out: list[float] = []
    try:
        for second, row in enumerate(rows):
            batch = [Reading("pump1", tag, second * 1_000_000, float(v))
                     for tag, v in zip(PUMP_FEATURES, row, strict=True)]  # fmt: skip
            result = await stage(batch)
            out.append(float(result[-1].value))
    finally:
        stage.close()
    return np.asarray(out)


async def test_normal_running_never_holds_above_the_threshold() -> None:
    threshold = suggested_threshold(pump_anomaly_path())
    assert threshold is not None
    for seed in (101, 102):
        scores = await scores_through_the_pipeline(sample_pump(hours=0.5, seed=seed))
        assert first_sustained(scores, threshold) is None


async def test_bearing_wear_is_seen_within_minutes() -> None:
    threshold = suggested_threshold(pump_anomaly_path())
    assert threshold is not None
    rows = sample_pump(hours=0.1, seed=103, wear_minutes=10)
    scores = await scores_through_the_pipeline(rows)
    seen_at = first_sustained(scores, threshold)
    assert seen_at is not None
    assert seen_at < 180  # a bearing ten minutes from failure is flagged within three minutes
