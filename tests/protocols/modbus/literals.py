"""Register values written out by hand from the order definitions in COMMON.md.

Shared by the codec unit tests and the integration tests, which serve these exact registers from
a real server and expect the driver to decode the value.
"""

from __future__ import annotations

from typing import Any

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")

# (type, value, {order: registers})
LITERALS: list[tuple[str, Any, dict[str, list[int]]]] = [
    (
        "float32",
        1.0,
        {
            "ABCD": [0x3F80, 0x0000],
            "CDAB": [0x0000, 0x3F80],
            "BADC": [0x803F, 0x0000],
            "DCBA": [0x0000, 0x803F],
        },
    ),
    (
        "int32",
        0x12345678,
        {
            "ABCD": [0x1234, 0x5678],
            "CDAB": [0x5678, 0x1234],
            "BADC": [0x3412, 0x7856],
            "DCBA": [0x7856, 0x3412],
        },
    ),
    (
        "int32",
        -2,
        {
            "ABCD": [0xFFFF, 0xFFFE],
            "CDAB": [0xFFFE, 0xFFFF],
            "BADC": [0xFFFF, 0xFEFF],
            "DCBA": [0xFEFF, 0xFFFF],
        },
    ),
    (
        "uint32",
        0xDEADBEEF,
        {
            "ABCD": [0xDEAD, 0xBEEF],
            "CDAB": [0xBEEF, 0xDEAD],
            "BADC": [0xADDE, 0xEFBE],
            "DCBA": [0xEFBE, 0xADDE],
        },
    ),
    (
        "int64",
        0x0102030405060708,
        {
            "ABCD": [0x0102, 0x0304, 0x0506, 0x0708],
            "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
            "BADC": [0x0201, 0x0403, 0x0605, 0x0807],
            "DCBA": [0x0807, 0x0605, 0x0403, 0x0201],
        },
    ),
    (
        "int64",
        -1,
        {order: [0xFFFF] * 4 for order in ORDERS},
    ),
    (
        "uint64",
        0xF1F2F3F4F5F6F7F8,
        {
            "ABCD": [0xF1F2, 0xF3F4, 0xF5F6, 0xF7F8],
            "CDAB": [0xF7F8, 0xF5F6, 0xF3F4, 0xF1F2],
            "BADC": [0xF2F1, 0xF4F3, 0xF6F5, 0xF8F7],
            "DCBA": [0xF8F7, 0xF6F5, 0xF4F3, 0xF2F1],
        },
    ),
    (
        "float64",
        1.0,
        {
            "ABCD": [0x3FF0, 0x0000, 0x0000, 0x0000],
            "CDAB": [0x0000, 0x0000, 0x0000, 0x3FF0],
            "BADC": [0xF03F, 0x0000, 0x0000, 0x0000],
            "DCBA": [0x0000, 0x0000, 0x0000, 0xF03F],
        },
    ),
    (
        "int16",
        -2,
        {"ABCD": [0xFFFE], "CDAB": [0xFFFE], "BADC": [0xFEFF], "DCBA": [0xFEFF]},
    ),
    (
        "uint16",
        0x1234,
        {"ABCD": [0x1234], "CDAB": [0x1234], "BADC": [0x3412], "DCBA": [0x3412]},
    ),
]
