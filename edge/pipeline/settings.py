"""The pipeline's settings from the agent config: deadbands, derived tags and alarm rules, built
at start and applied again to the running pipeline after a config reload."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from edge.alarms import AlarmKind, AlarmRule
from edge.config import AgentConfig, MqttSource, Reporting
from edge.pipeline.derived import DerivedTag
from edge.pipeline.expressions import Expression
from edge.pipeline.rbe import Deadband
from edge.pipeline.runner import Pipeline

_REPORTING: Final = {"deadband": True, "deadband_percent": True, "heartbeat": True}
"""The report-by-exception fields a tag may set over the `report` defaults."""


def reconfigure(pipeline: Pipeline, config: AgentConfig, *, forget: tuple[str, ...]) -> None:
    """Point the pipeline's stages at a reloaded config. Alarm states, the last reported value of
    each series and the inputs of derived tags carry over; `forget` names devices whose driver
    restarted, so their first readings pass the deadband again."""
    pipeline.rbe.reconfigure(deadbands(config), default=default_deadband(config.report))
    for device in forget:
        pipeline.rbe.forget(device)
    pipeline.replace_stages(
        derived=pipeline.derived.with_tags(derived_tags(config)),
        alarms=pipeline.alarms.with_rules(alarm_rules(config)),
    )
    for key in unconfigured_series(config, pipeline.latest):
        del pipeline.latest[key]


def unconfigured_series(
    config: AgentConfig, series: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The series no device, derived tag or model of `config` produces: the latest values of a
    removed device or tag, which the local API should no longer show. An MQTT source's tags are
    whatever its devices publish, so all of them stay while the source is configured."""
    known = {(d.name, t.name) for d in config.devices if not isinstance(d, MqttSource)
             for t in d.tags}  # fmt: skip
    known.update((d.device, d.tag) for d in config.derived)
    known.update((device, out) for m in config.models for device in m.devices for out in m.outputs)
    open_ended = {d.name for d in config.devices if isinstance(d, MqttSource)}
    return [key for key in series if key not in known and key[0] not in open_ended]


def derived_tags(config: AgentConfig) -> list[DerivedTag]:
    """The derived tags, marked simulated when their device is."""
    simulated = {d.name: d.simulated for d in config.devices}
    return [
        DerivedTag(device=d.device, tag=d.tag, expression=Expression.parse(d.expression),
                   unit=d.unit, simulated=simulated.get(d.device, False))
        for d in config.derived
    ]  # fmt: skip


def default_deadband(reporting: Reporting) -> Deadband:
    """The deadband of tags without settings of their own."""
    return Deadband(**reporting.model_dump())


def deadbands(config: AgentConfig) -> dict[tuple[str, str], Deadband]:
    """The tags with deadband settings of their own, over the `report` defaults."""
    default = config.report
    out: dict[tuple[str, str], Deadband] = {}
    for device in config.devices:
        if isinstance(device, MqttSource):
            continue
        for tag in device.tags:
            own = tag.model_dump(include=_REPORTING, exclude_none=True)
            if own:
                out[(device.name, tag.name)] = Deadband(**(default.model_dump() | own))
    return out


def alarm_rules(config: AgentConfig) -> list[AlarmRule]:
    """The alarm rules, and a high-limit rule per device of each model with an alarm."""
    rules = [AlarmRule(**(a.model_dump() | {"limit": a.limit or 0.0})) for a in config.alarms]
    rules.extend(
        AlarmRule(
            name=f"{model.name}.{device}", device=device, tag=model.outputs[0],
            kind=AlarmKind.HIGH, limit=model.alarm.threshold, on_delay=model.alarm.on_delay,
            warm_up=model.alarm.warm_up,
            severity=model.alarm.severity,
            message=model.alarm.message
            or f"{device}: {model.name} score above {model.alarm.threshold:g}",
        )
        for model in config.models
        if model.alarm is not None
        for device in model.devices
    )  # fmt: skip
    return rules
