"""The spec schema: found once, compiled once per process, errors turned into plain words.

Two validators read the one schema. ``jsonschema-rs`` (compiled Rust) answers "is this
document valid?" fast; only a document it rejects goes to ``jsonschema`` (pure Python),
whose errors and ``best_match`` make the messages. So a valid file costs the fast check
alone, and every message is exactly what the Python validator says. The fast one must
never accept what the Python one rejects (tests/test_fastpath.py checks both agree).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .problems import Mark, Problem
from .words import did_you_mean
from .yamlload import Document, JsonPath, short

if TYPE_CHECKING:  # jsonschema is imported only when a document fails the fast check
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

_PACKAGED = Path(__file__).with_name("spec.schema.json")  # inside an installed wheel
_SOURCE = Path(__file__).resolve().parent.parent / "schema" / "spec.schema.json"  # the checkout


def schema_path() -> Path:
    """The schema file: the checkout's (the one source) or the installed package's copy."""
    # In a checkout (pyproject.toml beside schema/) the source file wins, so edits show at
    # once; installed, only the package's own copy counts, never a stray site-packages/schema.
    in_checkout = (_SOURCE.parent.parent / "pyproject.toml").is_file()
    return _SOURCE if in_checkout and _SOURCE.is_file() else _PACKAGED


@functools.cache
def schema_bytes() -> bytes:
    """The schema file's bytes (part of the collection cache's key)."""
    return schema_path().read_bytes()


@functools.cache
def schema() -> dict:
    return json.loads(schema_bytes().decode("utf-8"))


@functools.cache
def validator() -> Draft202012Validator:
    """The compiled validator that explains errors; built once per process."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


# What Python's re means by \s in a str pattern (str.isspace); ECMA-262 regexes, which
# jsonschema-rs follows, differ: they leave out U+001C-U+001F and U+0085, and add U+FEFF.
PYTHON_SPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
# Escapes that mean the same in both dialects (a literal character); \s is rewritten.
_SAME_ESCAPES = set("tnrfv.()[]{}\\|/^$*+?-")


def python_regex(pattern: str) -> str:
    """``pattern`` rewritten so that an ECMA-262 engine matches exactly what Python's
    ``re.search`` (jsonschema's) matches: ``\\s`` as Python's class, and ``$`` also before a
    final newline, as Python's ``$`` does. ValueError for anything it can't vouch for."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped == "s":
                out.append(PYTHON_SPACE if in_class else f"[{PYTHON_SPACE}]")
            elif escaped and escaped in _SAME_ESCAPES:
                out.append(char + escaped)
            else:
                raise ValueError(f"no rewrite for \\{escaped} in {pattern!r}")
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        elif char == "$" and not in_class:
            char = "\n?$"
        elif char == "." and not in_class:
            raise ValueError(f"no rewrite for '.' in {pattern!r}")  # newline rules differ
        out.append(char)
        i += 1
    return "".join(out)


def fast_schema(node: Any) -> Any:
    """The schema with every ``pattern`` (and ``patternProperties`` key) in Python's sense."""
    if isinstance(node, list):
        return [fast_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "pattern" and isinstance(value, str):
            out[key] = python_regex(value)
        elif key == "patternProperties" and isinstance(value, dict):
            out[key] = {python_regex(k): fast_schema(v) for k, v in value.items()}
        elif key in ("properties", "$defs", "examples", "default", "const", "enum"):
            # names and values, not subschemas: kept, with subschemas below rewritten
            out[key] = (
                {k: fast_schema(v) for k, v in value.items()}
                if key in ("properties", "$defs") and isinstance(value, dict)
                else value
            )
        else:
            out[key] = fast_schema(value)
    return out


@functools.cache
def fast_validator() -> Any:
    """The compiled ``jsonschema-rs`` validator, or None where it is not installed (or the
    schema has a pattern whose meaning in Python it can't reproduce)."""
    try:
        import jsonschema_rs
    except ImportError:  # pragma: no cover - a platform without its wheel: the slow path
        return None
    try:
        rewritten = fast_schema(schema())
    except ValueError:  # pragma: no cover - a new pattern needs a rewrite rule first
        return None
    # As the Python validator does without a format checker: `format` only annotates.
    return jsonschema_rs.Draft202012Validator(rewritten, validate_formats=False)


def fast_valid(data: Any) -> bool:
    """True when the fast validator says the document is valid; False when it says not,
    can't read the data, or is not there (then the Python validator decides)."""
    fast = fast_validator()
    if fast is None:
        return False
    try:
        return bool(fast.is_valid(data))
    except Exception:  # data it can't take (a number JSON can't hold): the slow path
        return False


MAX_ERRORS = 200  # per file: more is noise, and each costs time on a huge broken file


def validate(doc: Document) -> tuple[list[Problem], dict[int, list[Problem]]]:
    """Schema problems of the whole file, and of each case (by index), in plain words."""
    if fast_valid(doc.data):
        return [], {}
    return validate_slow(doc)


def validate_slow(doc: Document) -> tuple[list[Problem], dict[int, list[Problem]]]:
    """:func:`validate` by the Python validator alone (what makes every message)."""
    from jsonschema.exceptions import best_match

    file_errors: list[ValidationError] = []
    case_errors: dict[int, list[ValidationError]] = defaultdict(list)
    last_case: int | None = None
    count = 0
    for count, error in enumerate(validator().iter_errors(doc.data), 1):
        path = tuple(error.absolute_path)
        if len(path) >= 2 and path[0] == "cases" and isinstance(path[1], int):
            case_errors[path[1]].append(error)
            last_case = path[1]
        else:
            file_errors.append(error)
            last_case = None
        if count >= MAX_ERRORS:
            break
    file_problems = [describe(best_match(file_errors), doc)] if file_errors else []
    case_problems = {i: [describe(best_match(errs), doc)] for i, errs in case_errors.items()}
    cases = doc.data.get("cases") if isinstance(doc.data, dict) else None
    count_cases = len(cases) if isinstance(cases, list) else 0
    in_defaults = [e for e in file_errors if tuple(e.absolute_path)[:1] == ("defaults",)]
    if in_defaults:
        # Every case inherits the defaults: none may run with a broken one merged in.
        wrong = describe(best_match(in_defaults), doc)
        for i in range(count_cases):
            case_problems.setdefault(i, []).append(
                doc.problem(
                    ("cases", i),
                    f"the defaults this case inherits have a mistake at line {wrong.mark.line}: "
                    f"{wrong.message}",
                )
            )
    if count >= MAX_ERRORS:
        # Errors come in file order: cases after the last one seen were never checked.
        first_unchecked = 0 if last_case is None else last_case + 1
        message = f"this file has too many mistakes to check them all (over {MAX_ERRORS}); fix the ones shown first"
        file_problems.append(Problem(doc.path, Mark(1, 1), message))
        for i in range(first_unchecked, count_cases):
            if i not in case_problems:
                case_problems[i] = [doc.problem(("cases", i), f"not checked: {message}")]
    return file_problems, case_problems


_KINDS = {
    "object": "a map (key: value lines)",
    "array": "a list",
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "empty"
    if isinstance(value, str):
        return f"the text '{short(value)}'"
    return f"the number {short(value)}"


def where(path: JsonPath) -> str:
    """A readable name for a place in the file, relative to its case when inside one."""
    if len(path) >= 2 and path[0] == "cases" and isinstance(path[1], int):
        path = path[2:]
        if not path:
            return "the case"
    out = ""
    for part in path:
        out += (
            f"[{part}]"
            if isinstance(part, int)
            else (f".{short(part, 40)}" if out else short(part, 40))
        )
    return out or "the file"


def _types(value: Any) -> str:
    names = value if isinstance(value, list) else [value]
    return " or ".join(_KINDS.get(name, name) for name in names)


def _type_hint(expected: Any, value: Any) -> str:
    """Why YAML gave a different type than meant, when we can tell."""
    names = expected if isinstance(expected, list) else [expected]
    if "string" in names and isinstance(value, (int, float)):
        text = json.dumps(value)
        return f'; put it in quotes ("{short(text)}") to make it text'
    if {"number", "integer"} & set(names) and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        if number == number and "." not in value and "e" in value.lower():
            # PyYAML follows YAML 1.1: an exponent without a dot is not a number.
            return f"; YAML reads '{short(value)}' as text: write it with a dot, like {number:.1e}"
    return ""


def describe(error: ValidationError, doc: Document) -> Problem:
    """One schema error as a located, plain-words problem."""
    path = tuple(error.absolute_path)
    at, kind, inst, val = where(path), error.validator, error.instance, error.validator_value
    hint = error.schema.get("x-hint") if isinstance(error.schema, dict) else None
    if kind == "additionalProperties" and isinstance(inst, dict):
        known = sorted(error.schema.get("properties", {}))
        extra = [k for k in inst if k not in known]
        if extra and known:
            key = extra[0]
            inside = "" if at == "the case" else f" in {at}"
            suggestion = did_you_mean(key, known) or f"; allowed keys: {', '.join(known)}"
            return doc.problem(
                (*path, key), f"unknown key '{short(key)}'{inside}{suggestion}", at_key=True
            )
        if extra:
            return doc.problem(
                (*path, extra[0]), f"{at}: '{short(extra[0])}' is not allowed here", at_key=True
            )
    if "propertyNames" in error.relative_schema_path and isinstance(inst, str):
        # A bad key: jsonschema reports it at its map, but the key has its own line.
        return doc.problem(
            (*path, inst),
            f"{at}: the key '{short(inst)}' is not {hint or 'allowed here'}",
            at_key=True,
        )
    if kind == "required":
        missing = [k for k in val if k not in inst]
        return doc.problem(path, f"{at} needs the key '{missing[0]}'")
    if kind == "type":
        return doc.problem(
            path, f"{at} must be {_types(val)}, not {kind_of(inst)}{_type_hint(val, inst)}"
        )
    if kind == "enum":
        options = ", ".join(str(v) for v in val)
        return doc.problem(
            path,
            f"{at}: {kind_of(inst)} is not one of: {options}"
            + did_you_mean(inst, [str(v) for v in val]),
        )
    if kind == "const":
        return doc.problem(path, f"{at} must be {json.dumps(val)}, not {kind_of(inst)}")
    if kind == "pattern":
        return doc.problem(path, f"{at}: {kind_of(inst)} is not {hint or 'in the expected form'}")
    if kind in ("minimum", "exclusiveMinimum"):
        word = "at least" if kind == "minimum" else "more than"
        return doc.problem(path, f"{at} must be {word} {val}, not {inst}")
    if kind == "maximum":
        return doc.problem(path, f"{at} must be at most {val}, not {inst}")
    if kind in ("minItems", "maxItems"):
        word = "at least" if kind == "minItems" else "at most"
        return doc.problem(path, f"{at} must have {word} {val} item(s), not {len(inst)}")
    if kind in ("minProperties", "maxProperties"):
        word = "at least" if kind == "minProperties" else "at most"
        return doc.problem(path, f"{at} must have {word} {val} entries")
    if kind == "minLength":
        return doc.problem(path, f"{at} must not be empty")
    if kind == "maxLength":
        return doc.problem(path, f"{at} is too long (at most {val} characters)")
    if kind == "uniqueItems":
        return doc.problem(path, f"{at} lists the same item twice; remove the repeat")
    if kind == "not":
        return doc.problem(
            path, f"{at}: {kind_of(inst)} is not allowed here" + (f"; use {hint}" if hint else "")
        )
    if kind in ("oneOf", "anyOf"):
        expected = error.schema.get("description", "") if isinstance(error.schema, dict) else ""
        text = f"{at}: {kind_of(inst)} is not valid here"
        return doc.problem(path, text + (f". Expected: {expected}" if expected else ""))
    # jsonschema's own message quotes the whole value: never show it.
    return doc.problem(path, f"{at}: {kind_of(inst)} is not valid here")
