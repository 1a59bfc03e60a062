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

M = TypeVar("M", bound=pydantic.BaseModel)


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


class ConfigError(Exception):
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
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
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
        issues = [
            ConfigIssue(source, _line_of(root, err["loc"]), _dotted(err["loc"]), _message(err))
            for err in exc.errors(include_url=False)
        ]
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


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at `loc`, or of its nearest existing parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
            if match is None:
                key = next((k for k, _ in node.value if k.value == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
        else:
            return line  # a discriminator tag or a validator's own location
        line = node.start_mark.line + 1
    return line
