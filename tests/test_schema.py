"""Schema validation in plain words (runner.schema.validate), and the schema file itself."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from runner import schema
from runner.problems import Problem
from runner.yamlload import load_text

REPO = Path(__file__).resolve().parent.parent
CASE = """\
version: 1
cases:
  - id: rows
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [2*n, 3]}
"""


def problems(text: str) -> list[Problem]:
    """File problems, then each case's, in order."""
    doc = load_text(textwrap.dedent(text), "s.yaml")
    file_problems, case_problems = schema.validate(doc)
    return file_problems + [p for i in sorted(case_problems) for p in case_problems[i]]


def one(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def walk(node: Any, where: str = "#"):
    """Every (json pointer, subschema) in the schema."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{where}/{i}")


# --- the schema file ----------------------------------------------------------------------


def test_the_schema_is_valid_draft_2020_12():
    Draft202012Validator.check_schema(schema.schema())
    assert schema.schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_validator_is_compiled_once():
    assert schema.validator() is schema.validator()


def test_every_property_has_a_description_and_examples():
    missing = []
    for where, node in walk(schema.schema()):
        for name, prop in (node.get("properties") or {}).items():
            plain = isinstance(prop, dict) and "$ref" not in prop
            if plain and not {"description", "examples"} <= prop.keys():
                missing.append(f"{where}/properties/{name}")
    assert not missing


def test_every_example_is_valid_against_its_own_schema():
    root = schema.schema()
    wrong = []
    for where, node in walk(root):
        if not isinstance(node.get("examples"), list) or where.endswith("/examples"):
            continue
        check = Draft202012Validator({**node, "$defs": root["$defs"]})
        wrong += [f"{where}: {ex!r}" for ex in node["examples"] if not check.is_valid(ex)]
    assert not wrong


@pytest.mark.parametrize("path", sorted((REPO / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_specs_are_valid(path: Path):
    assert problems(path.read_text(encoding="utf-8")) == []


# --- messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (CASE.replace("mesh:", "mesch:"), 4, "unknown key 'mesch'; did you mean 'mesh'?"),
        (
            CASE.replace("cases:", "case:"),
            2,
            "unknown key 'case' in the file; did you mean 'cases'?",
        ),
        (CASE.replace("shape:", "shap:"), 6, "unknown key 'shap' in input; did you mean 'shape'?"),
        (CASE.replace("id:", "ID:"), 3, "unknown key 'ID'; did you mean 'id'?"),
        (CASE + "    expect: {local_shap: [2, 3]}\n", 7, "in expect; did you mean 'local_shape'?"),
        (CASE + "    requires: {min_device: 2}\n", 7, "in requires; did you mean 'min_devices'?"),
        (
            CASE + "    expect: {error: {type: E, mach: x}}\n",
            7,
            "in expect.error; did you mean 'match'?",
        ),
    ],
)
def test_a_misspelled_key_says_did_you_mean(text, line, message):
    problem = one(text)
    assert problem.mark.line == line
    assert message in problem.message


def test_an_unknown_key_without_a_close_match_lists_the_allowed_keys():
    problem = one(CASE + "    colour: red\n")
    assert problem.mark.line == 7 and problem.mark.col == 5  # at the key, not its value
    assert "unknown key 'colour'; allowed keys: checks, description, expect, id" in problem.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CASE.replace("mesh: [n]", "mesh: n"), "mesh must be a list, not the text 'n'"),
        (CASE.replace("version: 1", "version: 2"), "version must be 1, not the number 2"),
        (CASE.replace("version: 1", "version: '1'"), "version must be 1, not the text '1'"),
        (
            CASE.replace("id: rows", "id: 123"),
            'id must be text, not the number 123; put it in quotes ("123")',
        ),
        (CASE + "    timeout: -1\n", "timeout must be more than 0, not -1"),
        (CASE + "    timeout: 2 minutes\n", "timeout must be a number, not the text '2 minutes'"),
        (
            CASE + "    xfail: flaky\n",
            "xfail must be a map (key: value lines), not the text 'flaky'",
        ),
        (CASE + "    xfail: {strict: true}\n", "xfail needs the key 'reason'"),
        (
            CASE + "    kind: modul\n",
            "kind: the text 'modul' is not one of: tensor, module; did you mean 'module'?",
        ),
        (CASE + "    marks: [skip]\n", "marks[0]: the text 'skip' is not allowed here"),
        (CASE + "    marks: [a, a]\n", "marks lists the same item twice"),
        (
            CASE.replace("[Shard(0)]", "[Shard(x)]"),
            "placements[0]: the text 'Shard(x)' is not a placement",
        ),
        (CASE.replace("[Shard(0)]", "[]"), "placements must have at least 1 item(s), not 0"),
        (CASE.replace("2*n, 3", "2*n, 0"), "input.shape[1] must be at least 1, not 0"),
        (
            CASE.replace("2*n, 3", "2*m, 3"),
            "input.shape[0]: the text '2*m' is not a whole number or an expression in n",
        ),
        (
            CASE.replace("2*n, 3", "2*n, 2.5"),
            "input.shape[1]: the number 2.5 is not valid here. Expected: A size",
        ),
        (CASE.replace("- id: rows", "- kind: tensor"), "the case needs the key 'id'"),
        ("version: 1\ncases: []\n", "cases must have at least 1 item(s), not 0"),
        ("cases: [{id: a}]\n", "the file needs the key 'version'"),
        ("- a\n", "the file must be a map (key: value lines), not a list"),
    ],
)
def test_messages_say_what_was_expected_in_plain_words(text, message):
    problem = one(text)
    assert message in problem.message
    assert "{" not in problem.message.split(";")[0] or "requires" in problem.message  # no reprs


def test_yaml_exponent_without_a_dot_gets_a_hint():
    text = CASE + "    kind: module\n    expect: {forward: {input_shape: [2, 3], atol: 1e-5}}\n"
    problem = one(text)
    assert "atol must be a number, not the text '1e-5'" in problem.message
    assert "YAML reads '1e-5' as text: write it with a dot, like 1.0e-05" in problem.message


def test_a_bad_map_key_is_reported_at_the_key():
    text = CASE.replace(
        "input: {shape: [2*n, 3]}", "kind: module\n    module: {ok: ReLU(), 'fc 1': ReLU()}"
    )
    problem = one(text)
    assert (problem.mark.line, problem.mark.col) == (7, 26)
    assert (
        "module: the key 'fc 1' is not a layer name made of letters, digits and _"
        in problem.message
    )


def test_problems_are_grouped_by_case():
    text = CASE + "    mesch: [n]\n  - id: two\n    mesh: 3\n  - id: fine\n"
    doc = load_text(text, "s.yaml")
    file_problems, case_problems = schema.validate(doc)
    assert file_problems == []
    assert sorted(case_problems) == [0, 1]
    assert "mesch" in case_problems[0][0].message
    assert "mesh must be a list" in case_problems[1][0].message


def test_defaults_are_checked_too():
    text = "version: 1\ndefaults: {mesch: [n]}\n" + CASE.split("\n", 1)[1]
    problem = problems(text)[0]
    assert problem.mark.line == 2
    assert "unknown key 'mesch' in defaults; did you mean 'mesh'?" in problem.message


def test_a_broken_default_stops_every_case_that_inherits_it():
    text = "version: 1\ndefaults: {checks: 5}\n" + CASE.split("\n", 1)[1] + "  - id: two\n"
    doc = load_text(text, "s.yaml")
    file_problems, case_problems = schema.validate(doc)
    assert [p.mark.line for p in file_problems] == [2]
    assert sorted(case_problems) == [0, 1]
    for i, line in ((0, 4), (1, 8)):
        [problem] = case_problems[i]
        assert problem.mark.line == line
        assert problem.message.startswith(
            "the defaults this case inherits have a mistake at line 2"
        )


def test_messages_never_repeat_a_huge_value():
    key = "k" * 10_000
    assert len(one(CASE + f"    ? {key}\n    : 1\n").message) < 300  # '?': a long key
    assert len(one(CASE.replace("mesh: [n]", f"mesh: '{key}'")).message) < 300


def test_an_unexpected_kind_of_error_still_reads_plainly():
    # A keyword the schema doesn't use today: the message must not fall back on the
    # validator's own text, which quotes the whole value.
    doc = load_text(CASE, "s.yaml")
    value = doc.data["cases"][0]
    error = ValidationError(
        f"{value!r} is not a multiple of 3",
        validator="multipleOf",
        validator_value=3,
        instance=value,
        schema={},
        path=["cases", 0],
    )
    problem = schema.describe(error, doc)
    assert str(problem) == "s.yaml:3:5: the case: a map is not valid here"


def test_a_file_with_very_many_errors_hides_no_case():
    bad = "  - {id: c%d, mesh: [x, y], bogus: 1}\n"
    text = "version: 1\ncases:\n" + "".join(bad % i for i in range(400)) + CASE.split("cases:\n")[1]
    doc = load_text(text, "s.yaml")
    file_problems, case_problems = schema.validate(doc)
    assert any("too many mistakes" in p.message for p in file_problems)
    # Cases past the point where checking stopped are never passed as valid.
    assert sorted(case_problems) == list(range(401))
    assert "not checked" in case_problems[400][0].message


def test_the_schema_file_is_json_with_descriptions_for_tools():
    raw = json.loads(schema.schema_path().read_text(encoding="utf-8"))
    assert raw == schema.schema()
    assert raw["$defs"]["case"]["description"]
