"""Load a YAML file into a pydantic model, with errors a person can act on.

Every error names the file, the line (when the YAML has one for that field), the field path and
what was expected, e.g.::

    /etc/tagway/config.yaml:14: devices[0].tags[3].type: Input should be 'bool', 'bit', ...

After this boundary only frozen, typed config objects travel through the agent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pydantic
import yaml

from edge.errors import EdgeError

M = TypeVar("M", bound=pydantic.BaseModel)

# libyaml's parser when PyYAML was built with it (the wheels are): several times faster and
# smaller than the pure-Python one on a large tag list. Both are the safe loader.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_DISCRIMINATORS = ("protocol", "kind")  # keys whose value pydantic repeats in an error's path

Checks = Callable[[dict[str, Any]], list[tuple[tuple[int | str, ...], str]]]
"""Checks across sections, run on the YAML data in the same pass as the field checks."""

DUPLICATE_NAMES: Final = "duplicate_names"
"""The error type of a model validator's name check that `Checks` also makes, at each entry."""

# The YAML contexts whose mark, not the problem's, is where the mistake is: the key without
# its ':' (the parser notices on the next line), the bracket or quote that is never closed.
_OPENED_AT: Final = {
    "while scanning a simple key": "expected 'key: value' (is a ':' missing?)",
    "while parsing a flow sequence": "the '[' opened here is not closed",
    "while parsing a flow mapping": "the '{' opened here is not closed",
    "while scanning a quoted scalar": "the quote opened here is not closed",
}


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


def load_model(path: Path, model: type[M], *, checks: Checks | None = None) -> M:
    """Read `path` as YAML and validate it as `model`; raise `ConfigError` with every issue."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(name, None, "", f"cannot read: {exc.strerror}")]) from exc
    return parse_model(text, model, source=name, checks=checks)


def _yaml_issue(exc: yaml.YAMLError, source: str) -> ConfigIssue:
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context in _OPENED_AT and opened is not None:
        return ConfigIssue(source, opened.line + 1, "", f"not valid YAML: {_OPENED_AT[context]}")
    line = mark.line + 1 if mark is not None else None
    return ConfigIssue(source, line, "", f"not valid YAML: {problem}")


def parse_model(
    text: str, model: type[M], *, source: str = "<config>", checks: Checks | None = None
) -> M:
    """Validate YAML `text` as `model` (and by `checks`); `source` names it in errors.

    A JSON document (JSON is YAML) is read with `json` instead: PyYAML builds a node for every
    scalar before it builds the data, and for a 100,000-tag config that peak leaves the agent
    hundreds of MB larger for the rest of its life. Anything `json` refuses is read as YAML.
    """
    data = _json_document(text)
    if data is _NOT_JSON:
        try:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
        except yaml.YAMLError as exc:
            raise ConfigError([_yaml_issue(exc, source)]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "", "expected a mapping of sections at the top")])
    found = checks(data) if checks is not None else []
    try:
        validated = model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False)
        if found:  # the checks name each repeated entry; the model's check names none
            errors = [e for e in errors if e["type"] != DUPLICATE_NAMES]
        raise ConfigError(_located(text, source, errors, found)) from exc
    if found:
        raise ConfigError(_located(text, source, [], found))
    return validated


_NOT_JSON: Final = object()


def _json_document(text: str) -> Any:
    """`text` parsed as a JSON object, or `_NOT_JSON`."""
    if not text.lstrip().startswith("{"):
        return _NOT_JSON
    try:
        return json.loads(text)
    except ValueError:  # YAML flow style, comments, ...: the YAML loader decides
        return _NOT_JSON


def _located(
    text: str,
    source: str,
    errors: list[Any],
    found: list[tuple[tuple[int | str, ...], str]],
) -> list[ConfigIssue]:
    """Every problem with its line, in the order of the file."""
    # The node tree (with line numbers) is built only when there is something to point at:
    # for a 10,000-tag file it costs tens of MB that a running gateway should not keep.
    root = yaml.compose(text, Loader=_Loader)
    issues = []
    for err in errors:
        where = tuple(err["loc"])
        if err["type"] in {"union_tag_invalid", "union_tag_not_found"}:
            where = (*where, str((err.get("ctx") or {}).get("discriminator", "")).strip("'"))
        line, loc = _locate(root, where)
        issues.append(ConfigIssue(source, line, _dotted(loc), _message(err)))
    for where, message in found:
        line, loc = _locate(root, where)
        issues.append(ConfigIssue(source, line, _dotted(loc), message))
    return sorted(issues, key=lambda issue: issue.line or 0)


_FIXED: Final = {
    "extra_forbidden": "unknown key (check the spelling; unknown keys are errors)",
    "missing": "required field is missing",
    "union_tag_not_found": "required field is missing",
}
_EXPECTED_TAGS = re.compile(r"does not match any of the expected tags: (.*)$")


def _message(error: object) -> str:
    """pydantic's message in the product's words."""
    err = dict(error)  # type: ignore[call-overload]
    kind = err["type"]
    ctx = err.get("ctx") or {}
    message = str(err["msg"]).removeprefix("Value error, ")
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed
    if kind == "too_short" and "min_length" in ctx:
        least = ctx["min_length"]
        return f"needs at least {least} {'entry' if least == 1 else 'entries'}; the list is empty"
    if kind == "union_tag_invalid":
        expected = _EXPECTED_TAGS.search(message)
        choices = expected[1] if expected else ""
        return f"{ctx.get('tag')!r} is not one tagway knows; expected one of {choices}"
    message = message.replace("Input should be", "must be").replace("Input ", "the value ")
    if "input" in err and not isinstance(err["input"], (dict, list)):
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
