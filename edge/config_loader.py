"""Load a YAML file into a pydantic model, with errors a person can act on.

Every error names the file, the line (when the YAML has one for that field), the field path and
what was expected, e.g.::

    /etc/tagway/config.yaml:14: devices[0].tags[3].type: Input should be 'bool', 'bit', ...

After this boundary only frozen, typed config objects travel through the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pydantic
import yaml

from edge.errors import EdgeError

M = TypeVar("M", bound=pydantic.BaseModel)

# libyaml's parser when PyYAML was built with it (the wheels are): several times faster and
# smaller than the pure-Python one on a large tag list. Both are the safe loader.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_DISCRIMINATORS = ("protocol", "kind")  # keys whose value pydantic repeats in an error's path


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(EdgeError):
    """The config file cannot be used. `issues` lists every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


def load_model(path: Path, model: type[M]) -> M:
    """Read `path` as YAML and validate it as `model`; raise `ConfigError` with every issue."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(name, None, "", f"cannot read: {exc.strerror}")]) from exc
    return parse_model(text, model, source=name)


def parse_model(text: str, model: type[M], *, source: str = "<config>") -> M:
    """Validate YAML `text` as `model`; `source` names it in errors."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue(source, line, "", f"not valid YAML: {problem}")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "", "expected a mapping of sections at the top")])
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        # The node tree (with line numbers) is built only when there is something to point at:
        # for a 10,000-tag file it costs tens of MB that a running gateway should not keep.
        root = yaml.compose(text, Loader=_Loader)
        issues = []
        for err in exc.errors(include_url=False):
            line, loc = _locate(root, err["loc"])
            issues.append(ConfigIssue(source, line, _dotted(loc), _message(err)))
        raise ConfigError(issues) from exc


def _message(error: object) -> str:
    err = dict(error)  # type: ignore[call-overload]
    message = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling; unknown keys are errors)"
    if err["type"] == "missing":
        return "required field is missing"
    if "input" in err and err["type"] not in {"missing"} and not isinstance(err["input"], dict):
        return f"{message} (got {err['input']!r})"
    return message


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out


def _locate(
    node: yaml.Node | None, loc: tuple[int | str, ...]
) -> tuple[int | None, tuple[int | str, ...]]:
    """The 1-based line of the YAML node at `loc` (or its nearest existing parent), and `loc`
    without the union tags pydantic inserts (``devices[0].modbus.host`` -> ``devices[0].host``)."""
    line = node.start_mark.line + 1 if node is not None else None
    shown: list[int | str] = []
    found = True
    for part in loc:
        if not found:
            shown.append(part)
            continue
        if isinstance(node, yaml.MappingNode):
            keys = {k.value: (k, v) for k, v in node.value}
            if part not in keys:
                tags = (keys[k][1] for k in _DISCRIMINATORS if k in keys)
                if any(isinstance(v, yaml.ScalarNode) and v.value == part for v in tags):
                    continue  # a discriminator value such as `modbus`: not a level of the file
                found = False
                shown.append(part)
                continue
            key, node = keys[part]
            line = key.start_mark.line + 1
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            found = False
        shown.append(part)
    return line, tuple(shown)
