"""Fuzzing the loader, validator, expander and parsers with Hypothesis.

Whatever the input, the pure pipeline returns problems (or raises SpecError from the
loader, its documented refusal) and the parsers raise only their own errors. Nothing here
asserts how long an input takes (bench/ measures speed); set SHARDSPEC_FUZZ_SCALE=50 to
fuzz longer.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any

import yaml
from _corpus import assert_plain, problems_of_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import expr
from runner.layers import LayerError, parse_layer
from runner.placements import parse as parse_placement

SPECS = Path(__file__).resolve().parent.parent / "specs"
# Every key of the format somewhere, so that mutations reach every check in expand.
RICH = {
    "version": 1,
    "defaults": {
        "requires": {"min_devices": 1, "max_devices": 8},
        "checks": {"values": True},
        "marks": ["slow"],
        "timeout": 60,
        "input": {"dtype": "float32"},
    },
    "cases": [
        {
            "id": "uneven",
            "mesh": [-1],
            "placements": ["Shard(-2)"],
            "input": {"shape": ["n+1", 3], "requires_grad": [True, False]},
            "expect": {
                "global_shape": ["n+1", 3],
                "local_shape": [2, 3],
                "padded_local_shape": [2, 3],
                "sharding_spec": {"1": "{replicated}"},
            },
            "xfail": {"reason": "fuzz", "strict": False},
        },
        {
            "id": "grid",
            "requires": {"devices_divisible_by": 2},
            "mesh": [2, "n/2"],
            "placements": ["Shard(0)", "Shard(1)"],
            "input": {"shape": ["2*n", "n"], "dtype": "bfloat16"},
            "expect": {"local_shape": ["n", 2], "sharding_spec": "{devices=[2,2]0,1,2,3}"},
        },
        {
            "id": "partial",
            "mesh": ["n"],
            "placements": ["Partial()"],
            "input": {"shape": ["n", 2], "dtype": "int64"},
            "expect": {"error": {"type": "ValueError", "match": "Unsupported"}},
            "skip": "fuzz",
        },
        {
            "id": "mlp",
            "kind": "module",
            "mesh": ["n"],
            "module": {
                "emb": "Embedding(16, 8)",
                "norm": "LayerNorm(8)",
                "fc": "Linear(8, n, bias=false)",
            },
            "shard": [
                {"params": "fc.*", "placements": ["Shard(0)"]},
                {"params": "*", "placements": ["Replicate()"]},
            ],
            "expect": {
                "sharded_params": ["fc.weight"],
                "unsharded_params": ["norm.bias"],
                "sharding_spec": {"fc.weight": "{devices=[4,1]0,1,2,3}"},
                "forward": {"input_shape": [2, 3], "atol": 1.0e-5, "rtol": 0.0},
            },
        },
    ],
}
SEEDS = [
    *(
        yaml.safe_load((SPECS / name).read_text(encoding="utf-8"))
        for name in ("distribute_tensor.yaml", "distribute_module.yaml")
    ),
    RICH,
]
DEVICES = list(range(1, 9))

_BASE = settings(
    deadline=None,  # no wall-clock limit per input: a loaded machine must not fail the test
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(examples: int) -> settings:
    # SHARDSPEC_FUZZ_SCALE=50 fuzzes longer, by hand.
    return settings(_BASE, max_examples=examples * int(os.environ.get("SHARDSPEC_FUZZ_SCALE", "1")))


# Characters that matter to YAML, expressions and placements, plus a few awkward ones.
YAMLISH = st.sampled_from(
    [
        *"abnxyz019 -:,[]{}()'\"&*!|>?#%@`<=/+.\t\n",
        "Shard(0)",
        "n/2",
        "yes",
        "!!python/object/apply:os.system",
        "<<: ",
        "\u00e9",
        "\x07",
        "\ufeff",
    ]
)


def run_pipeline(text: str | bytes) -> None:
    for problem in problems_of_text(text, DEVICES, "fuzz.yaml"):
        assert_plain(problem, "fuzz.yaml")


# --- arbitrary text -----------------------------------------------------------------------------


@fuzz(1000)
@given(st.lists(YAMLISH, max_size=80).map("".join))
def test_yamlish_text(text: str):
    run_pipeline(text)


@fuzz(400)
@given(st.one_of(st.text(max_size=120), st.binary(max_size=120)))
def test_any_text_or_bytes(text: str | bytes):
    run_pipeline(text)  # lone surrogates and invalid UTF-8 included


@fuzz(1000)
@given(st.data())
def test_edits_of_a_valid_spec_text(data: st.DataObject):
    """Character-level edits of a real spec: syntax errors in realistic surroundings."""
    text = (
        SPECS / data.draw(st.sampled_from(["distribute_tensor.yaml", "distribute_module.yaml"]))
    ).read_text()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 6))
        new = data.draw(st.lists(YAMLISH, max_size=4).map("".join))
        text = text[:at] + new + text[at + cut :]
    run_pipeline(text)


# --- structure-aware mutations --------------------------------------------------------------------


def words(text: str) -> list[str]:
    """A compact list: the whitespace-separated items of ``text``."""
    return text.split()


WORDS = st.sampled_from(
    [
        *words("""n n/2 3*n/2 n-1 n-8 2*n+1 n/0 n//3 n%3+1 0 -1 n**2 ( (n Shard(0) Shard(1) Shard(-1)
        Shard(7) Shard(-3) Replicate() Partial() Linear(8,4) Linear(n/2,4) Linear(64,1,bias=false)
        Conv2d(1) ReLU() GELU() LayerNorm(64) Embedding(n,4) float32 float16 bfloat16 int64 bool
        module tensor yes * fc* fc1.weight fc2.bias {replicated} {devices=[4,1]0,1,2,3} ValueError
        2001-01-01"""),
        "",
        "Linear(8, 4)",
    ]
)
LEAVES = st.one_of(
    WORDS,
    st.integers(-3, 70),
    st.sampled_from([0, 1, 2, 3, 4, 8, 1 << 26, 1 << 40, 10**30]),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, width=32),
    st.text(max_size=12),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.one_of(
    st.sampled_from(
        words("""id mesh mesch placements input shape dtype requires_grad expect local_shape local_shapes
        global_shape padded_local_shape sharding_spec requires min_devices max_devices
        devices_divisible_by kind module shard params forward input_shape atol error type match
        xfail reason strict skip marks timeout checks values defaults cases version description
        1 4 <<""")
    ),
    st.text(max_size=10),
)


def places(node: Any, path: tuple = ()) -> list[tuple]:
    """Every path in the tree, the root included."""
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += places(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += places(value, (*path, i))
    return out


def parent_of(root: Any, path: tuple) -> Any:
    for part in path[:-1]:
        root = root[part]
    return root


def mutate(root: Any, data: st.DataObject) -> Any:
    path = data.draw(st.sampled_from(places(root)))
    if not path:
        return data.draw(st.sampled_from([root, [root], None, "text", 1]))
    parent, last = parent_of(root, path), path[-1]
    value = parent[last]
    how = data.draw(
        st.sampled_from(words("tweak tweak replace delete rename insert wrap unwrap repeat text"))
    )
    if how == "tweak":  # a value of the same kind: mostly still valid, so expand sees it
        if isinstance(value, str):
            parent[last] = data.draw(WORDS)
        elif isinstance(value, bool):
            parent[last] = not value
        elif isinstance(value, int):
            parent[last] = data.draw(st.integers(-2, 70))
        elif isinstance(value, list) and value:
            parent[last] = data.draw(st.permutations(value))[
                : data.draw(st.integers(1, len(value)))
            ]
    elif how == "replace":
        parent[last] = data.draw(VALUES)
    elif how == "delete":
        del parent[last]
    elif how == "rename" and isinstance(parent, dict):
        parent[data.draw(KEYS)] = parent.pop(last)
    elif how == "insert" and isinstance(value, dict):
        value[data.draw(KEYS)] = data.draw(VALUES)
    elif how == "insert" and isinstance(value, list):
        value.insert(data.draw(st.integers(0, len(value))), data.draw(VALUES))
    elif how == "wrap":
        parent[last] = [value]
    elif how == "unwrap" and isinstance(value, (list, dict)) and value:
        parent[last] = next(iter(value.values() if isinstance(value, dict) else value))
    elif how == "repeat" and isinstance(parent, list):
        parent.append(copy.deepcopy(value))  # duplicate case ids, extra placements
    elif how == "text":
        parent[last] = str(value)
    return root


@fuzz(1200)
@given(st.data())
def test_mutated_specs(data: st.DataObject):
    spec = copy.deepcopy(data.draw(st.sampled_from(SEEDS)))
    for _ in range(data.draw(st.integers(1, 5))):
        spec = mutate(spec, data)
    flow = data.draw(st.sampled_from([False, True, None]))
    run_pipeline(yaml.safe_dump(spec, sort_keys=False, default_flow_style=flow, allow_unicode=True))


# --- the parsers on their own ---------------------------------------------------------------------

EXPR_TEXT = st.one_of(
    st.lists(
        st.sampled_from([*"n0123456789+-*/%() \t", "//", "n/2", "\u0663", "x"]), max_size=60
    ).map("".join),
    st.text(max_size=220),
)


@fuzz(2000)
@given(EXPR_TEXT)
def test_expressions_raise_only_expr_error(text: str):
    try:
        parsed = expr.parse(text)
    except expr.ExprError as exc:
        assert "\n" not in str(exc)
        return
    for n in DEVICES:
        with contextlib.suppress(expr.ExprError):
            assert isinstance(parsed.evaluate(n), int)


@fuzz(1000)
@given(
    st.one_of(EXPR_TEXT, st.lists(YAMLISH, max_size=20).map("".join)),
    st.sampled_from(["Linear", "Shard", "LayerNorm", "Replicate", "Embedding"]),
)
def test_layers_and_placements_raise_only_value_error(body: str, name: str):
    text = f"{name}({body})"
    for candidate in (text, body):
        with contextlib.suppress(ValueError):
            parse_placement(candidate)
        for n in (1, 3, 8):
            with contextlib.suppress(LayerError):
                parse_layer(candidate, n)
