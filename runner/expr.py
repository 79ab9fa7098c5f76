"""Integer expressions in ``n`` (the device count): a tiny parser, never ``eval``.

Grammar::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/' | '//' | '%') unary)*
    unary  := '-' unary | atom
    atom   := INT | 'n' | '(' expr ')'

``/`` must divide exactly; ``//`` floors; ``%`` is the remainder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LENGTH = 200
_TOKEN = re.compile(r"[ \t]*(?:([0-9]+)|(n)|(//|[-+*/%()]))")


class ExprError(ValueError):
    """An expression that can't be read, or can't be evaluated for this n."""


@dataclass(frozen=True)
class Expr:
    """A parsed expression; ``evaluate(n)`` gives its integer value."""

    text: str
    _rpn: tuple[str | int, ...]

    def evaluate(self, n: int) -> int:
        stack: list[int] = []
        for op in self._rpn:
            if isinstance(op, int):
                stack.append(op)
            elif op == "n":
                stack.append(n)
            elif op == "neg":
                stack.append(-stack.pop())
            else:
                b, a = stack.pop(), stack.pop()
                stack.append(_apply(self.text, op, a, b, n))
        return stack[0]

    @property
    def uses_n(self) -> bool:
        return "n" in self._rpn


def _apply(text: str, op: str, a: int, b: int, n: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise ExprError(f"'{text}' divides by zero when n={n}")
    if op == "/":
        if a % b:
            raise ExprError(f"'{text}' is not a whole number when n={n} ({a}/{b} leaves {a % b})")
        return a // b
    if op == "//":
        return a // b
    return a % b


def visible(text: str) -> str:
    """``text`` for a one-line message: tabs, newlines and other controls escaped."""
    return text if text.isprintable() else repr(text)[1:-1]


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    stripped = text.rstrip(" \t")
    while pos < len(stripped):
        match = _TOKEN.match(stripped, pos)
        if not match:
            bad = visible(stripped[pos:].lstrip(" \t")[:1])
            raise ExprError(
                f"'{visible(text)}' is not a valid size: '{bad}' is not allowed; use whole numbers, n, "
                "+ - * / // % and parentheses (for example 3*n or n/2)"
            )
        tokens.append(match.group(match.lastindex))
        pos = match.end()
    return tokens


def parse(text: str | int) -> Expr:
    """Parse an int or an expression string into an :class:`Expr`."""
    if isinstance(text, bool):
        raise ExprError(f"{str(text).lower()} is not a size; write a number or an expression in n")
    if isinstance(text, int):
        return Expr(str(text), (text,))
    if not isinstance(text, str):
        raise ExprError(
            f"{type(text).__name__} is not a size; write a number or an expression in n"
        )
    if len(text) > MAX_LENGTH:
        raise ExprError(f"the expression is longer than {MAX_LENGTH} characters; simplify it")
    tokens = _tokenize(text)
    if not tokens:
        raise ExprError("an empty expression; write a number or an expression in n such as 2*n")
    shown = visible(text)  # the text that messages quote, from here on
    parser = _Parser(shown, tokens)
    parser.expr()
    if parser.pos != len(tokens):
        raise ExprError(f"'{shown}' is not a valid expression: unexpected '{tokens[parser.pos]}'")
    return Expr(shown, tuple(parser.out))


class _Parser:
    def __init__(self, text: str, tokens: list[str]):
        self.text, self.tokens, self.pos, self.out = text, tokens, 0, []
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self) -> None:
        self.term()
        while self.peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            self.term()
            self.out.append(op)

    def term(self) -> None:
        self.unary()
        while self.peek() in ("*", "/", "//", "%"):
            op = self.tokens[self.pos]
            self.pos += 1
            self.unary()
            self.out.append(op)

    def unary(self) -> None:
        if self.peek() == "-":
            self.pos += 1
            self.unary()
            self.out.append("neg")
        else:
            self.atom()

    def atom(self) -> None:
        token = self.peek()
        if token is None:
            raise ExprError(f"'{self.text}' ends too early; something is missing at the end")
        self.pos += 1
        if token.isdigit():
            self.out.append(int(token))
        elif token == "n":
            self.out.append("n")
        elif token == "(":
            self.depth += 1
            if self.depth > 20:
                raise ExprError(f"'{self.text}' nests parentheses too deeply")
            self.expr()
            if self.peek() != ")":
                raise ExprError(f"'{self.text}' has a '(' without a matching ')'")
            self.pos += 1
            self.depth -= 1
        else:
            raise ExprError(f"'{self.text}' is not a valid expression: unexpected '{token}'")
