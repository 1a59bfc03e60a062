"""Train the demo pump's anomaly model from the simulated plant and export it as ONNX.

    python -m cli.train_anomaly [--out edge/models/pump_anomaly.onnx] [--hours 6] [--seed 11]

It steps `firmware_sim`'s plant model in simulated time (no sockets: the physics is all it needs),
runs a pump through normal operation at speeds swept between 55 % and 100 % with pauses so
temperatures settle, samples the five process tags once a second, and fits a PCA anomaly model
(`edge.inference.pca`): normal operation keeps the tags in the relationships the affinity laws
give; a worn bearing adds vibration and heat that flow and current do not explain. The alarm
threshold is stored in the model's metadata (`threshold`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edge.inference import pca
from edge.models import PUMP_FEATURES
from firmware_sim.faults import BearingWear
from firmware_sim.simulation import PlantModel


def sample_pump(
    *, hours: float, seed: int, wear_minutes: float | None = None, warmup_s: int = 600
) -> np.ndarray:
    """Rows of PUMP_FEATURES, one per simulated second, from pump1 of a fresh plant."""
    model = PlantModel(devices=1, seed=seed)
    pump = model.device("pump1")
    rng = np.random.default_rng(seed)
    rows: list[list[float]] = []
    total = int(hours * 3600)
    for second in range(warmup_s + total):
        if second % 900 == 0:  # a new operating point every 15 minutes
            pump.values["speed_setpoint"] = float(rng.uniform(55, 100))
        if wear_minutes is not None and second == warmup_s:
            model.add_fault(BearingWear(device="pump1", minutes_to_failure=wear_minutes))
        model.step(1.0)
        if second >= warmup_s:
            rows.append([float(pump.values[tag]) for tag in PUMP_FEATURES])
    return np.asarray(rows, dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    """Train and write the model; print what it scores on normal and worn pumps."""
    parser = argparse.ArgumentParser(prog="python -m cli.train_anomaly")
    parser.add_argument("--out", type=Path, default=Path("edge/models/pump_anomaly.onnx"))
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    normal = sample_pump(hours=args.hours, seed=args.seed)
    fit = pca.fit_pca(normal, components=2, quantile=0.9995)
    pca.save(fit, args.out)
    check = sample_pump(hours=0.5, seed=args.seed + 1)
    worn = sample_pump(hours=0.25, seed=args.seed + 2, wear_minutes=10)
    false_alarms = float((fit.score(check.astype(np.float32)) > fit.threshold).mean())
    worn_scores = fit.score(worn.astype(np.float32))[:, 0]
    first = (
        int(np.argmax(worn_scores > fit.threshold)) if (worn_scores > fit.threshold).any() else -1
    )
    print(f"wrote {args.out}: threshold {fit.threshold:.3f}; normal above it {false_alarms:.4%}; "  # noqa: T201
          f"worn bearing above it after {first} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
