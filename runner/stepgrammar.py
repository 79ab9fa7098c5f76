"""The tiny grammar of one step: ``[NAME =] call(arg, ..., key=value)``, never ``eval``.

Grammar (whitespace is free between tokens)::

    step   := [IDENT '='] IDENT '(' [arg {',' arg}] [','] ')'
    arg    := [IDENT '='] value
    value  := '[' [value {',' value}] [','] ']'          a list
            | Shard(INT) | Replicate() | Partial([sum|avg|max|min])
            | float32 | float64 | float16 | bfloat16 | int32 | int64 | bool
            | true | false | null
            | NUMBER | '-' NUMBER                         1, -1, 0.5, 1e-3, 1.0e-5
            | an integer expression in n                  2*n, n/2, (n+1)//2
            | NAME                                        x, x.grad, model.fc1.weight

``NAME`` is IDENT {'.' IDENT}: a dotted name is one value's name, not attribute access.
Every problem is a :class:`StepSyntaxError` with a plain message and the column it is at.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

from . import expr
from .expr import visible
from .placements import REDUCE_OPS, Placement

MAX_LENGTH = 2000
MAX_DEPTH = 10
DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "bool")
PLACEMENT_NAMES = ("Shard", "Replicate", "Partial")
WORDS = {"true": True, "false": False, "null": None}
RESERVED = frozenset(("n", *WORDS, "True", "False", "None", *DTYPES, *PLACEMENT_NAMES))
FORM = "NAME = call(args), such as y = redistribute(x, [Replicate()])"
_MODULE_PREFIXES = frozenset(
    ("torch", "F", "nn.functional", "torch.nn.functional", "xs", "torch_xla", "dist")
)
_PYTHON_WORDS = {"True": "true", "False": "false", "None": "null"}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(
    rf"(?P<name>{_IDENT}(?:\.{_IDENT})*)"
    r"|(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<op>//|\*\*|[-+*/%])"
    r"|(?P<punct>[()\[\],=])"
    r"|(?P<space>[ \t\r\n]+)"
)
_INT = re.compile(r"[0-9]+")
_CLOSE = {"(": ")", "[": "]"}
_OPEN = {v: k for k, v in _CLOSE.items()}
_CHAR_HINTS = {
    "'": "quotes aren't used in steps: write names and words bare, such as to(x, float16) or redistribute(x, [Replicate()])",
    '"': "quotes aren't used in steps: write names and words bare, such as to(x, float16) or redistribute(x, [Replicate()])",
    "@": "'@' isn't used in steps; multiply matrices with a call of their own: z = matmul(x, w)",
    "{": "braces aren't used in steps; a list is written with [ ], such as [Shard(0), Replicate()]",
    "}": "braces aren't used in steps; a list is written with [ ], such as [Shard(0), Replicate()]",
    ".": "'.' only joins the parts of a value name, such as x.grad or model.fc1.weight; a number is written 0.5, not .5",
    ":": "':' isn't used in steps; a keyword argument is written with '=', such as sum(z, dim=0)",
    ";": "';' isn't used in steps; write one call per step",
    "#": "'#' isn't used in steps; put a comment after the whole YAML string instead",
}


class StepSyntaxError(ValueError):
    """A step that can't be read: ``message`` in plain words, ``column`` 0-based into the text."""

    def __init__(self, message: str, column: int = 0):
        super().__init__(f"{message} (at column {column + 1})")
        self.message = message
        self.column = column


@dataclass(frozen=True)
class Name:
    """A value name: ``x``, ``x.grad``, ``model.fc1.weight``."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Expr:
    """An integer expression in n (``2*n``, ``n/2``); evaluate with ``runner.expr``."""

    text: str

    def __str__(self) -> str:
        return self.text

    def evaluate(self, n: int) -> int:
        """Its value for this n; raises expr.ExprError."""
        return expr.parse(self.text).evaluate(n)


@dataclass(frozen=True)
class DType:
    """A dtype word: float32 float64 float16 bfloat16 int32 int64 bool."""

    name: str

    def __str__(self) -> str:
        return self.name


Arg = Name | Expr | DType | Placement | int | float | bool | None | list


@dataclass(frozen=True)
class Step:
    """One parsed step; ``text`` is the step as written."""

    target: str | None
    call: str
    args: tuple
    kwargs: dict[str, Any]
    text: str

    def __str__(self) -> str:
        return format_step(self)


def format_value(value: Any) -> str:
    """A value as a step writes it (the inverse of the parser)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_step(step: Step) -> str:
    """The step in its canonical form: ``y = call(a, b, key=value)``."""
    parts = [format_value(a) for a in step.args]
    parts += [f"{key}={format_value(v)}" for key, v in step.kwargs.items()]
    call = f"{step.call}({', '.join(parts)})"
    return f"{step.target} = {call}" if step.target else call


@dataclass(frozen=True)
class _Tok:
    kind: str  # name num op punct end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            char = text[pos]
            hint = _CHAR_HINTS.get(char) or (
                f"'{visible(char)}' can't be used in a step; a step is {FORM}, with value names, "
                "numbers, lists in [ ] and placements"
            )
            raise StepSyntaxError(hint, pos)
        kind = match.lastgroup or ""
        if kind == "name" and match.end() < len(text) and text[match.end()] == ".":
            raise StepSyntaxError(
                f"'{visible(match.group() + '.')}' ends with a '.'; a dotted value name joins words, "
                "such as x.grad",
                match.end(),
            )
        if kind == "num":
            end = match.end()
            if end < len(text) and (text[end].isalpha() or text[end] == "_"):
                word = re.match(r"[0-9A-Za-z_.]*", text[match.start() :])
                raise StepSyntaxError(
                    f"'{visible(word.group() if word else text[pos:end])}' is not a number or a "
                    "name: names start with a letter, and a number times n is written 2*n",
                    pos,
                )
        if kind != "space":
            tokens.append(_Tok(kind, match.group(), pos))
        pos = match.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


def _check_brackets(tokens: list[_Tok]) -> None:
    """Every '(' and '[' is closed, by its own kind, in order; nesting stays shallow."""
    stack: list[_Tok] = []
    for tok in tokens:
        if tok.text in _CLOSE and tok.kind == "punct":
            stack.append(tok)
            if len(stack) > MAX_DEPTH:
                raise StepSyntaxError(
                    f"brackets nest more than {MAX_DEPTH} deep here; simplify the step", tok.pos
                )
        elif tok.text in _OPEN and tok.kind == "punct":
            if not stack:
                raise StepSyntaxError(
                    f"this '{tok.text}' closes nothing: there is no '{_OPEN[tok.text]}' before it; "
                    "remove it",
                    tok.pos,
                )
            opened = stack.pop()
            if _CLOSE[opened.text] != tok.text:
                raise StepSyntaxError(
                    f"this '{opened.text}' is not closed before the '{tok.text}' at column "
                    f"{tok.pos + 1}; add a '{_CLOSE[opened.text]}' to match it",
                    opened.pos,
                )
    if stack:
        opened = stack[-1]
        raise StepSyntaxError(
            f"this '{opened.text}' is never closed; add a '{_CLOSE[opened.text]}' to match it",
            opened.pos,
        )


def parse_step(text: str) -> Step:
    """Parse one step string; raises :class:`StepSyntaxError` with a located, plain message."""
    if not isinstance(text, str):
        shown = "a list" if isinstance(text, list) else "a map" if isinstance(text, dict) else None
        raise StepSyntaxError(
            f"a step is text, not {shown or visible(str(text))}; write {FORM}"
            + ("; a map step is {do: STEP, expect: ...}" if isinstance(text, dict) else ""),
            0,
        )
    if len(text) > MAX_LENGTH:
        raise StepSyntaxError(
            f"the step is longer than {MAX_LENGTH} characters; split it into shorter steps",
            MAX_LENGTH,
        )
    tokens = _tokenize(text)
    _check_brackets(tokens)
    return _Parser(text, tokens).step()


class _Parser:
    def __init__(self, text: str, tokens: list[_Tok]):
        self.text, self.tokens, self.i = text, tokens, 0

    @property
    def tok(self) -> _Tok:
        return self.tokens[self.i]

    def ahead(self, k: int = 1) -> _Tok:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def fail(self, message: str, tok: _Tok | int) -> StepSyntaxError:
        return StepSyntaxError(message, tok if isinstance(tok, int) else tok.pos)

    def step(self) -> Step:
        if self.tok.kind == "end":
            raise self.fail(f"the step is empty; write {FORM}", 0)
        equals = self._top_level_equals()
        if len(equals) > 1:
            raise self.fail(
                f"'=' appears twice; a step names at most one value: write {FORM}", equals[1]
            )
        target = None
        if equals:
            target = self.target(equals[0])
        call = self.call_name()
        self.i += 1  # the '('
        args, kwargs = self.arguments(call)
        if self.tok.kind != "end":
            raise self.fail(
                f"'{visible(self.text[self.tok.pos :].strip())[:40]}' comes after the call's closing "
                f"')'; a step is one call: write {FORM}",
                self.tok,
            )
        return Step(target, call, tuple(args), kwargs, self.text)

    def _top_level_equals(self) -> list[_Tok]:
        """The '=' signs outside every bracket (inside them, '=' is a keyword's)."""
        out, depth = [], 0
        for t in self.tokens:
            if t.kind != "punct":
                continue
            if t.text in _CLOSE:
                depth += 1
            elif t.text in _OPEN:
                depth -= 1
            elif t.text == "=" and depth == 0:
                out.append(t)
        return out

    def target(self, equals: _Tok) -> str:
        first = self.tok
        if first is equals:
            raise self.fail(
                f"the name before '=' is missing; write {FORM}, or leave out '=' for a call "
                "whose result needs no name",
                equals,
            )
        if first.kind != "name" or self.ahead() is not equals:
            raise self.fail(
                f"before '=' comes one new value name, such as y; write {FORM}",
                first,
            )
        name = first.text
        if "." in name:
            raise self.fail(
                f"'{name}' can't be made by a step: a dotted name such as x.grad is made for you "
                f"(backward makes the .grad values); pick a plain name such as "
                f"{name.replace('.', '_')}",
                first,
            )
        if name in RESERVED:
            raise self.fail(
                f"'{name}' can't name a value: it is a word of the step language "
                "(n, true, false, null, a dtype or a placement); pick another name, such as y",
                first,
            )
        self.i += 2
        return name

    def call_name(self) -> str:
        tok = self.tok
        after = self.ahead()
        if tok.kind == "end":
            raise self.fail("nothing comes after '='; write the call, such as y = relu(x)", tok)
        if tok.text == "(" and tok.kind == "punct":
            raise self.fail(f"the call's name is missing before '('; write {FORM}", tok)
        if tok.kind != "name":
            raise self.fail(
                f"a step is a call, and '{visible(tok.text)}' is not a call's name; write {FORM}",
                tok,
            )
        is_call = after.kind == "punct" and after.text == "("
        if "." in tok.text:
            base, _, method = tok.text.rpartition(".")
            if is_call and base in _MODULE_PREFIXES:
                raise self.fail(
                    f"write {method}(...) without '{base}.': steps name calls by their short names",
                    tok,
                )
            if is_call:
                raise self.fail(
                    f"'{tok.text}(...)' uses attribute access, which steps don't have: write the "
                    f"value as the first argument, such as {method}({base}, ...)",
                    tok.pos + len(base),
                )
        if not is_call:
            if after.kind == "end":
                raise self.fail(
                    f"'{tok.text}' is not a call: a step calls something, so write {FORM}, or "
                    f"y = clone({tok.text}) to copy a value",
                    tok,
                )
            raise self.fail(
                f"after '{tok.text}' comes '{visible(after.text)}', but a step is one call: write "
                f"{FORM} (arithmetic is a call too, such as y = add(x, 1))",
                after,
            )
        if tok.text in _PYTHON_WORDS or tok.text in WORDS or tok.text in DTYPES:
            raise self.fail(f"'{tok.text}' is not a call; write {FORM}", tok)
        self.i += 1
        return tok.text

    def arguments(self, call: str) -> tuple[list, dict[str, Any]]:
        """The arguments up to the call's ')', which is consumed."""
        args: list = []
        kwargs: dict[str, Any] = {}
        while True:
            tok = self.tok
            if tok.text == ")" and tok.kind == "punct":
                self.i += 1
                return args, kwargs
            if tok.text == "," and tok.kind == "punct":
                raise self.fail(
                    f"an argument is missing before this ','; write {call}(a, b), without an "
                    "empty place",
                    tok,
                )
            after = self.ahead()
            if tok.kind == "name" and after.text == "=" and after.kind == "punct":
                key = tok.text
                if "." in key:
                    raise self.fail(
                        f"'{key}=' is not a keyword: a keyword is one word, such as dim=0", tok
                    )
                if key in kwargs:
                    raise self.fail(f"{key}= is given twice; give it once", tok)
                self.i += 2
                kwargs[key] = self.value(f"the value after '{key}='")
            else:
                if kwargs:
                    raise self.fail(
                        "an argument without a keyword comes after one with a keyword; put the "
                        "plain ones first, such as sum(z, 0, keepdim=true)",
                        tok,
                    )
                args.append(self.value(f"{call}'s argument"))
            tok = self.tok
            if tok.text == "," and tok.kind == "punct":
                self.i += 1
            elif not (tok.text == ")" and tok.kind == "punct"):
                raise self.fail(self._separator(tok), tok)

    def _separator(self, tok: _Tok) -> str:
        if tok.text == "=" and tok.kind == "punct":
            return (
                "'=' can't come here; a keyword argument is one word then '=', such as dim=0 "
                "('==' is not used)"
            )
        return f"a ',' is missing before '{visible(tok.text)}': arguments are separated by commas"

    def value(self, what: str) -> Any:
        tok = self.tok
        if tok.kind == "punct" and tok.text == "[":
            return self.list_value()
        if tok.kind == "name" and self.ahead().text == "(" and self.ahead().kind == "punct":
            return self.placement()
        return self.atom_run(what)

    def list_value(self) -> list:
        self.i += 1  # '['
        items: list = []
        while True:
            tok = self.tok
            if tok.kind == "punct" and tok.text == "]":
                self.i += 1
                return items
            if tok.kind == "punct" and tok.text == ",":
                raise self.fail(
                    "a list entry is missing before this ','; write [a, b], without an empty place",
                    tok,
                )
            items.append(self.value("a list entry"))
            tok = self.tok
            if tok.kind == "punct" and tok.text == ",":
                self.i += 1
            elif not (tok.kind == "punct" and tok.text == "]"):
                raise self.fail(self._separator(tok).replace("arguments", "list entries"), tok)

    def placement(self) -> Placement:
        tok = self.tok
        name = tok.text
        self.i += 2  # name and '('
        inner: list[_Tok] = []
        depth = 0
        while depth or not (self.tok.kind == "punct" and self.tok.text == ")"):
            if self.tok.kind == "punct" and self.tok.text in _CLOSE:
                depth += 1
            elif self.tok.kind == "punct" and self.tok.text in _OPEN:
                depth -= 1
            inner.append(self.tok)
            self.i += 1
        self.i += 1  # brackets were checked: this ')' closes the placement's '('
        words = "".join(t.text for t in inner)
        if name == "Shard":
            signed = len(inner) == 2 and inner[0].text in "+-"
            digits = inner[-1].text if inner and len(inner) == 1 + signed else ""
            sign = -1 if signed and inner[0].text == "-" else 1
            if not _INT.fullmatch(digits) or len(digits) > 6:
                raise self.fail(
                    f"Shard takes one whole number, the tensor dim it splits, such as Shard(0) or "
                    f"Shard(-1), not Shard({visible(words)})",
                    tok,
                )
            return Placement("shard", sign * int(digits))
        if name == "Replicate":
            if inner:
                raise self.fail("Replicate takes nothing: write Replicate()", tok)
            return Placement("replicate")
        if name == "Partial":
            if not inner:
                return Placement("partial")
            if len(inner) == 1 and inner[0].text in REDUCE_OPS:
                return Placement("partial", reduce=inner[0].text)
            raise self.fail(
                "Partial takes nothing (a sum) or one of sum, avg, max, min, such as Partial(avg), "
                f"not Partial({visible(words)})",
                tok,
            )
        close = next((p for p in PLACEMENT_NAMES if p.lower() == name.lower()), None)
        if close:
            raise self.fail(
                f"'{name}' is written {close}, with a capital letter: Shard(0), Replicate(), "
                "Partial()",
                tok,
            )
        raise self.fail(
            f"'{name}(...)' is a call inside an argument, which steps don't allow; make it a "
            f"step of its own, such as t = {name}(...), then use t (placements are Shard(d), "
            "Replicate() and Partial())",
            tok,
        )

    def atom_run(self, what: str) -> Any:
        """A name, a word, a number or an expression in n: tokens up to ',' ')' or ']'."""
        start = self.tok
        run: list[_Tok] = []
        depth = 0
        while True:
            tok = self.tok
            if tok.kind == "end":
                break
            if tok.kind == "punct":
                if tok.text == "(":
                    depth += 1
                elif tok.text == ")":
                    if depth == 0:
                        break
                    depth -= 1
                elif tok.text in (",", "]") and depth == 0:
                    break
                elif tok.text in ("[", "]", ",", "="):
                    raise self.fail(self._in_expression(tok, bool(run)), tok)
            run.append(tok)
            self.i += 1
        if not run:
            raise self.fail(f"{what} is missing here", start)
        return self._classify(run)

    def _in_expression(self, tok: _Tok, started: bool) -> str:
        if tok.text == "=" or (tok.text == "[" and started):
            return self._separator(tok)
        return f"'{tok.text}' can't come inside a size expression; sizes are written like (n+1)//2"

    def _classify(self, run: list[_Tok]) -> Any:
        first = run[0]
        if len(run) == 1:
            return self._single(first)
        if len(run) == 2 and first.text == "-" and run[1].kind == "num":
            return -self._number(run[1])
        if len(run) == 2 and first.text == "-" and run[1].kind == "name" and run[1].text != "n":
            raise self.fail(
                f"'-{run[1].text}' negates a value; a step does that with a call of its own, such "
                f"as y = neg({run[1].text})",
                first,
            )
        for prev, tok in itertools.pairwise(run):
            ends = prev.kind in ("name", "num") or prev.text == ")"
            if ends and (tok.kind in ("name", "num") or tok.text == "("):
                raise self.fail(
                    f"a ',' is missing between '{prev.text}' and '{tok.text}': arguments are "
                    "separated by commas",
                    tok,
                )
        for tok in run:
            if tok.kind == "name" and tok.text != "n":
                if tok.text in DTYPES or tok.text in WORDS:
                    raise self.fail(f"'{tok.text}' can't be part of a size expression", tok)
                raise self.fail(
                    f"'{self._run_text(run)}' does arithmetic on the value {tok.text}; a step does "
                    f"that with a call, such as y = mul({tok.text}, 2). Only sizes are written as "
                    "expressions, in n, such as 2*n",
                    first,
                )
            if tok.kind == "num" and not _INT.fullmatch(tok.text):
                raise self.fail(
                    f"'{self._run_text(run)}' mixes a decimal number into a size; sizes in n are "
                    "whole numbers, such as 2*n or n/2",
                    tok,
                )
            if tok.text == "**":
                raise self.fail("'**' (a power) isn't allowed; write n*n instead", tok)
        text = self._run_text(run)
        try:
            expr.parse(text)
        except expr.ExprError as exc:
            raise self.fail(str(exc), first) from None
        return Expr(text)

    def _run_text(self, run: list[_Tok]) -> str:
        last = run[-1]
        return self.text[run[0].pos : last.pos + len(last.text)]

    def _single(self, tok: _Tok) -> Any:
        if tok.kind == "num":
            return self._number(tok)
        if tok.kind != "name":
            raise self.fail(
                f"'{visible(tok.text)}' alone is not a value; write a value name, a number, or a "
                "size such as 2*n",
                tok,
            )
        word = tok.text
        if word in WORDS:
            return WORDS[word]
        if word in _PYTHON_WORDS:
            raise self.fail(f"write {_PYTHON_WORDS[word]}, in lower case, not {word}", tok)
        if word in DTYPES:
            return DType(word)
        if word == "n":
            return Expr("n")
        if word.startswith("torch.") and word[len("torch.") :] in DTYPES:
            raise self.fail(f"write the dtype as {word[len('torch.') :]}, without 'torch.'", tok)
        if word in PLACEMENT_NAMES:
            example = "Shard(0)" if word == "Shard" else f"{word}()"
            raise self.fail(f"a placement is written with parentheses, such as {example}", tok)
        return Name(word)

    def _number(self, tok: _Tok) -> int | float:
        if _INT.fullmatch(tok.text):
            return int(tok.text)
        value = float(tok.text)
        if not math.isfinite(value):
            raise self.fail(f"{tok.text} is too large a number", tok)
        return value
