"""Derived tags: computed from other tags of the same device whenever one of their inputs arrives.

A derived reading takes the newest timestamp among its inputs and the worst of their qualities, so
a derived value is never better than what it was computed from. If an input has never been seen,
nothing is derived yet; if the arithmetic fails (division by zero, log of a negative), the reading
is emitted with bad quality and the reason, so the failure is visible instead of silent.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.pipeline.expressions import Expression, ExpressionError
from protocols.reading import Quality, Reading, Value

_SEVERITY = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class DerivedTag:
    """A tag computed from an expression over other tags of `device`."""

    device: str
    tag: str
    expression: Expression
    unit: str | None = None
    simulated: bool = False


class DerivedTags:
    """The derived-tag stage: appends computed readings to each batch that feeds them."""

    def __init__(self, tags: list[DerivedTag]) -> None:
        self._by_input: dict[tuple[str, str], list[DerivedTag]] = {}
        for derived in tags:
            for name in derived.expression.inputs:
                self._by_input.setdefault((derived.device, name), []).append(derived)
        self._latest: dict[tuple[str, str], Reading] = {}
        self.failures = 0

    def with_tags(self, tags: list[DerivedTag]) -> DerivedTags:
        """A stage computing `tags` that remembers the inputs this one has seen (a config reload:
        a derived tag whose inputs are all known is computed at its next input, not later)."""
        stage = DerivedTags(tags)
        stage._latest = {k: r for k, r in self._latest.items() if k in stage._by_input}
        return stage

    def __call__(self, readings: list[Reading]) -> list[Reading]:
        """Return `readings` followed by the derived readings they trigger."""
        if not self._by_input:
            return readings
        due: dict[tuple[str, str], DerivedTag] = {}
        for reading in readings:
            key = (reading.device, reading.tag)
            if key in self._by_input:
                self._latest[key] = reading
                for derived in self._by_input[key]:
                    due[(derived.device, derived.tag)] = derived
        if not due:
            return readings
        out = list(readings)
        for derived in due.values():
            computed = self._compute(derived)
            if computed is not None:
                out.append(computed)
                self._latest[(derived.device, derived.tag)] = computed
        return out

    def _compute(self, derived: DerivedTag) -> Reading | None:
        inputs: dict[str, Value] = {}
        worst, ts = Quality.GOOD, 0
        for name in derived.expression.inputs:
            source = self._latest.get((derived.device, name))
            if source is None:
                return None
            inputs[name] = source.value
            ts = max(ts, source.ts)
            if _SEVERITY[source.quality] > _SEVERITY[worst]:
                worst = source.quality
        try:
            value: Value = derived.expression.evaluate(inputs)
        except ExpressionError as exc:
            self.failures += 1
            return Reading(
                derived.device, derived.tag, ts, 0.0, Quality.BAD, derived.unit,
                derived.simulated, str(exc),
            )  # fmt: skip
        return Reading(
            derived.device, derived.tag, ts, value, worst, derived.unit, derived.simulated
        )
