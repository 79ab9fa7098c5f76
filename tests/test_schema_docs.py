"""The schema is a documented contract: $id, Draft 2020-12, a description and examples everywhere."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema" / "spec.schema.json"


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node and len(node) == 1:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _properties(schema: dict, node, where: str = "#"):
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{where}/{name}", sub
        for key, value in node.items():
            if key != "properties":
                yield from _properties(schema, value, f"{where}/{key}")
        for name, sub in (node.get("properties") or {}).items():
            yield from _properties(schema, sub, f"{where}/{name}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _properties(schema, item, f"{where}/{i}")


def test_schema_is_valid_draft_2020_12_with_an_id() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("spec.schema.json")


def test_every_property_has_a_description_and_examples() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    seen = 0
    for where, prop in _properties(schema, schema):
        target = {**_resolve(schema, {"$ref": prop["$ref"]}), **prop} if "$ref" in prop else prop
        assert target.get("description"), f"{where} has no description"
        assert target.get("examples"), f"{where} has no examples"
        seen += 1
    assert seen > 50


def test_the_schema_documents_every_step_call() -> None:
    """The editor offers each call: its signature, what it does, and an example."""
    from runner.calls import CALLS

    step = json.loads(SCHEMA_FILE.read_text())["$defs"]["step_text"]
    for name, spec in CALLS.items():
        documented = step["x-calls"][name]
        assert documented["signature"] == spec.signature, name
        assert documented["example"] == spec.example, name
        assert spec.example in step["examples"], name
        assert f"{spec.signature}: {spec.doc}" in step["description"], name
    assert set(step["x-calls"]) == set(CALLS)
