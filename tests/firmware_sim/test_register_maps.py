"""The shipped register maps: valid, non-overlapping, and covering every encoding."""

from __future__ import annotations

import itertools

from firmware_sim.register_map import DEVICE_TYPES, load_map


def test_every_wide_type_appears_in_every_word_order() -> None:
    seen = {(t.type, t.order) for kind in DEVICE_TYPES for t in load_map(kind).tags}
    wide = ("int32", "uint32", "float32", "int64", "uint64", "float64")
    missing = [
        c for c in itertools.product(wide, ("ABCD", "CDAB", "BADC", "DCBA")) if c not in seen
    ]
    assert missing == []
    types = {t for t, _ in seen}
    assert {"int16", "uint16", "string", "bit", "bool"} <= types


def test_maps_mark_devices_simulated_and_have_scaled_and_writable_tags() -> None:
    for kind in DEVICE_TYPES:
        register_map = load_map(kind)
        assert register_map.simulated is True
        assert any(t.writable for t in register_map.tags), kind
    assert any(t.scale != 1 for t in load_map("pump").tags)
    assert any(t.offset != 0 for t in load_map("tank").tags)


def test_tags_do_not_overlap() -> None:
    for kind in DEVICE_TYPES:
        used: dict[tuple[str, int, int | None], str] = {}
        for tag in load_map(kind).tags:
            for register in range(tag.address, tag.address + tag.registers):
                key = (tag.table, register, tag.bit)
                assert key not in used, f"{kind}: {tag.name} overlaps {used[key]}"
                used[key] = tag.name
