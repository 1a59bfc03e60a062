"""The inference stage: ONNX models over sliding windows of tag values, run off the event loop.

A model names its device(s), its input tags, a window (rows) and a hop. Each batch that carries
one of a device's inputs adds a row built from the latest good value of every input (sample and
hold, so subscription data that arrives tag by tag still forms rows). Every `hop` rows, once the
window is full, a window is due; all windows due in one batch, across every device the model
serves, go through the model in one `run` call on a single worker thread, so the event loop never
waits on onnxruntime and the per-call overhead is paid once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge.errors import EdgeError
from protocols.reading import Quality, Reading


class ModelError(EdgeError):
    """A model cannot be loaded or does not fit its configuration; the message names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """One model as configured.

    Args:
        name: the model's name, for messages.
        path: the .onnx file.
        devices: the devices it is applied to (each gets its own windows and output tags).
        inputs: input tag names, in the order of the model's feature columns.
        window: rows per window.
        hop: rows between two evaluations.
        outputs: output tag names, one per output column (e.g. ``("anomaly_score",)``).
        simulated: mark the outputs as simulated (their inputs are).
    """

    name: str
    path: Path
    devices: tuple[str, ...]
    inputs: tuple[str, ...]
    window: int = 1
    hop: int = 1
    outputs: tuple[str, ...] = ("score",)
    simulated: bool = False


@dataclass(slots=True)
class _Windows:
    latest: dict[str, float] = field(default_factory=dict)
    rows: deque[list[float]] = field(default_factory=deque)
    since_last: int = 0


class _Model:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the gateway has few cores and other work to do
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(spec.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own bare Exception subclasses
            raise ModelError(f"model {spec.name!r}: cannot load {spec.path}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self._check_shapes()
        self.windows = {device: _Windows(rows=deque(maxlen=spec.window)) for device in spec.devices}

    def _check_shapes(self) -> None:
        spec = self.spec
        expected = spec.window * len(spec.inputs)
        features = self.session.get_inputs()[0].shape[-1]
        if isinstance(features, int) and features != expected:
            raise ModelError(
                f"model {spec.name!r} takes {features} features, but window {spec.window} x "
                f"{len(spec.inputs)} inputs gives {expected}"
            )
        columns = self.session.get_outputs()[0].shape[-1]
        if isinstance(columns, int) and columns != len(spec.outputs):
            raise ModelError(
                f"model {spec.name!r} gives {columns} outputs, but {len(spec.outputs)} output "
                "tags are configured"
            )

    def feed(self, readings: Sequence[Reading]) -> list[tuple[str, int, list[float]]]:
        """Take a batch; return the windows now due as (device, ts, flattened features)."""
        spec = self.spec
        touched: dict[str, int] = {}
        for reading in readings:
            windows = self.windows.get(reading.device)
            if windows is None or reading.tag not in spec.inputs:
                continue
            if reading.quality is Quality.BAD or isinstance(reading.value, str):
                continue
            windows.latest[reading.tag] = float(reading.value)
            touched[reading.device] = max(touched.get(reading.device, 0), reading.ts)
        due: list[tuple[str, int, list[float]]] = []
        for device, ts in touched.items():
            windows = self.windows[device]
            if len(windows.latest) < len(spec.inputs):
                continue
            windows.rows.append([windows.latest[name] for name in spec.inputs])
            windows.since_last += 1
            if len(windows.rows) == spec.window and windows.since_last >= spec.hop:
                windows.since_last = 0
                due.append((device, ts, [v for row in windows.rows for v in row]))
        return due

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = self.session.run(None, {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(x.shape[0], -1)


class InferenceStage:
    """Runs every configured model on the batches that feed it.

    Args:
        specs: the models.
        threads: worker threads for onnxruntime (1 keeps the gateway predictable).
    """

    def __init__(self, specs: Sequence[ModelSpec], *, threads: int = 1) -> None:
        self._models = [_Model(spec) for spec in specs]
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tagway-onnx")
        self.windows_run = 0

    async def __call__(self, readings: list[Reading]) -> list[Reading]:
        """Return `readings` followed by the model outputs they made due."""
        if not self._models:
            return readings
        out = readings
        loop = asyncio.get_running_loop()
        for model in self._models:
            due = model.feed(readings)
            if not due:
                continue
            x = np.asarray([features for _, _, features in due], dtype=np.float32)
            scores = await loop.run_in_executor(self._executor, model.run, x)
            self.windows_run += len(due)
            if out is readings:
                out = list(readings)
            spec = model.spec
            for (device, ts, _), row in zip(due, scores, strict=True):
                out.extend(
                    Reading(device, tag, ts, float(value), Quality.GOOD, None, spec.simulated)
                    for tag, value in zip(spec.outputs, row, strict=True)
                )
        return out

    def close(self) -> None:
        """Stop the worker thread."""
        self._executor.shutdown(wait=True)
