"""Derived tags and the safety of their expressions."""

from __future__ import annotations

import pytest

from edge.pipeline.derived import DerivedTag, DerivedTags
from edge.pipeline.expressions import Expression, ExpressionError
from protocols.reading import Quality, Reading


def test_arithmetic_comparisons_and_functions() -> None:
    assert Expression.parse("flow * 0.06").evaluate({"flow": 100}) == pytest.approx(6.0)
    assert Expression.parse("max(p1, p2) - min(p1, p2)").evaluate({"p1": 3, "p2": 5}) == 2.0
    assert Expression.parse("level > 80 and running").evaluate({"level": 81, "running": True})
    assert Expression.parse("sqrt(x) if x > 0 else 0").evaluate({"x": 16}) == 4.0
    assert Expression.parse("(t_out - t_in) * flow").inputs == {"t_out", "t_in", "flow"}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("__import__('os').system('id')", "not allowed|only these functions"),
        ("flow.__class__", "Attribute is not allowed"),
        ("open('/etc/passwd')", "only these functions may be called"),
        ("[x for x in y]", "ListComp is not allowed"),
        ("(lambda: 1)()", "Lambda is not allowed|only these functions"),
        ("x[0]", "Subscript is not allowed"),
        ("'text'", "only numbers and booleans"),
        ("_secret + 1", "may not start with '_'"),
        ("round(x, ndigits=2)", "keyword arguments"),
        ("flow *", "not a valid expression"),
    ],
)
def test_anything_but_arithmetic_is_refused(text: str, complaint: str) -> None:
    with pytest.raises(ExpressionError, match=complaint):
        Expression.parse(text)


def test_math_errors_are_expression_errors() -> None:
    with pytest.raises(ExpressionError, match="division by zero"):
        Expression.parse("a / b").evaluate({"a": 1, "b": 0})


def _stage() -> DerivedTags:
    return DerivedTags(
        [
            DerivedTag(
                device="pump1",
                tag="flow_lps",
                expression=Expression.parse("flow / 3.6"),
                unit="l/s",
            ),
            DerivedTag(
                device="pump1",
                tag="power",
                expression=Expression.parse("current * voltage"),
                unit="VA",
            ),
        ]
    )


def test_derived_reading_follows_its_input_with_unit_and_time() -> None:
    stage = _stage()
    out = stage([Reading("pump1", "flow", 1_000, 36.0)])
    assert [(x.tag, x.value, x.ts, x.unit) for x in out] == [
        ("flow", 36.0, 1_000, None),
        ("flow_lps", pytest.approx(10.0), 1_000, "l/s"),
    ]


def test_waits_until_every_input_was_seen_then_takes_worst_quality() -> None:
    stage = _stage()
    assert len(stage([Reading("pump1", "current", 1, 10.0)])) == 1
    out = stage([Reading("pump1", "voltage", 2, 400.0, Quality.UNCERTAIN)])
    power = out[-1]
    assert (power.tag, power.value, power.quality, power.ts) == (
        "power", 4000.0, Quality.UNCERTAIN, 2,
    )  # fmt: skip


def test_other_devices_do_not_trigger() -> None:
    assert len(_stage()([Reading("pump2", "flow", 1, 36.0)])) == 1


def test_failed_arithmetic_is_a_visible_bad_reading() -> None:
    stage = DerivedTags(
        [DerivedTag(device="t1", tag="ratio", expression=Expression.parse("a / b"))]
    )
    out = stage([Reading("t1", "a", 1, 1.0), Reading("t1", "b", 1, 0.0)])
    assert out[-1].quality is Quality.BAD
    assert "division by zero" in (out[-1].reason or "")
    assert stage.failures == 1
