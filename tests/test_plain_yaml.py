"""Plain YAML, no dialect: every spec means the same to stock tools as it does to shardspec.

The specs in specs/ and the YAML examples in README.md are read with plain ``yaml.safe_load``
and checked with stock ``jsonschema`` against the shipped schema, as an editor's language
server or ``check-jsonschema`` would. shardspec's own loader must read each spec the same way
(it may only be stricter, never different).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from runner.yamlload import load_file, load_text

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted((REPO / "specs").glob("*.yaml"))
README = REPO / "README.md"
SCHEMA = json.loads((REPO / "schema" / "spec.schema.json").read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)

_FENCE = re.compile(r"^```yaml[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def errors(data: Any) -> list[str]:
    """Stock jsonschema's complaints about ``data``, one line each.

    ``data`` is checked as ``yaml.safe_load`` gives it, and once more with its map keys as
    text, as editors and check-jsonschema see it: jsonschema skips ``propertyNames``
    patterns for a key that is a number, such as the 4 of a map by n.
    """
    found = [*VALIDATOR.iter_errors(data), *VALIDATOR.iter_errors(str_keys(data))]
    return sorted({f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in found})


def str_keys(node: Any) -> Any:
    """``node`` with map keys as text: shardspec reads ``{4: ...}`` (a map by n) with text keys."""
    if isinstance(node, dict):
        return {str(key): str_keys(value) for key, value in node.items()}
    if isinstance(node, list):
        return [str_keys(value) for value in node]
    return node


# --- specs/ ---------------------------------------------------------------------------------


def test_there_are_specs():
    assert len(SPECS) >= 5


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_a_spec_is_valid_for_stock_yaml_and_jsonschema(path: Path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert errors(data) == []


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shardspec_reads_a_spec_as_stock_yaml_does(path: Path):
    plain = yaml.safe_load(path.read_text(encoding="utf-8"))
    ours = load_file(path).data
    assert str_keys(ours) == str_keys(plain)
    # A module's layers run in the order of their keys: the order must agree too.
    for mine, theirs in zip(ours["cases"], plain["cases"], strict=True):
        if "module" in theirs:
            assert list(mine["module"]) == list(theirs["module"]), mine["id"]


# --- README.md ------------------------------------------------------------------------------


def readme_blocks() -> list[tuple[str, str]]:
    """Every ```yaml block in the README, named by the line of its fence."""
    text = README.read_text(encoding="utf-8")
    return [
        (f"README.md:{text.count(chr(10), 0, match.start()) + 1}", match["body"])
        for match in _FENCE.finditer(text)
    ]


def readme_examples() -> list[tuple[str, Any]]:
    """Every ```yaml example in the README as a whole spec file, named by its first line.

    An example with ``version:`` is a whole file. A list of cases, or a single case, is put
    in ``{version: 1, cases: [...]}``. A fragment of a case (keys without ``id``, such as
    "the case now ends with: expect: ...") completes the case of the example before it.
    """
    examples: list[tuple[str, Any]] = []
    last_case: dict | None = None
    for name, body in readme_blocks():
        data = yaml.safe_load(body)
        if isinstance(data, dict) and "version" in data:
            whole = data
        elif isinstance(data, list):
            whole = {"version": 1, "cases": data}
        elif isinstance(data, dict) and "id" in data:
            whole = {"version": 1, "cases": [data]}
        elif isinstance(data, dict) and last_case is not None:
            whole = {"version": 1, "cases": [{**last_case, **data}]}
            name += f" (completing case {last_case.get('id')!r})"
        else:
            raise AssertionError(f"{name}: an example that is neither a spec, cases nor a case")
        cases = whole.get("cases")
        if isinstance(cases, list) and cases and isinstance(cases[-1], dict):
            last_case = cases[-1]
        examples.append((name, whole))
    return examples


EXAMPLES = readme_examples()


def test_the_readme_has_yaml_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize(("name", "spec"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_a_readme_example_is_valid_for_stock_yaml_and_jsonschema(name: str, spec: Any):
    assert errors(spec) == [], name


@pytest.mark.parametrize(("name", "body"), readme_blocks(), ids=[n for n, _ in readme_blocks()])
def test_shardspec_reads_a_readme_example_as_stock_yaml_does(name: str, body: str):
    assert str_keys(load_text(body, name).data) == str_keys(yaml.safe_load(body))


def test_stock_tools_catch_a_call_split_by_a_flow_map():
    # What this file guards against: {fc1: Linear(16, 32)} is 'Linear(16' and a key '32)'.
    module = yaml.safe_load("{fc1: Linear(16, 32), relu: ReLU()}")
    assert module == {"fc1": "Linear(16", "32)": None, "relu": "ReLU()"}
    case = {"id": "mlp", "kind": "module", "mesh": ["n"], "module": module}
    assert errors({"version": 1, "cases": [case]}) != []
