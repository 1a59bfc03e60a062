"""Config documents as the cloud handles them: parsed enough to be safe, redacted, compared.

The cloud stores the text a user pushed (YAML or JSON, comments and all) and never runs the
agent's validator (it may not import the edge): `tagway cloud config push` validates before it
sends, and the gateway validates again before it applies. Here a document only has to be a
mapping of sections of bounded size.

Secrets (the MQTT devices' password hashes, broker passwords, tokens) stay in the stored text
for the gateway, and are replaced by ``<redacted>`` in what a user below admin sees: in place,
in the text, so comments and layout survive and a diff still lines up.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Final

import yaml

from cloud.contract import MAX_CONFIG_BYTES, config_digest, storable
from cloud.errors import InvalidRequest

REDACTED: Final = "<redacted>"
DEFAULT_PROBATION_S: Final = 60.0
_SECRET_KEY = re.compile(r"(^|_)(password|passwd|passphrase|secret|token|api_key|password_hash)$")
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_LABEL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._/-]{0,99})=([A-Za-z0-9._/:-]{1,200})$")

__all__ = ["config_digest", "diff", "parse_document", "parse_label", "probation_s", "redact"]


def parse_document(text: str, *, path: list[str | int]) -> dict[str, Any]:
    """The document as data; `InvalidRequest` (naming `path`) unless it is a mapping of
    sections within the size limit."""
    if not storable(text):
        raise InvalidRequest("a config document may not hold NUL or lone surrogates", path=path)
    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise InvalidRequest(f"a config document holds at most {MAX_CONFIG_BYTES} bytes", path=path)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InvalidRequest(f"the document is not valid YAML or JSON{where}", path=path) from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise InvalidRequest("a config document is a mapping of sections", path=path)
    return data


def probation_s(data: dict[str, Any]) -> float:
    """The probation the document asks for (``fleet.probation``), or the agent's default.

    Read leniently: the gateway's validator is the judge; this only sizes the cloud's wait.
    """
    fleet = data.get("fleet")
    value = fleet.get("probation") if isinstance(fleet, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 86_400:
        return float(value)
    return DEFAULT_PROBATION_S


def redact(text: str) -> str:
    """`text` with the value of every secret key replaced by ``<redacted>``, in place."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except (yaml.YAMLError, RecursionError):
        return REDACTED  # not ours to show piecemeal: stored documents always parse
    spans: list[tuple[int, int, str]] = []
    _secret_spans(root, text, spans)
    out = text
    for start, end, replacement in sorted(spans, reverse=True):
        out = out[:start] + replacement + out[end:]
    return out


def _secret_spans(node: yaml.Node | None, text: str, spans: list[tuple[int, int, str]]) -> None:
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and _SECRET_KEY.search(key.value.lower()):
                    spans.append(_value_span(key, value, text))
                else:
                    stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def _value_span(key: yaml.Node, value: yaml.Node, text: str) -> tuple[int, int, str]:
    """Where a secret's value is in the text, and what replaces it there. A value on the
    key's line is replaced alone; one on the following lines (a block list or mapping, an empty
    value) from the key's end, so the replacement lands on the key's line."""
    start, end = value.start_mark.index, value.end_mark.index
    end = start + len(text[start:end].rstrip())  # a block's end mark is past its last newline
    if value.start_mark.line == key.end_mark.line and end > start:
        return start, end, f'"{REDACTED}"'
    return key.end_mark.index, max(end, key.end_mark.index), f': "{REDACTED}"'


def diff(old: str, new: str, *, old_name: str, new_name: str) -> str:
    """A unified diff of two documents (empty when they are the same)."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), old_name, new_name
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def parse_label(text: str, *, path: list[str | int]) -> tuple[str, str]:
    """``key=value`` as (key, value); `InvalidRequest` naming `path` otherwise."""
    match = _LABEL.match(text)
    if match is None:
        raise InvalidRequest(
            "a label is key=value (letters, digits, . _ / -; the value may also hold ':')",
            path=path,
        )
    return match[1], match[2]
