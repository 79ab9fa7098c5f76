"""Safe, strict, line-tracked YAML loading.

PyYAML composes the file into nodes (the C parser when available); we build plain
Python data from those nodes ourselves so that every value keeps the line it came
from, duplicate keys and YAML 1.1 surprises (``yes``/``no``, ``1:30``) are errors,
timestamps stay strings, and aliases can't blow up memory or nesting.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .problems import Mark, Problem, SpecError

try:  # The C loader is much faster; the pure-Python one gives the same nodes.
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64
# Text after aliases are expanded: one long string repeated by aliases would otherwise
# make the validator's messages (which repr the values) huge.
MAX_CHARS = 2 * MAX_BYTES
MAX_DIGITS = 100  # no size in a spec needs more; Python refuses over 4300 anyway

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_BOOL_WORDS = {"true": True, "false": False}
_KEY_TAGS = {_TAG + kind for kind in ("str", "null", "bool", "int", "float", "timestamp")}
_constructor = yaml.constructor.SafeConstructor()

JsonPath = tuple[str | int, ...]


@dataclass
class Document:
    """A loaded spec file: plain data plus the position of every value and key.

    Positions are kept as ints (:func:`_pos`; a :class:`Mark` is made when one is asked
    for): a file of 1,000 cases has some 40,000 of them, and the cache pickles them all.
    """

    path: str
    data: Any
    marks: dict[JsonPath, int] = field(default_factory=dict)
    key_marks: dict[JsonPath, int] = field(default_factory=dict)

    # Pickled (runner.cache), the positions travel as one packed blob, unpacked on first
    # use: collecting 10,000 cached cases needs none of their 400,000 positions, and a
    # run needs them only for its messages and report lines.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if "marks" in state:
            packed = (state.pop("marks"), state.pop("key_marks"))
            state["_packed_marks"] = pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        # Only called for a missing attribute: the positions of an unpickled document.
        packed = self.__dict__.pop("_packed_marks", None) if name in _MARK_FIELDS else None
        if packed is None:
            raise AttributeError(name)
        self.__dict__["marks"], self.__dict__["key_marks"] = pickle.loads(packed)
        return self.__dict__[name]

    def mark(self, path: JsonPath) -> Mark:
        """Position of the value at ``path``, or of its nearest located parent."""
        path = tuple(path)
        while path not in self.marks and path:
            path = path[:-1]
        pos = self.marks.get(path)
        return Mark(1, 1) if pos is None else _as_mark(pos)

    def key_mark(self, path: JsonPath) -> Mark:
        """Position of the key that holds ``path`` (falls back to the value)."""
        pos = self.key_marks.get(tuple(path))
        return self.mark(path) if pos is None else _as_mark(pos)

    def has(self, path: JsonPath) -> bool:
        return tuple(path) in self.marks

    def problem(self, path: JsonPath, message: str, *, at_key: bool = False) -> Problem:
        mark = self.key_mark(path) if at_key else self.mark(path)
        return Problem(self.path, mark, message)


_MARK_FIELDS = ("marks", "key_marks")


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


_COLUMN_BITS = 32


def _pos(node: yaml.Node) -> int:
    """A node's position as one int: line and column, 1-based (see :func:`_as_mark`)."""
    start = node.start_mark
    return (start.line + 1) << _COLUMN_BITS | (start.column + 1)


def _as_mark(pos: int) -> Mark:
    return Mark(pos >> _COLUMN_BITS, pos & ((1 << _COLUMN_BITS) - 1))


def short(value: object, limit: int = 60) -> str:
    """``value`` as text for a one-line message, cut to ``limit`` characters."""
    text = str(value)
    text = text if text.isprintable() else repr(text)[1:-1]  # newlines, tabs escaped
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class _Merged:
    """One entry a merge key brings into a map, with the positions of its value."""

    key: str
    value: Any
    source: yaml.Node  # the merged map (an alias gives the anchored map), for messages
    marks: dict[JsonPath, int]
    key_marks: dict[JsonPath, int]


class _Builder:
    def __init__(self, path: str, max_nodes: int, max_depth: int, max_chars: int):
        self.doc = Document(path, None)
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.max_chars = max_chars
        self.count = 0
        self.chars = 0
        self.active: set[int] = set()

    def fail(self, node: yaml.Node, message: str) -> SpecError:
        return SpecError([Problem(self.doc.path, _mark(node), message)])

    def spend(self, node: yaml.Node, chars: int, values: int = 1) -> None:
        """Count a value (and its text) against the budgets, aliases included."""
        self.count += values
        self.chars += chars
        if self.count > self.max_nodes:
            raise self.fail(
                node,
                f"the file expands to more than {self.max_nodes} values (too many aliases?); "
                "a spec file should be small: split it or remove the repeated aliases",
            )
        if self.chars > self.max_chars:
            raise self.fail(
                node,
                f"the file expands to more than {self.max_chars} characters of text (too many "
                "aliases of long text?); split it or remove the repeated aliases",
            )

    def build(self, node: yaml.Node, path: JsonPath, depth: int) -> Any:
        if node.__class__ is yaml.ScalarNode and depth <= self.max_depth:
            # The common case, inlined (a spec is mostly scalars): the same budget, the
            # same position, and plain text returned as is.
            self.count += 1
            self.chars += len(node.value)
            if self.count > self.max_nodes or self.chars > self.max_chars:
                self.spend(node, 0, 0)  # raises, with the budget's message
            self.doc.marks.setdefault(path, _pos(node))
            if node.tag == _STR:
                return node.value
            return self.scalar(node)
        self.spend(node, len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
        if depth > self.max_depth:
            raise self.fail(
                node, f"values are nested more than {self.max_depth} levels deep; flatten the file"
            )
        if id(node) in self.active:
            raise self.fail(node, "an alias refers to its own anchor (a loop); remove it")
        self.doc.marks.setdefault(path, _pos(node))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                self.check_tag(node, "seq")
                return [
                    self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)
                ]
            self.check_tag(node, "map")
            return self.mapping(node, path, depth)
        finally:
            self.active.discard(id(node))

    def check_tag(self, node: yaml.Node, kind: str) -> None:
        if node.tag != _TAG + kind:
            raise self.fail(node, _tag_message(node.tag))

    def scalar(self, node: yaml.ScalarNode) -> Any:
        tag, text = node.tag, node.value
        if tag == _TAG + "str" or tag == _TAG + "timestamp":
            return text  # Dates stay text: nothing in a spec is a date.
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            if text in _BOOL_WORDS:  # only the lowercase words: True, TRUE, yes, on... are not
                return _BOOL_WORDS[text]
            raise self.fail(
                node,
                f"'{text}' is not a boolean here: write true or false in lowercase "
                f'(or put it in quotes, "{text}", if you meant the word)',
            )
        if tag == _TAG + "int":
            plain = text.lstrip("+-")
            if plain.isdigit() and plain.isascii() and len(plain) > MAX_DIGITS:
                raise self.fail(
                    node,
                    f"a number with {len(plain)} digits is far too large for a spec; "
                    "write a smaller number",
                )
            if plain.isdigit() and plain.isascii():
                return int(text)
            raise self.fail(
                node,
                f"'{short(text)}' is read by YAML as a number in an unusual notation; write a "
                f'plain decimal number, or put it in quotes ("{short(text)}") if you meant text',
            )
        if tag == _TAG + "float":
            value = _constructor.construct_yaml_float(node)
            if value != value:  # NaN compares unequal to everything, so no check could pass
                raise self.fail(
                    node, f"'{short(text)}' (not a number) can't be used here; write a number"
                )
            return value
        raise self.fail(node, _tag_message(tag))

    def mapping(self, node: yaml.MappingNode, path: JsonPath, depth: int) -> dict:
        if node.flow_style:
            self.check_split_calls(node, path)
        out: dict[str, Any] = {}
        merged: list[_Merged] = []
        seen: dict[str, int] = {}  # key -> its position (see _pos)
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                key = "<<"
            elif not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, "a key must be a plain word, not a list or a map")
            elif key_node.tag not in _KEY_TAGS:  # a key is only ever used as text
                raise self.fail(key_node, _tag_message(key_node.tag))
            else:
                key = key_node.value
            self.spend(key_node, len(key), values=0)
            if key in seen:
                first = _as_mark(seen[key])
                advice = (
                    "merge the maps in one: <<: [*a, *b]" if key == "<<" else "remove or rename one"
                )
                raise self.fail(
                    key_node,
                    f"duplicate key '{short(key)}' (first at line {first.line}, again at line "
                    f"{_mark(key_node).line}); each key may appear once in a map: {advice}",
                )
            seen[key] = _pos(key_node)
            if key_node.tag == _TAG + "merge":
                merged = self.merge(value_node, path, depth)
                continue
            where = (*path, key)
            self.doc.key_marks[where] = seen[key]
            self.doc.marks.pop(where, None)
            out[key] = self.build(value_node, where, depth + 1)
        if not merged:
            return out
        # As YAML loaders do: the merged entries first, in order, then the map's own; a key
        # written in the map wins, and keeps the place where it first appears.
        result: dict[str, Any] = {}
        came_from: dict[str, yaml.Node] = {}
        for entry in merged:
            if entry.key in result and entry.key not in out:
                # Loaders disagree on which merged map wins (PyYAML's answer changed in 6.0.4).
                lines = f"lines {_mark(came_from[entry.key]).line} and {_mark(entry.source).line}"
                raise SpecError(
                    [
                        Problem(
                            self.doc.path,
                            _as_mark(seen["<<"]),
                            f"'{short(entry.key)}' is in more than one of the maps merged here "
                            f"with '<<' ({lines}), and YAML tools disagree on which one wins; "
                            "keep it in one of them, or set it in this map",
                        )
                    ]
                )
            result[entry.key] = entry.value
            came_from[entry.key] = entry.source
            if entry.key not in out:  # a merged key keeps its position in the anchored map
                self.doc.marks.update(entry.marks)
                self.doc.key_marks.update(entry.key_marks)
        result.update(out)
        return result

    def merge(self, node: yaml.Node, path: JsonPath, depth: int) -> list[_Merged]:
        """The entries a merge key (``<<: *defaults``) brings, in order.

        Each source is built on its own, so that its positions land only where one of its
        keys is really taken; a key written in the map itself keeps its own position.
        """
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        entries: list[_Merged] = []
        for source in sources:
            marks, key_marks = self.doc.marks, self.doc.key_marks
            self.doc.marks, self.doc.key_marks = {}, {}
            try:
                value = self.build(source, path, depth)
                built, built_keys = self.doc.marks, self.doc.key_marks
            finally:
                self.doc.marks, self.doc.key_marks = marks, key_marks
            if not isinstance(value, dict):
                raise self.fail(source, "'<<' must be followed by a map (or a list of maps)")
            by_key = {key: _Merged(key, item, source, {}, {}) for key, item in value.items()}
            for table, name in ((built, "marks"), (built_keys, "key_marks")):
                for where, mark in table.items():
                    if len(where) > len(path) and where[len(path)] in by_key:
                        getattr(by_key[where[len(path)]], name)[where] = mark
            entries += by_key.values()
        return entries

    def check_split_calls(self, node: yaml.MappingNode, path: JsonPath) -> None:
        """Refuse ``{fc1: Linear(128, 64)}``: standard YAML splits it at the comma.

        In a flow map a comma ends the entry, so every YAML reader sees ``fc1: Linear(128``
        and a second key ``64)`` with no value. shardspec reads it as they do, and says so.
        """
        pairs = node.value
        for i, (key, value) in enumerate(pairs):
            if not _open_call(value):
                continue
            text, cut = value.value, False
            for more_key, more_value in pairs[i + 1 :]:
                if text.count("(") <= text.count(")") or not _dangling_key(more_key, more_value):
                    break
                text, cut = f"{text}, {more_key.value}", True
            if not cut:
                continue  # nothing was cut off: an unclosed '(' is the layer parser's to report
            call = short(text, 80)
            name = short(key.value, 40) if isinstance(key, yaml.ScalarNode) else "name"
            what = "the layers" if path[-1:] == ("module",) else "this map"
            raise self.fail(
                value,
                f"YAML cuts '{call}' in two at its comma, because inside {{ }} a comma starts "
                f"a new entry. Write {what} in block style, one per line "
                f"('{name}: {call}' on a line of its own), or put the value in quotes: "
                f'{{{name}: "{call}"}}',
            )


def _tag_message(tag: str) -> str:
    shown = short(tag.replace(_TAG, "!!"))
    return (
        f"YAML tags like '{shown}' are not allowed in spec files (nothing in a spec is ever run "
        "as code); remove the tag"
    )


def _open_call(node: yaml.Node) -> bool:
    """A plain scalar with more '(' than ')': the start of a call cut at a comma."""
    return (
        isinstance(node, yaml.ScalarNode)
        and node.style in (None, "")  # plain (the C loader says "")
        and node.value.count("(") > node.value.count(")")
    )


def _dangling_key(key: yaml.Node, value: yaml.Node) -> bool:
    """A plain key with no value at all: what is left of a call after its comma."""
    return (
        isinstance(key, yaml.ScalarNode)
        and key.style in (None, "")
        and isinstance(value, yaml.ScalarNode)
        and value.tag == _TAG + "null"
        and value.value == ""
    )


def load_text(
    text: str | bytes,
    path: str = "<string>",
    *,
    max_bytes: int = MAX_BYTES,
    max_nodes: int = MAX_NODES,
    max_depth: int = MAX_DEPTH,
    max_chars: int = MAX_CHARS,
) -> Document:
    """Parse one YAML document into a :class:`Document`, or raise :class:`SpecError`."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise SpecError(
            [
                Problem(
                    path,
                    Mark(1, 1),
                    f"the file is {len(raw)} bytes, over the {max_bytes}-byte "
                    "limit for a spec file; split it into smaller files",
                )
            ]
        )
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            [Problem(path, Mark(line, 1), "the file is not valid UTF-8 text; save it as UTF-8")]
        ) from None
    try:
        node = yaml.compose(decoded, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise SpecError([_syntax_problem(path, exc, decoded)]) from None
    except yaml.reader.ReaderError as exc:  # control characters: no mark, only a position
        raise SpecError([_reader_problem(path, exc, decoded)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(path, Mark(1, 1), f"this is not valid YAML: {exc}")]) from None
    except RecursionError:
        raise SpecError(
            [Problem(path, Mark(1, 1), "values are nested too deeply to read; flatten the file")]
        ) from None
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "null"):
        raise SpecError(
            [Problem(path, Mark(1, 1), "the file is empty; start from an example spec")]
        )
    builder = _Builder(path, max_nodes, max_depth, max_chars)
    builder.doc.data = builder.build(node, (), 0)
    return builder.doc


def load_file(path: str | Path, display: str | None = None, **limits: int) -> Document:
    """Load a spec file; ``display`` is the path shown in messages."""
    shown = display or str(path)
    try:
        size = Path(path).stat().st_size
        max_bytes = limits.get("max_bytes", MAX_BYTES)
        if size > max_bytes:
            raise SpecError(
                [
                    Problem(
                        shown,
                        Mark(1, 1),
                        f"the file is {size} bytes, over the {max_bytes}-byte "
                        "limit for a spec file; split it into smaller files",
                    )
                ]
            )
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(
            [Problem(shown, Mark(1, 1), f"cannot read the file: {exc.strerror}")]
        ) from None
    return load_text(raw, shown, **limits)


_TAB_HINT = "a tab character is used for indentation; YAML needs spaces: replace the tab"
_HINTS = {
    "found a tab character that violates indentation": _TAB_HINT,
    "found a tab character where an indentation space is expected": _TAB_HINT,
    "found character '\\t' that cannot start any token": _TAB_HINT,
    "mapping values are not allowed here": (
        "a ':' appears where YAML did not expect one; check the indentation, "
        "or put text containing ': ' in quotes"
    ),
    "mapping values are not allowed in this context": (
        "a ':' appears where YAML did not expect one; check the indentation, "
        "or put text containing ': ' in quotes"
    ),
    "expected <block end>, but found '<block mapping start>'": (
        "the indentation is inconsistent; line up keys of the same map"
    ),
    "did not find expected key": "the indentation is inconsistent; line up keys of the same map",
    "did not find expected '-' indicator": (
        "the indentation is inconsistent; line up the keys of a map and the items of a list"
    ),
    "expected ',' or ']'": (
        "a '[' list is not closed with ']' on the same line, or a ',' is missing between items"
    ),
    "expected ',' or '}'": (
        "a '{' map is not closed with '}' on the same line, or a ',' is missing between entries"
    ),
    "found undefined alias": "an alias (*name) refers to an anchor (&name) that is not defined",
    "expected a single document in the stream": (
        "the file holds more than one YAML document ('---'); keep one per file"
    ),
    "but found another document": (
        "the file holds more than one YAML document ('---'); keep one per file"
    ),
    "exceeded maximum nesting depth": "values are nested too deeply; flatten the file",
    "found unexpected end of stream": "a quote or bracket is opened but never closed",
}


_UNCLOSED = re.compile(r"expected ',' or '[\]}]'")


def _syntax_problem(path: str, exc: yaml.MarkedYAMLError, text: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    where = Mark(mark.line + 1, mark.column + 1) if mark else Mark(1, 1)
    problem = exc.problem or "unreadable YAML"
    if (exc.context or "").startswith("found duplicate anchor") and exc.context_mark:
        # The parser's words ("second occurrence") read backwards: say it plainly.
        lines = text.split("\n")
        row = lines[where.line - 1] if where.line <= len(lines) else ""
        name = re.match(r"&[^\s,\[\]{}]+", row[where.col - 1 :])
        anchor = short(name.group(0)) if name else "an anchor"
        return Problem(
            path,
            where,
            f"the anchor {anchor} is defined twice (first at line {exc.context_mark.line + 1}, "
            f"again at line {where.line}); rename one",
        )
    opener = _UNCLOSED.search(problem)
    if opener and exc.context_mark and (exc.context or "").startswith("while parsing a flow"):
        # The parser notices only where it gives up (often the next line): point at the
        # '[' or '{' that is not closed instead, and say where the parser stopped.
        start = Mark(exc.context_mark.line + 1, exc.context_mark.column + 1)
        hint = _HINTS[opener.group(0)]
        stopped = f"line {where.line}" if where.line != start.line else f"column {where.col}"
        which = "list" if opener.group(0).endswith("']'") else "map"
        return Problem(
            path,
            start,
            f"this is not valid YAML: {hint} (the {which} starts here; YAML gave up at {stopped})",
        )
    hint = _HINTS.get(problem) or next((h for p, h in _HINTS.items() if p in problem), None)
    if hint is None and mark and _tab_near(text, mark.line, mark.column):
        hint = _TAB_HINT  # the C parser doesn't name the tab; the text shows it
    if hint is _TAB_HINT:  # the parser's own words add nothing here
        return Problem(path, where, f"this is not valid YAML: {hint}")
    message = f"this is not valid YAML: {short(problem, 200)}"
    if exc.context:
        message += f" ({short(exc.context, 200)})"
    if hint:
        message += f"; {hint}"
    return Problem(path, where, message)


def _tab_near(text: str, line: int, column: int) -> bool:
    """Is there a tab at the error, or in the indentation of its line?"""
    lines = text.split("\n")
    if not 0 <= line < len(lines):
        return False
    row = lines[line]
    indent = row[: len(row) - len(row.lstrip(" \t"))]
    return "\t" in indent or row[column : column + 1] == "\t"


def _reader_problem(path: str, exc: yaml.reader.ReaderError, text: str) -> Problem:
    # The C reader reports a byte offset, the Python one a character offset: find the
    # character itself instead.
    char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
    index = text.find(char)
    where = Mark(1, 1)
    if index >= 0:
        line = text.count("\n", 0, index)
        where = Mark(line + 1, index - (text.rfind("\n", 0, index) + 1) + 1)
    code = ord(char[0]) if char else 0
    return Problem(
        path,
        where,
        f"the file contains the control character U+{code:04X}, which YAML does not allow; "
        "delete it (it is often invisible: retype the line)",
    )
