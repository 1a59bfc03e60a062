"""Smaller per-tag config models for the agent's lifetime (issue 23).

A gateway keeps its validated config for as long as it runs (reloads compare against it, the local
API and writes read it), and at 100,000 tags the tag models are the largest thing it holds: about
860 bytes each, 86 MB. Two parts of each pydantic model repeat from tag to tag:

- its `__pydantic_fields_set__`, a set of the fields the file gave (216 bytes), which is the same
  set for nearly every tag of a generated map: tags with equal sets share one;
- its `__dict__`, a dict of all 19 fields with its own copy of the keys (464 bytes): CPython lets
  instances of one class share one key table (PEP 412), so each tag's values are moved into a
  dict of that kind, made by an instance of a plain class per tag model (224 bytes).

Both halve a tag (430 bytes, measured with tracemalloc). Nothing else changes: the models are
frozen, so neither the set nor the dict is changed in place afterwards (`model_copy` copies the
set before it adds to it), and equality, hashing, dumps and attribute reads see the same values.
Where an interpreter does not share keys, the dicts are simply as large as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

_holders: dict[type[BaseModel], type] = {}


def compact_models(models: Iterable[BaseModel]) -> int:
    """Make frozen models (tags) share their fields sets and key tables; returns how many."""
    sets: dict[tuple[type[BaseModel], frozenset[str]], set[str]] = {}
    count = 0
    for model in models:
        cls = type(model)
        if not cls.model_config.get("frozen"):
            continue  # a model that can change in place keeps its own set and dict
        fields = model.__pydantic_fields_set__
        shared = sets.setdefault((cls, frozenset(fields)), fields)
        values = _shared_keys_dict(cls, model.__dict__)
        object.__setattr__(model, "__pydantic_fields_set__", shared)
        object.__setattr__(model, "__dict__", values)
        count += 1
    return count


def _shared_keys_dict(cls: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The same items, in a dict whose key table is shared by every model of `cls`."""
    holder_type = _holders.get(cls)
    if holder_type is None:
        holder_type = _holders[cls] = type(f"_{cls.__name__}Values", (), {})
    holder = holder_type()
    for key, value in values.items():
        setattr(holder, key, value)
    shared: dict[str, Any] = holder.__dict__
    return shared
