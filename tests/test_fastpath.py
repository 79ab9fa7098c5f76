"""The validation fast path (jsonschema-rs) against the Python validator (jsonschema).

``schema.validate`` asks jsonschema-rs first and goes to jsonschema only for a document it
rejects. That is sound only if the two agree on what is valid: above all, jsonschema-rs
must never accept a document that jsonschema rejects (its problems would be lost). Where
they could differ (regex dialects, ``format``, ``if/then/else``, ``propertyNames``) is
probed here, and every file of the malformed corpus and of specs/ is checked both ways.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from runner import schema
from runner.problems import SpecError
from runner.yamlload import load_file, load_text

REPO = Path(__file__).resolve().parent.parent
CORPUS = sorted((REPO / "tests" / "malformed").glob("*.y*ml"))
LIBRARY = sorted((REPO / "specs").glob("*.y*ml"))

pytest.importorskip("jsonschema_rs")


def python_valid(data: Any) -> bool:
    return next(iter(schema.validator().iter_errors(data)), None) is None


def fast_answer(data: Any) -> bool:
    return bool(schema.fast_validator().is_valid(data))


def loaded(path: Path):
    try:
        return load_file(path, path.name)
    except SpecError:
        return None  # a file the loader refuses never reaches a validator


def test_the_corpus_and_the_library_are_read_by_both() -> None:
    assert len(CORPUS) >= 60 and len(LIBRARY) >= 10
    assert sum(loaded(p) is not None for p in CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS + LIBRARY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_both_validators_agree_on_every_file(path: Path) -> None:
    doc = loaded(path)
    if doc is None:
        pytest.skip("the loader refuses it before validation")
    assert fast_answer(doc.data) == python_valid(doc.data)
    # and what the user sees is the Python validator's, exactly
    assert schema.validate(doc) == schema.validate_slow(doc)


@pytest.mark.parametrize("path", CORPUS + LIBRARY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_both_agree_on_every_case_of_every_file_alone(path: Path) -> None:
    """Each case of the file as a file of its own: a broken case next to good ones."""
    doc = loaded(path)
    if doc is None or not isinstance(doc.data, dict) or not isinstance(doc.data.get("cases"), list):
        pytest.skip("no list of cases")
    for case in doc.data["cases"]:
        alone = {**doc.data, "cases": [case]}
        assert fast_answer(alone) == python_valid(alone), json.dumps(case)[:200]


# --- the places where two validators could read the schema differently --------------------

BASE: dict[str, Any] = {
    "version": 1,
    "cases": [
        {
            "id": "rows",
            "mesh": ["n"],
            "placements": ["Shard(0)"],
            "input": {"shape": ["2*n", 3]},
        }
    ],
}

WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2028"]
WHITESPACE += ["\u3000", "\u200b", "\ufeff"]


def with_case(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["cases"][0].update(changes)
    return doc


def probes() -> list[tuple[str, dict[str, Any]]]:
    """Documents around every pattern, whitespace class and conditional of the schema."""
    out: list[tuple[str, dict[str, Any]]] = [("base", BASE)]
    for i, space in enumerate(WHITESPACE):  # `pattern` with \s: Python's and Rust's classes
        for text in (f"{space}Shard(0)", f"Shard({space}0)", f"Shard(0){space}"):
            out.append((f"placement-space-{i}-{text!r}", with_case(placements=[text])))
        out.append((f"id-space-{i}", with_case(id=f"rows{space}")))
        out.append((f"shape-space-{i}", with_case(input={"shape": [f"2*n{space}", 3]})))
    for text in ("rows\n", "Rows", "r", "1rows", "rows.v2", "rows-", "ro ws", "ünï"):
        out.append((f"id-{text!r}", with_case(id=text)))  # `$` before a final newline
    for text in ("Shard(+1)", "Shard(-0)", "Shard(1234567)", "Partial(avg)", "Partial(sum )"):
        out.append((f"placement-{text}", with_case(placements=[text])))
    steps = {
        "tensors": {"x": {"shape": ["4*n", 8], "placements": ["Shard(0)"]}},
        "steps": ["y = redistribute(x, [Replicate()])"],
    }
    case = {k: v for k, v in BASE["cases"][0].items() if k not in ("placements", "input")}
    # if/then/else: a steps case (tensors:) against a v1 case, and mixtures of both
    out.append(("steps", {**BASE, "cases": [{**case, **steps}]}))
    out.append(
        ("steps-with-input", {**BASE, "cases": [{**case, **steps, "input": {"shape": [2]}}]})
    )
    out.append(("steps-no-steps", {**BASE, "cases": [{**case, "tensors": steps["tensors"]}]}))
    # propertyNames: value names in `expect` of a steps case, good and bad
    for name in ("y", "x.grad", "shape", "1y", "y z", "y\n"):
        expect = {name: {"shape": ["4*n", 8]}}
        out.append(
            (f"expect-name-{name!r}", {**BASE, "cases": [{**case, **steps, "expect": expect}]})
        )
    # numbers: integers written as floats, booleans where numbers go, huge values
    for value in (2.0, 2.5, True, 10**30, -1, 0):
        out.append((f"shape-{value!r}", with_case(input={"shape": [value, 3]})))
    out.append(("timeout-float", with_case(timeout=2.5)))
    out.append(("version-float", {**BASE, "version": 1.0}))
    out.append(("version-bool", {**BASE, "version": True}))
    return out


@pytest.mark.parametrize(("name", "doc"), probes(), ids=[name for name, _ in probes()])
def test_both_agree_where_dialects_could_differ(name: str, doc: dict[str, Any]) -> None:
    fast, slow = fast_answer(doc), python_valid(doc)
    assert not (fast and not slow), "the fast path must never accept what jsonschema rejects"
    assert fast == slow


def test_the_schemas_patterns_mean_the_same_to_both() -> None:
    """Each ``pattern`` of the schema on its own, over strings that separate regex dialects."""
    import jsonschema_rs
    from jsonschema import Draft202012Validator

    texts = ["", "a", "a\n", "\na", "a b", "Shard(0)", " Shard(0) ", "n", "2*n", "(n)", "x.grad"]
    texts += [f"a{s}" for s in WHITESPACE] + [f"Shard(0){s}" for s in WHITESPACE]
    texts += [
        "é",
        "ü1",
        "\u0661",
        "\U0001d7d9",
        "x" * 300,
        "expect.shape",
        "expect.",
        "0",
        "012345",
    ]
    found = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.add(node["pattern"])
            for key in node.get("patternProperties", {}):
                found.add(key)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema.schema())
    assert len(found) >= 5
    for pattern in sorted(found):
        sub = {"type": "string", "pattern": pattern}
        fast = jsonschema_rs.Draft202012Validator(
            {**sub, "pattern": schema.python_regex(pattern)}, validate_formats=False
        )
        slow = Draft202012Validator(sub)
        for text in texts:
            assert fast.is_valid(text) == slow.is_valid(text), (pattern, text)
            assert slow.is_valid(text) == bool(re.search(pattern, text)), (pattern, text)


def test_python_whitespace_is_what_re_means_by_it() -> None:
    spaces = [chr(c) for c in range(0x110000) if re.match(r"\s", chr(c))]
    assert "".join(spaces) == schema.PYTHON_SPACE


@pytest.mark.parametrize("pattern", [r"\d+", r"\w", r"a.b", r"\bword", r"\S"])
def test_patterns_without_a_faithful_rewrite_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="no rewrite"):
        schema.python_regex(pattern)


def test_format_only_annotates_in_both() -> None:
    """jsonschema checks no format without a format checker; the fast path is built alike."""
    import jsonschema_rs
    from jsonschema import Draft202012Validator

    for fmt, text in (("email", "not an email"), ("date", "2024-99-99"), ("uri", "::")):
        sub = {"type": "string", "format": fmt}
        assert Draft202012Validator(sub).is_valid(text)
        assert jsonschema_rs.Draft202012Validator(sub, validate_formats=False).is_valid(text)
    assert schema.fast_validator() is schema.fast_validator()  # compiled once


def test_data_the_fast_path_cannot_take_goes_to_the_slow_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = load_text(
        "version: 1\ncases:\n  - id: a\n    mesh: [n]\n    placements: [Shard(0)]\n"
        "    input: {shape: [.inf, 2]}\n",
        "inf.yaml",
    )
    assert schema.validate(doc) == schema.validate_slow(doc)
    assert schema.validate(doc)[1]  # the Python validator's problem, at its case

    class Broken:
        def is_valid(self, data: Any) -> bool:
            raise ValueError("cannot convert")

    monkeypatch.setattr(schema, "fast_validator", lambda: Broken())
    assert schema.fast_valid(BASE) is False
    monkeypatch.setattr(schema, "fast_validator", lambda: None)
    good = load_text(json.dumps(BASE), "base.yaml")
    assert schema.validate(good) == ([], {})
