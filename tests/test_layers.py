"""runner.layers: the allowlist, its grammar, parameter shapes and output shapes.

This process never imports torch: the cross-checks against torch.nn run in one subprocess
(``_torch_facts``), which builds every layer with runner.engine_layers and reports what torch
says, and the expectations here are computed by runner.layers in plain Python.
"""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.layers import SIGNATURES, Layer, LayerError, chain_problem, output_shapes, parse_layer

REPO = Path(__file__).resolve().parent.parent

# --- parsing ---------------------------------------------------------------------------------

VALID = [
    # (text, n, kind, sizes, bias, options, written back)
    ("TransformerEncoderLayer(8, 2, 16)", 4, "TransformerEncoderLayer", (8, 2, 16), True,
     {"dropout": 0.0, "batch_first": True}, "TransformerEncoderLayer(8, 2, 16)"),
    ("TransformerEncoderLayer(4*n, n, 8, 0)", 2, "TransformerEncoderLayer", (8, 2, 8), True,
     {"dropout": 0.0, "batch_first": True}, "TransformerEncoderLayer(8, 2, 8)"),
    ("TransformerEncoderLayer(d_model=8, nhead=4, dim_feedforward=2*n, dropout=0.0, "
     "batch_first=false, bias=false)", 4, "TransformerEncoderLayer", (8, 4, 8), False,
     {"dropout": 0.0, "batch_first": False},
     "TransformerEncoderLayer(8, 4, 8, batch_first=false, bias=false)"),
    ("Conv1d(3, 8, 3)", 4, "Conv1d", (3, 8, 3), True, {"stride": 1, "padding": 0},
     "Conv1d(3, 8, 3)"),
    ("Conv1d(3, 8, 3, 2, 1, bias=false)", 4, "Conv1d", (3, 8, 3), False,
     {"stride": 2, "padding": 1}, "Conv1d(3, 8, 3, stride=2, padding=1, bias=false)"),
    ("Conv2d(n, 2*n, kernel_size=3, padding=n/2)", 2, "Conv2d", (2, 4, 3), True,
     {"stride": 1, "padding": 1}, "Conv2d(2, 4, 3, padding=1)"),
    ("Dropout(0)", 4, "Dropout", (), True, {"p": 0.0}, "Dropout(0.0)"),
    ("Dropout(p=0.0)", 4, "Dropout", (), True, {"p": 0.0}, "Dropout(0.0)"),
    ("Softmax(-1)", 4, "Softmax", (), True, {"dim": -1}, "Softmax(-1)"),
    ("Softmax(dim=n-3)", 4, "Softmax", (), True, {"dim": 1}, "Softmax(1)"),
    ("SiLU()", 4, "SiLU", (), True, {}, "SiLU()"),
    ("RMSNorm(2*n)", 4, "RMSNorm", (8,), True, {}, "RMSNorm(8)"),
    ("Flatten()", 4, "Flatten", (), True, {"start_dim": 1, "end_dim": -1}, "Flatten()"),
    ("Flatten(0, -2)", 4, "Flatten", (), True, {"start_dim": 0, "end_dim": -2},
     "Flatten(start_dim=0, end_dim=-2)"),
    ("Flatten(end_dim=2)", 4, "Flatten", (), True, {"start_dim": 1, "end_dim": 2},
     "Flatten(end_dim=2)"),
    ("Identity()", 4, "Identity", (), True, {}, "Identity()"),
    # the existing layers, unchanged (and now also with torch's keyword names)
    ("Linear(2*n, n, bias=false)", 4, "Linear", (8, 4), False, {}, "Linear(8, 4, bias=false)"),
    ("Linear(in_features=8, out_features=4)", 4, "Linear", (8, 4), True, {}, "Linear(8, 4)"),
    ("Linear(8, 4, bias=True)", 4, "Linear", (8, 4), True, {}, "Linear(8, 4)"),
    ("LayerNorm(n)", 4, "LayerNorm", (4,), True, {}, "LayerNorm(4)"),
    ("Embedding(100, 16)", 4, "Embedding", (100, 16), True, {}, "Embedding(100, 16)"),
    ("GELU()", 4, "GELU", (), True, {}, "GELU()"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "n", "kind", "sizes", "bias", "options", "written"), VALID)
def test_every_layer_parses(text, n, kind, sizes, bias, options, written):
    layer = parse_layer(text, n)
    assert (layer.kind, layer.sizes, layer.bias, dict(layer.options)) == (
        kind,
        sizes,
        bias,
        options,
    )
    assert str(layer) == written
    assert parse_layer(written, n) == layer  # what explain and descriptions show parses back
    assert Layer.from_json(json.loads(json.dumps(layer.as_json()))) == layer
    for name, value in options.items():
        assert layer.option(name) == value


def test_a_layer_made_without_options_gets_torch_defaults():
    assert Layer("Conv1d", (3, 8, 3)) == parse_layer("Conv1d(3, 8, 3)", 1)
    assert Layer("Flatten", ()).option("start_dim") == 1
    assert Layer.from_json({"kind": "Linear", "sizes": [8, 4], "bias": False}).params == {
        "weight": (4, 8)
    }


CONV = "Conv1d(in, out, kernel_size[, stride=1, padding=0, bias=false])"
INVALID = [
    # the existing messages, unchanged
    ("Linaer(8, 4)", "unknown layer 'Linaer'; did you mean Linear? allowed layers: " + SIGNATURES),
    ("Linear(8)", "Linear takes 2 size(s) (in_features, out_features), not 1; "
     "write Linear(in, out[, bias=false])"),
    ("Linear(8, 4, bias=maybe)", "Linear(bias=...) takes true or false, not 'maybe'"),
    ("ReLU(inplace=true)", "ReLU has no option 'inplace'; write ReLU()"),
    ("Linear", "'Linear' is not a layer; write one of Linear(in, out[, bias=false]), ReLU()"),
    ("Linear(n-4, 2)", "Linear: 'n-4' is 0 when n=4; sizes must be at least 1"),
    ("MultiheadAttention(8, 2)", "unknown layer 'MultiheadAttention'; allowed layers: "),
    # TransformerEncoderLayer
    ("TransformerEncoderLayer(10, 3, 16)", "TransformerEncoderLayer: d_model=10 is not "
     "divisible by nhead=3; attention splits d_model evenly over the heads"),
    ("TransformerEncoderLayer(4*n, 3, 16)", "d_model=16 is not divisible by nhead=3 when n=4"),
    ("TransformerEncoderLayer(8, 2, 16, 0.1)", "TransformerEncoderLayer: dropout=0.1 is not "
     "supported: shardspec accepts only dropout=0 for now, because random dropout would make "
     "the sharded and the unsharded runs differ; write dropout=0.0"),
    ("TransformerEncoderLayer(8, 2, 16, dropout=1.5)",
     "dropout takes a number from 0 to 1, such as 0.0, not '1.5'"),
    ("TransformerEncoderLayer(8, 2, 16, dropout=n)", "such as 0.0, not 'n'"),
    ("TransformerEncoderLayer(8, 2)", "TransformerEncoderLayer takes 3 to 4 arguments "
     "(d_model, nhead, dim_feedforward[, dropout]), not 2"),
    ("TransformerEncoderLayer(8, 2, 16, batch_first=yes)", "takes true or false, not 'yes'"),
    ("TransformerEncoderLayer(8, 2, 16, activation=gelu)", "has no option 'activation'"),
    ("TransformerEncoderLayer(8, 2, 16, norm_first=true)", "has no option 'norm_first'"),
    # Conv1d / Conv2d
    ("Conv1d(3, 8)", "Conv1d takes 3 to 5 arguments (in_channels, out_channels, "
     "kernel_size[, stride, padding]), not 2; write " + CONV),
    ("Conv2d(3, 8, 3, 1, 0, 1)", "Conv2d takes 3 to 5 arguments"),
    ("Conv1d(3, 8, 3, 0)", "Conv1d: '0' is 0 when n=4; sizes must be at least 1"),
    ("Conv1d(3, 8, 3, padding=n-5)", "Conv1d: padding 'n-5' is -1 when n=4; it must be at least 0"),
    ("Conv1d(3, 8, stride=2)", "Conv1d needs kernel_size; write " + CONV),
    ("Conv1d(3, 8, 3, stride=2, 1)", "Conv1d: '1' comes after a name=value argument"),
    ("Conv1d(3, 8, 3, stride=1, stride=2)", "Conv1d: stride is given twice"),
    ("Conv1d(3, 8, 3, dilation=2)", "Conv1d has no option 'dilation'"),
    ("Conv2d(3, 8, (3, 5))", "Conv2d takes single values, not lists or tuples (a square kernel"),
    ("Conv2d(3, 8, [3, 5])", "Conv2d takes single values, not lists or tuples"),
    ("Conv1d(3, 8, 3, bias=0)", "Conv1d(bias=...) takes true or false, not '0'"),
    # the rest
    ("Dropout(0.5)", "Dropout: p=0.5 is not supported: shardspec accepts only p=0 for now, "
     "because random dropout would make the sharded and the unsharded runs differ; "
     "write Dropout(0)"),
    ("Dropout()", "Dropout takes 1 argument (p), not 0; write Dropout(0)"),
    ("Dropout(p=half)", "Dropout: p takes a number from 0 to 1, such as 0.0, not 'half'"),
    ("Dropout(0, inplace=true)", "Dropout has no option 'inplace'"),
    ("Softmax()", "Softmax takes 1 argument (dim), not 0; write Softmax(dim)"),
    ("Softmax(n/3)", "Softmax: 'n/3' is not a whole number when n=4"),
    ("SiLU(1)", "SiLU takes 0 size(s) (none), not 1; write SiLU()"),
    ("RMSNorm(8, eps=1e-5)", "RMSNorm has no option 'eps'; write RMSNorm(d)"),
    ("RMSNorm()", "RMSNorm takes 1 size(s) (normalized_shape), not 0"),
    ("Flatten(2, 1)", "Flatten: start_dim=2 comes after end_dim=1"),
    ("Flatten(-1, -2)", "Flatten: start_dim=-1 comes after end_dim=-2"),
    ("Flatten(1, 2, 3)", "Flatten takes 0 to 2 arguments ([start_dim, end_dim]), not 3"),
    ("Identity(8)", "Identity takes 0 size(s) (none), not 1; write Identity()"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "words"), INVALID)
def test_layer_mistakes_are_plain(text, words):
    with pytest.raises(LayerError) as info:
        parse_layer(text, 4)
    assert words in str(info.value)


def test_every_layer_is_in_the_list_of_allowed_layers():
    for name in (
        "TransformerEncoderLayer(d_model, nhead, dim_feedforward[, dropout=0.0",
        "Conv1d(in",
        "Conv2d(in",
        "Dropout(0)",
        "Softmax(dim)",
        "SiLU()",
        "RMSNorm(d)",
        "Flatten([start_dim=1, end_dim=-1])",
        "Identity()",
    ):
        assert name in SIGNATURES
    assert SIGNATURES.startswith("Linear(in, out[, bias=false]), ReLU(), GELU(), Tanh()")


def test_only_a_size_in_n_gets_a_requires_hint():
    with pytest.raises(LayerError) as info:
        parse_layer("Conv1d(3, 8, n/2)", 3)
    assert info.value.expression == "n/2"
    with pytest.raises(LayerError) as info:
        parse_layer("Softmax(n/2)", 3)  # a dim: requires would not make it right
    assert info.value.expression is None


# --- parameters ------------------------------------------------------------------------------


def test_params_follow_torch_names():
    block = parse_layer("TransformerEncoderLayer(8, 2, 16)", 1).params
    assert list(block.items()) == [
        ("self_attn.in_proj_weight", (24, 8)),
        ("self_attn.in_proj_bias", (24,)),
        ("self_attn.out_proj.weight", (8, 8)),
        ("self_attn.out_proj.bias", (8,)),
        ("linear1.weight", (16, 8)),
        ("linear1.bias", (16,)),
        ("linear2.weight", (8, 16)),
        ("linear2.bias", (8,)),
        ("norm1.weight", (8,)),
        ("norm1.bias", (8,)),
        ("norm2.weight", (8,)),
        ("norm2.bias", (8,)),
    ]
    assert list(parse_layer("TransformerEncoderLayer(8, 2, 16, bias=false)", 1).params) == [
        "self_attn.in_proj_weight",
        "self_attn.out_proj.weight",
        "linear1.weight",
        "linear2.weight",
        "norm1.weight",
        "norm2.weight",
    ]
    assert parse_layer("Conv2d(3, 8, 5)", 1).params == {"weight": (8, 3, 5, 5), "bias": (8,)}
    assert parse_layer("Conv1d(3, 8, 5, bias=false)", 1).params == {"weight": (8, 3, 5)}
    assert parse_layer("RMSNorm(6)", 1).params == {"weight": (6,)}
    for text in ("Dropout(0)", "Softmax(1)", "SiLU()", "Flatten()", "Identity()"):
        assert parse_layer(text, 1).params == {}


# layers at several sizes, for the torch cross-check of names, shapes and arguments
TORCH_LAYERS = [
    *(
        f"TransformerEncoderLayer({d}, {h}, {ff})"
        for d, h, ff in [(4, 1, 4), (8, 2, 16), (12, 3, 5)]
    ),
    "TransformerEncoderLayer(8, 4, 8, dropout=0.0, batch_first=false)",
    "TransformerEncoderLayer(8, 2, 16, bias=false)",
    *(f"Conv1d({i}, {o}, {k})" for i, o, k in [(1, 1, 1), (3, 8, 3), (5, 2, 4)]),
    "Conv1d(3, 8, 3, 2, 1, bias=false)",
    *(f"Conv2d({i}, {o}, {k})" for i, o, k in [(1, 1, 1), (3, 8, 3), (2, 5, 2)]),
    "Conv2d(3, 4, kernel_size=3, stride=2, padding=1, bias=false)",
    "Dropout(0)",
    "Softmax(-1)",
    "Softmax(0)",
    "SiLU()",
    *(f"RMSNorm({d})" for d in (1, 7, 16)),
    "Flatten()",
    "Flatten(0, -2)",
    "Identity()",
    "Linear(8, 4)",
    "Linear(3, 5, bias=false)",
    "ReLU()",
    "GELU()",
    "Tanh()",
    "Sigmoid()",
    "LayerNorm(6)",
    "Embedding(10, 3)",
]


def _shape_jobs() -> list[dict[str, Any]]:
    """Chains and inputs whose output shapes (or first failing layer) torch reports."""
    chains: list[tuple[list[str], list[int]]] = [
        # conv -> flatten -> linear, at lengths that fit and one that doesn't
        (["Conv1d(4, 8, 3)", "ReLU()", "Conv1d(8, 8, 3, 2, 1)", "Flatten()", "Linear(56, 10)"],
         [2, 4, 16]),
        (["Conv1d(4, 8, 3)", "ReLU()", "Conv1d(8, 8, 3, 2, 1)", "Flatten()", "Linear(56, 10)"],
         [2, 4, 18]),
        (["Conv1d(4, 8, 3)", "Flatten(0)", "Linear(112, 10)"], [4, 16]),
        (["Conv2d(3, 4, 3, padding=1)", "SiLU()", "Conv2d(4, 2, 2, 2)", "Flatten()",
          "Linear(18, 5)", "Softmax(-1)"], [2, 3, 6, 6]),
        (["Conv2d(3, 4, 3)", "Flatten(-2, -1)", "Conv1d(4, 2, 1)"], [3, 5, 5]),
        (["Conv2d(3, 4, 3)"], [2, 2, 5, 5]),
        (["Conv2d(3, 4, 3)"], [3, 5]),
        (["Conv1d(3, 4, 3)"], [5]),
        (["Conv1d(3, 4, 3)"], [1, 1, 3, 5]),
        # a transformer block
        (["Linear(6, 8)", "TransformerEncoderLayer(8, 2, 16)", "RMSNorm(8)", "Linear(8, 3)"],
         [2, 5, 6]),
        (["TransformerEncoderLayer(8, 2, 16, batch_first=false)", "Dropout(0)"], [5, 2, 8]),
        (["TransformerEncoderLayer(8, 2, 16)", "Identity()"], [5, 8]),
        (["TransformerEncoderLayer(8, 2, 16)"], [8]),
        (["TransformerEncoderLayer(8, 2, 16)"], [1, 2, 5, 8]),
        (["TransformerEncoderLayer(8, 2, 16)"], [2, 5, 6]),
        (["Embedding(10, 8)", "TransformerEncoderLayer(8, 2, 16)", "Flatten()", "Linear(24, 2)"],
         [2, 3]),
        (["Linear(8, 4)", "Embedding(10, 8)"], [2, 8]),
        # norms, softmax and flatten at the edges of their dims
        (["RMSNorm(4)"], [2, 5]),
        (["LayerNorm(4)", "GELU()"], [4]),
        (["Linear(4, 4)"], []),
        (["RMSNorm(4)"], []),
        (["Softmax(0)"], []),
        (["Softmax(-1)"], []),
        (["Softmax(1)"], []),
        (["Softmax(2)"], [2, 3]),
        (["Softmax(-2)", "Tanh()"], [2, 3]),
        (["Flatten()"], [5]),
        (["Flatten()"], []),
        (["Flatten(0, 0)"], []),
        (["Flatten(0, -1)"], []),
        (["Flatten(1, 1)"], [2, 3, 4]),
        (["Flatten(-2, -1)"], [2, 3, 4]),
        (["Flatten(0, 2)"], [2, 3, 4]),
        (["Flatten(0, -3)"], [2, 3]),
        (["Flatten(2, -2)"], [2, 3, 4]),
        (["Flatten(1, -3)"], [2, 3, 4, 5]),
    ]  # fmt: skip
    # the conv output length formula, over kernel, stride, padding and length
    for k, s, p, length in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 1, 2), range(1, 7)):
        chains.append(([f"Conv1d(2, 3, {k}, {s}, {p})"], [2, 2, length]))
    for k, s, p, h, w in itertools.product((1, 3), (1, 2), (0, 1), (1, 2, 5), (3, 4)):
        chains.append(([f"Conv2d(1, 2, {k}, {s}, {p})"], [1, h, w]))
    return [
        {"layers": [(f"l{i}", parse_layer(t, 1).as_json()) for i, t in enumerate(texts)],
         "shape": shape, "texts": texts}
        for texts, shape in chains
    ]  # fmt: skip


_SCRIPT = r"""
import json, sys
import torch
from torch import nn
from runner.engine_layers import build

jobs = json.load(sys.stdin)
out = {"params": [], "args": [], "shapes": []}
for spec in jobs["layers"]:
    model = build([("m", spec)])
    module = model.m
    out["params"].append([[k, list(v.shape)] for k, v in module.named_parameters()])
    facts = {"type": type(module).__name__}
    for name in ("stride", "padding", "kernel_size", "dilation", "groups", "dim", "start_dim",
                 "end_dim", "p", "batch_first", "norm_first", "in_channels", "out_channels"):
        if hasattr(module, name):
            value = getattr(module, name)
            facts[name] = list(value) if isinstance(value, tuple) else value
    if isinstance(module, nn.TransformerEncoderLayer):
        act = module.activation
        facts["activation"] = getattr(act, "__name__", type(act).__name__)
        facts["dropouts"] = [module.dropout.p, module.dropout1.p, module.dropout2.p,
                             module.self_attn.dropout]
        facts["nhead"] = module.self_attn.num_heads
        facts["batch_first"] = module.self_attn.batch_first
    out["args"].append(facts)
torch.manual_seed(0)
for job in jobs["shapes"]:
    model = build(job["layers"])
    first = job["layers"][0][1]
    if first["kind"] == "Embedding":
        x = torch.randint(0, first["sizes"][0], job["shape"])
    else:
        x = torch.randn(job["shape"])
    shapes, failed = [], None
    with torch.no_grad():
        for index, child in enumerate(model.children()):
            try:
                x = child(x)
            except Exception as exc:
                failed = [index, f"{type(exc).__name__}: {exc}"[:300]]
                break
            shapes.append(list(x.shape))
    out["shapes"].append({"shapes": shapes, "failed": failed})
print(json.dumps(out))
"""


@functools.cache
def _torch_facts() -> dict[str, Any]:
    """What torch.nn says about TORCH_LAYERS and the shape jobs, from one subprocess."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    if subprocess.run([sys.executable, "-c", probe], check=False).returncode:
        pytest.skip("torch is not installed in this Python (./run tests installs it)")
    jobs = {
        "layers": [parse_layer(t, 1).as_json() for t in TORCH_LAYERS],
        "shapes": [{"layers": j["layers"], "shape": j["shape"]} for j in _shape_jobs()],
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        input=json.dumps(jobs),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_params_are_exactly_what_torch_makes():
    facts = _torch_facts()
    for text, got in zip(TORCH_LAYERS, facts["params"], strict=True):
        want = [[name, list(shape)] for name, shape in parse_layer(text, 1).params.items()]
        assert got == want, text


def test_engine_builds_each_layer_with_its_arguments():
    args = dict(zip(TORCH_LAYERS, _torch_facts()["args"], strict=True))
    for text, facts in args.items():
        assert facts["type"] == parse_layer(text, 1).kind, text
    block = args["TransformerEncoderLayer(8, 4, 8, dropout=0.0, batch_first=false)"]
    assert block["batch_first"] is False
    assert block["norm_first"] is False
    assert block["activation"] == "relu"
    assert block["dropouts"] == [0.0, 0.0, 0.0, 0.0]
    assert block["nhead"] == 4
    assert args["TransformerEncoderLayer(8, 2, 16)"]["batch_first"] is True
    conv = args["Conv1d(3, 8, 3, 2, 1, bias=false)"]
    assert (conv["kernel_size"], conv["stride"], conv["padding"]) == ([3], [2], [1])
    assert (conv["dilation"], conv["groups"]) == ([1], 1)
    conv2 = args["Conv2d(3, 4, kernel_size=3, stride=2, padding=1, bias=false)"]
    assert (conv2["kernel_size"], conv2["stride"], conv2["padding"]) == ([3, 3], [2, 2], [1, 1])
    assert args["Dropout(0)"]["p"] == 0.0
    assert args["Softmax(-1)"]["dim"] == -1
    assert (args["Flatten()"]["start_dim"], args["Flatten()"]["end_dim"]) == (1, -1)
    assert (args["Flatten(0, -2)"]["start_dim"], args["Flatten(0, -2)"]["end_dim"]) == (0, -2)


def _layers(texts: list[str]) -> list[tuple[str, Layer]]:
    return [(f"l{i}", parse_layer(t, 1)) for i, t in enumerate(texts)]


def test_output_shapes_match_torch_and_fail_at_the_same_layer():
    jobs = _shape_jobs()
    results = _torch_facts()["shapes"]
    fails = 0
    for job, torch_says in zip(jobs, results, strict=True):
        layers = _layers(job["texts"])
        where = f"{job['texts']} on {job['shape']}: torch says {torch_says}"
        if torch_says["failed"] is None:
            assert [list(s) for s in output_shapes(layers, job["shape"])] == torch_says["shapes"]
            assert chain_problem(layers) is None, where  # never refuses a chain torch runs
            continue
        fails += 1
        index = torch_says["failed"][0]
        with pytest.raises(LayerError) as info:
            output_shapes(layers, job["shape"])
        assert info.value.layer == f"l{index}", where
        assert f"layer l{index} = {layers[index][1]} " in str(info.value)
    assert fails >= 20  # the jobs cover misfits, not only chains that work


# --- output_shapes and chain_problem in plain Python -----------------------------------------


def test_conv_flatten_linear_chain():
    layers = _layers(
        ["Conv1d(4, 8, 3)", "ReLU()", "Conv1d(8, 8, 3, 2, 1)", "Flatten()", "Linear(56, 10)"]
    )
    assert output_shapes(layers, [2, 4, 16]) == [
        (2, 8, 14),
        (2, 8, 14),
        (2, 8, 7),
        (2, 56),
        (2, 10),
    ]
    assert chain_problem(layers) is None  # Linear's 56 depends on the input's length
    with pytest.raises(LayerError) as info:
        output_shapes(layers, [2, 4, 18])
    assert str(info.value) == (
        "layer l4 = Linear(56, 10) doesn't fit [2, 64], the output of l3 = Flatten(): "
        "it takes 56 features in the last dim, not 64"
    )
    with pytest.raises(LayerError) as info:
        output_shapes(layers, [2, 3, 16])
    assert str(info.value) == (
        "layer l0 = Conv1d(4, 8, 3) doesn't fit the input [2, 3, 16]: "
        "it takes 4 channels in dim 1, not 3"
    )
    with pytest.raises(LayerError) as info:
        output_shapes(layers, [2, 4, 2])
    assert "its kernel_size 3 is larger than the input's 2" in str(info.value)
    with pytest.raises(LayerError) as info:
        output_shapes(_layers(["Conv2d(1, 1, 5, padding=1)"]), [1, 2, 9])
    assert "kernel_size 5 is larger than the input's 2 padded by 1 on each side" in str(info.value)


def test_transformer_block_chain():
    layers = _layers(
        [
            "Embedding(100, 16)",
            "TransformerEncoderLayer(16, 4, 32)",
            "LayerNorm(16)",
            "Linear(16, 100)",
        ]
    )
    assert output_shapes(layers, [2, 7]) == [(2, 7, 16), (2, 7, 16), (2, 7, 16), (2, 7, 100)]
    with pytest.raises(LayerError) as info:
        output_shapes(_layers(["TransformerEncoderLayer(8, 2, 16, batch_first=false)"]), [8])
    assert str(info.value) == (
        "layer l0 = TransformerEncoderLayer(8, 2, 16, batch_first=false) doesn't fit the input "
        "[8]: it takes a 3-D [seq, batch, d_model] or a 2-D [seq, d_model] input, not 1-D"
    )
    with pytest.raises(LayerError) as info:
        output_shapes(_layers(["Linear(4, 6)", "TransformerEncoderLayer(8, 2, 16)"]), [2, 3, 4])
    assert "it takes 8 features in the last dim, not 6" in str(info.value)


def test_flatten_and_softmax_dims():
    assert output_shapes(_layers(["Flatten(0, -2)", "Softmax(0)"]), [2, 3, 4]) == [(6, 4), (6, 4)]
    with pytest.raises(LayerError) as info:
        output_shapes(_layers(["Flatten()"]), [5])
    assert "start_dim=1 is out of range for a 1-D input (dims -1 to 0)" in str(info.value)
    with pytest.raises(LayerError) as info:
        output_shapes(_layers(["Flatten(2, -2)"]), [2, 3, 4])
    assert "start_dim=2 comes after end_dim=-2 for a 3-D input" in str(info.value)
    with pytest.raises(LayerError) as info:
        output_shapes(_layers(["Softmax(2)"]), [2, 3])
    assert "dim=2 is out of range for a 2-D input (dims -2 to 1)" in str(info.value)


def test_embedding_only_first():
    with pytest.raises(LayerError) as info:
        output_shapes(_layers(["Linear(8, 4)", "Embedding(10, 8)"]), [2, 8])
    assert info.value.layer == "l1"
    assert "takes token indices, so it can only be the first layer" in str(info.value)


@pytest.mark.parametrize(
    ("texts", "problem"),
    [
        (["Linear(8, 4)", "ReLU()", "Linear(5, 2)"],
         "Linear(5, 2) takes 5 features, but the layer before gives 4"),
        (["Linear(8, 4)", "Embedding(10, 4)"],
         "takes token indices, so it can only be the first layer"),
        (["Conv1d(3, 8, 3)", "SiLU()", "Conv1d(4, 8, 3)"],
         "Conv1d(4, 8, 3) takes 4 channels, but the layer before gives 8"),
        (["Conv2d(3, 8, 3)", "Dropout(0)", "Conv2d(6, 8, 3)"],
         "takes 6 channels, but the layer before gives 8"),
        (["Linear(4, 6)", "TransformerEncoderLayer(8, 2, 16)"],
         "TransformerEncoderLayer(8, 2, 16) takes 8 features, but the layer before gives 6"),
        (["TransformerEncoderLayer(8, 2, 16)", "RMSNorm(6)"],
         "RMSNorm(6) takes 6 features, but the layer before gives 8"),
        (["Linear(4, 3)", "Flatten(-2, -1)", "Linear(5, 2)"], None),  # flattened size unknown
        (["Linear(4, 3)", "Flatten(0, -2)", "Linear(4, 2)"],
         "takes 4 features, but the layer before gives 3"),
        (["Linear(4, 6)", "Conv1d(6, 2, 1)"], None),  # channels are dim -2, not the features
        (["Conv1d(3, 8, 3)", "Linear(8, 2)"], None),  # the last dim is a length: unknown
        (["Conv1d(3, 8, 3)", "Flatten()", "Linear(100, 2)"], None),
        (["Conv2d(3, 8, 3)", "Flatten(-2, -1)", "Conv1d(8, 2, 1)"], None),
        (["Conv2d(3, 8, 3)", "Flatten(-2, -1)", "Conv1d(4, 2, 1)"],
         "takes 4 channels, but the layer before gives 8"),
    ],
)  # fmt: skip
def test_chain_problem_checks_only_what_the_layers_alone_fix(texts, problem):
    found = chain_problem(_layers(texts))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found[1]


def test_input_problem_keeps_its_messages_and_covers_the_new_layers():
    assert parse_layer("Linear(4, 8)", 1).input_problem([2, 5]) == (
        "forward.input_shape [2, 5] ends in 5, but the first layer Linear(4, 8) takes 4 features"
    )
    assert parse_layer("LayerNorm(4)", 1).input_problem([2, 5]) == (
        "forward.input_shape [2, 5] ends in 5, but the first layer LayerNorm(4) normalizes 4 "
        "features"
    )
    assert parse_layer("Conv1d(4, 8, 3)", 1).input_problem([2, 3, 5]) == (
        "forward.input_shape [2, 3, 5] doesn't fit the first layer Conv1d(4, 8, 3): "
        "it takes 4 channels in dim 1, not 3"
    )
    assert parse_layer("Conv2d(4, 8, 3)", 1).input_problem([2, 4, 5, 5]) is None
    assert parse_layer("Embedding(4, 8)", 1).input_problem([2, 3]) is None


def test_features_out_is_none_where_the_last_dim_is_unknown():
    features = None
    for text in ("Linear(4, 6)", "Conv1d(6, 8, 3)"):
        features = parse_layer(text, 1).features_out(features)
    assert features is None
    assert parse_layer("TransformerEncoderLayer(8, 2, 16)", 1).features_out(None) == 8
    assert parse_layer("Softmax(-1)", 1).features_out(5) == 5


def test_this_process_never_imported_torch():
    assert "torch" not in sys.modules
