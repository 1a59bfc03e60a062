"""The latest-value cache (issue 23): the last reading of every series, whatever mix of devices
a batch carries, removable series by series as a config reload needs."""

from __future__ import annotations

from edge.pipeline.latest import LatestValues
from protocols.reading import Reading

T0 = 1_795_000_000_000_000


def batch(device: str, tags: list[str], ts: int, value: float) -> list[Reading]:
    return [Reading(device, tag, ts, value) for tag in tags]


def test_later_readings_win_per_series_for_one_device_and_mixed_batches() -> None:
    latest = LatestValues()
    latest.update_from(batch("pump1", ["flow", "speed"], T0, 1.0))
    latest.update_from(batch("pump1", ["flow"], T0 + 1, 2.0))
    mixed = [Reading("tank1", "level", T0, 5.0), Reading("pump2", "flow", T0, 6.0),
             Reading("tank1", "level", T0 + 1, 7.0)]  # fmt: skip
    latest.update_from(mixed)
    latest.update_from([])
    assert latest[("pump1", "flow")].value == 2.0
    assert latest[("pump1", "speed")].value == 1.0
    assert latest[("tank1", "level")].value == 7.0
    assert len(latest) == 4
    assert set(latest) == {("pump1", "flow"), ("pump1", "speed"), ("tank1", "level"),
                           ("pump2", "flow")}  # fmt: skip
    assert sorted(r.value for r in latest.readings()) == [1.0, 2.0, 6.0, 7.0]
    assert set(latest.device("pump1")) == {"flow", "speed"}


def test_series_are_removed_one_by_one_and_a_device_with_none_left_goes() -> None:
    latest = LatestValues()
    latest.update_from(batch("pump1", ["flow", "speed"], T0, 1.0))
    for key in [k for k in latest if k[1] == "flow"]:  # as a reload forgets removed tags
        del latest[key]
    assert list(latest) == [("pump1", "speed")]
    del latest[("pump1", "speed")]
    assert len(latest) == 0
    assert latest.device("pump1") == {}
    latest[("pump3", "flow")] = Reading("pump3", "flow", T0, 3.0)
    assert latest.get(("pump3", "flow")) == Reading("pump3", "flow", T0, 3.0)
    assert latest.get(("pump9", "flow")) is None
