"""Derived tags: small arithmetic expressions over other tags of the same device.

`flow * 0.06`, `(t_out - t_in) * flow * 4.186`, `max(p1, p2)`, `level > 80`: the expression is
parsed with `ast`, every node is checked against a short allow-list (numbers, tag names, arithmetic,
comparisons, boolean logic, conditional expressions and a few math functions), and only then
compiled. There is no attribute access, subscript, lambda, comprehension or call of anything not
listed, and the compiled code runs with empty builtins, so a config file cannot run Python.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import CodeType
from typing import Final

from edge.errors import EdgeError
from protocols.reading import Value

FUNCTIONS: Final[Mapping[str, Callable[..., float]]] = {
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "floor": math.floor,
    "ceil": math.ceil,
}

_ALLOWED_NODES: Final = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.And,
    ast.Or,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)


class ExpressionError(EdgeError, ValueError):
    """The expression is not allowed or cannot be evaluated; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Expression:
    """A checked, compiled expression and the tag names it reads.

    Build one with `Expression.parse(text)`.
    """

    text: str
    inputs: frozenset[str]
    _code: CodeType

    @classmethod
    def parse(cls, text: str) -> Expression:
        """Check and compile `text`; raise `ExpressionError` naming the offending part."""
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"{text!r} is not a valid expression: {exc.msg}") from exc
        names: set[str] = set()
        for node in ast.walk(tree):
            _check_node(node, text, names)
        code = compile(tree, "<expression>", "eval")
        return cls(text=text, inputs=frozenset(names), _code=code)

    def evaluate(self, values: Mapping[str, Value]) -> float | bool:
        """Evaluate with `values` for the input tags; raise `ExpressionError` on a math error."""
        scope: dict[str, object] = dict(FUNCTIONS)
        scope.update(values)
        try:
            result = eval(self._code, {"__builtins__": {}}, scope)  # noqa: S307 - AST allow-listed above
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise ExpressionError(f"{self.text!r} failed: {exc}") from exc
        if isinstance(result, bool):
            return result
        if isinstance(result, int | float):
            return float(result)
        raise ExpressionError(f"{self.text!r} gave {type(result).__name__}, expected a number")


def _check_node(node: ast.AST, text: str, names: set[str]) -> None:
    if not isinstance(node, _ALLOWED_NODES):
        raise ExpressionError(f"{text!r}: {type(node).__name__} is not allowed in an expression")
    if isinstance(node, ast.Constant) and (
        isinstance(node.value, str | bytes) or node.value is None
    ):
        raise ExpressionError(f"{text!r}: only numbers and booleans may be literals")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise ExpressionError(f"{text!r}: only these functions may be called: {allowed}")
        if node.keywords:
            raise ExpressionError(f"{text!r}: keyword arguments are not allowed")
    elif isinstance(node, ast.Name) and node.id not in FUNCTIONS:
        if node.id.startswith("_"):
            raise ExpressionError(f"{text!r}: name {node.id!r} may not start with '_'")
        names.add(node.id)
