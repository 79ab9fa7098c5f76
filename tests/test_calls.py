"""The call allowlist: argument checking, JSON arguments, and shape/dtype inference."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.calls import CALLS, CallError, ValueInfo, resolve
from runner.layers import parse_layer
from runner.placements import Placement
from runner.stepgrammar import DType, Expr, Name, Step, parse_step

N = 4
MESH = (4,)
S0, S1 = Placement("shard", 0), Placement("shard", 1)
R, P = Placement("replicate"), Placement("partial")
AVG = Placement("partial", reduce="avg")


def _plain(shape, dtype="float32", grad=False, leaf=True):
    return ValueInfo(shape, dtype, False, None, grad, leaf)


VALUES: dict[str, ValueInfo] = {
    "x": ValueInfo((16, 8), "float32", True, (S0,), True, True),  # a DTensor input
    "u": ValueInfo((16, 8), "float32", True, None, False, True),  # a DTensor, placements untracked
    "pp": ValueInfo((16, 8), "float32", True, (P,), False, True),  # a Partial DTensor
    "y": _plain((16, 8)),
    "t": _plain((16, 8)),
    "p": _plain((16, 8), grad=True),
    "w": _plain((8, 16)),
    "e": _plain((16, 4)),
    "z": _plain((16, 16), grad=True, leaf=False),
    "g": _plain((16, 16)),
    "a": _plain((4, 4)),
    "b": _plain((4, 4)),
    "v": _plain((8,)),
    "weight": _plain((4, 8)),
    "bias": _plain((4,)),
    "loss": _plain((), grad=True, leaf=False),
    "i": _plain((16, 8), "int64"),
    "k": _plain((16, 8), "bool"),
    "h": _plain((16, 8), "float16"),
    "s0": _plain((), "float64"),
    "bt": _plain((2, 16, 8)),
    "c3": _plain((3, 1, 8, 4)),
    "b3": _plain((3, 8, 4)),
    "one": _plain((1, 16, 1)),
    "q": _plain(None),  # shape unknown
    "idx": _plain((16,), "int64"),
}
LAYERS = [("fc1", parse_layer("Linear(8, 4)", N)), ("relu", parse_layer("ReLU()", N))]
LAYERS.append(("fc2", parse_layer("Linear(4, 2)", N)))


def run(text, values=VALUES, mesh=MESH, **options):
    return resolve(parse_step(text), N, values, mesh, **options)


def result(text, **options):
    return run(text, **options).result


def refused(text, **options) -> CallError:
    with pytest.raises(CallError) as info:
        run(text, **options)
    return info.value


# --- every call: a valid step and what it gives ------------------------------------------------

# step -> (shape, dtype, flags): D = DTensor, G = requires grad, L = leaf
VALID = {
    "d = distribute_tensor(t, [Shard(1)])": ((16, 8), "float32", "DL"),
    "d = distribute_tensor(p, [Replicate()], src_data_rank=null)": ((16, 8), "float32", "DGL"),
    "y2 = redistribute(x, [Replicate()])": ((16, 8), "float32", "DG"),
    "y2 = redistribute(x, [Shard(1)], async_op=true)": ((16, 8), "float32", "DG"),
    "y2 = redistribute(pp, [Partial()])": ((16, 8), "float32", "DL"),
    "l = to_local(x)": ((4, 8), "float32", "G"),
    "l = to_local(x, grad_placements=[Shard(0)])": ((4, 8), "float32", "G"),
    "f = full_tensor(x)": ((16, 8), "float32", "G"),
    "f = full_tensor(x, grad_placements=[Replicate()])": ((16, 8), "float32", "G"),
    "d = from_local(t, [Shard(0)])": ((64, 8), "float32", "DL"),
    "d = from_local(p, [Shard(1)], shape=[16, 8*n])": ((16, 32), "float32", "DG"),
    "d = from_local(t, [Partial(avg)], run_check=true)": ((16, 8), "float32", "DL"),
    "m = mark_sharding(t, [0, null])": ((16, 8), "float32", "L"),
    "m = mark_sharding(t, [null, [0]])": ((16, 8), "float32", "L"),
    "c = clear_sharding(p)": ((16, 8), "float32", "GL"),
    "s = add(x, y)": ((16, 8), "float32", "DG"),
    "s = add(y, v)": ((16, 8), "float32", "L"),
    "s = add(v, bt)": ((2, 16, 8), "float32", "L"),
    "s = add(i, 2)": ((16, 8), "int64", "L"),
    "s = add(i, 0.5)": ((16, 8), "float32", "L"),
    "s = add(i, y)": ((16, 8), "float32", "L"),
    "s = add(h, y)": ((16, 8), "float32", "L"),
    "s = add(h, s0)": ((16, 8), "float16", "L"),
    "s = add(i, s0)": ((16, 8), "float64", "L"),
    "s = add(k, 1)": ((16, 8), "int64", "L"),
    "s = add(k, k)": ((16, 8), "bool", "L"),
    "s = sub(p, v)": ((16, 8), "float32", "G"),
    "s = mul(y, n)": ((16, 8), "float32", "L"),
    "s = mul(y, 1e-3)": ((16, 8), "float32", "L"),
    "s = div(i, 2)": ((16, 8), "float32", "L"),
    "s = div(y, y)": ((16, 8), "float32", "L"),
    "s = neg(p)": ((16, 8), "float32", "G"),
    "s = relu(x)": ((16, 8), "float32", "DG"),
    "s = gelu(y)": ((16, 8), "float32", "L"),
    "s = tanh(i)": ((16, 8), "float32", "L"),
    "s = sigmoid(h)": ((16, 8), "float16", "L"),
    "s = exp(y)": ((16, 8), "float32", "L"),
    "s = clone(x)": ((16, 8), "float32", "DG"),
    "s = detach(x)": ((16, 8), "float32", "DL"),
    "s = ones_like(x)": ((16, 8), "float32", "DL"),
    "s = zeros_like(i)": ((16, 8), "int64", "L"),
    "s = to(y, float16)": ((16, 8), "float16", "L"),
    "s = to(p, int64)": ((16, 8), "int64", "L"),
    "s = to(p, float32)": ((16, 8), "float32", "GL"),
    "s = matmul(y, w)": ((16, 16), "float32", "L"),
    "s = matmul(x, w)": ((16, 16), "float32", "DG"),
    "s = matmul(v, v)": ((), "float32", "L"),
    "s = matmul(y, v)": ((16,), "float32", "L"),
    "s = matmul(v, w)": ((16,), "float32", "L"),
    "s = matmul(bt, w)": ((2, 16, 16), "float32", "L"),
    "s = matmul(bt, c3)": ((3, 2, 16, 4), "float32", "L"),
    "s = matmul(v, c3)": ((3, 1, 4), "float32", "L"),
    "s = linear(y, weight)": ((16, 4), "float32", "L"),
    "s = linear(y, weight, bias)": ((16, 4), "float32", "L"),
    "s = linear(bt, weight, bias=bias)": ((2, 16, 4), "float32", "L"),
    "s = linear(y, v)": ((16,), "float32", "L"),
    "s = sum(y)": ((), "float32", "L"),
    "s = sum(p, 0)": ((8,), "float32", "G"),
    "s = sum(y, dim=[0, 1], keepdim=true)": ((1, 1), "float32", "L"),
    "s = sum(y, -1, true)": ((16, 1), "float32", "L"),
    "s = sum(i)": ((), "int64", "L"),
    "s = sum(k, 1)": ((16,), "int64", "L"),
    "s = sum(loss, 0)": ((), "float32", "G"),
    "s = mean(y, -1)": ((16,), "float32", "L"),
    "s = mean(x)": ((), "float32", "DG"),
    "s = amax(y)": ((), "float32", "L"),
    "s = amax(y, keepdim=true)": ((1, 1), "float32", "L"),
    "s = amax(i, 0)": ((8,), "int64", "L"),
    "s = softmax(y, -1)": ((16, 8), "float32", "L"),
    "s = log_softmax(p, dim=0)": ((16, 8), "float32", "G"),
    "s = transpose(y, 0, 1)": ((8, 16), "float32", "L"),
    "s = transpose(bt, 0, -1)": ((8, 16, 2), "float32", "L"),
    "s = t(y)": ((8, 16), "float32", "L"),
    "s = t(v)": ((8,), "float32", "L"),
    "s = permute(bt, [2, 0, 1])": ((8, 2, 16), "float32", "L"),
    "s = permute(bt, [-1, 0, 1])": ((8, 2, 16), "float32", "L"),
    "s = reshape(y, [2*n, -1])": ((8, 16), "float32", "L"),
    "s = reshape(y, [-1])": ((128,), "float32", "L"),
    "s = reshape(y, [n, 4, 8])": ((4, 4, 8), "float32", "L"),
    "s = reshape(loss, [1, 1])": ((1, 1), "float32", "G"),
    "s = flatten(bt)": ((256,), "float32", "L"),
    "s = flatten(bt, start_dim=1)": ((2, 128), "float32", "L"),
    "s = flatten(bt, 0, 1)": ((32, 8), "float32", "L"),
    "s = flatten(loss)": ((1,), "float32", "G"),
    "s = unsqueeze(y, 0)": ((1, 16, 8), "float32", "L"),
    "s = unsqueeze(y, -1)": ((16, 8, 1), "float32", "L"),
    "s = unsqueeze(y, 2)": ((16, 8, 1), "float32", "L"),
    "s = squeeze(one)": ((16,), "float32", "L"),
    "s = squeeze(one, 0)": ((16, 1), "float32", "L"),
    "s = squeeze(one, [0, 2])": ((16,), "float32", "L"),
    "s = squeeze(y, 0)": ((16, 8), "float32", "L"),
    "s = cat([y, t], dim=0)": ((32, 8), "float32", "L"),
    "s = cat([y, e], 1)": ((16, 12), "float32", "L"),
    "s = cat([i, y])": ((32, 8), "float32", "L"),
    "s = cat([x, y, p])": ((48, 8), "float32", "DG"),
}


@pytest.mark.parametrize(("text", "want"), VALID.items(), ids=list(VALID))
def test_valid_steps_infer_the_result(text, want):
    shape, dtype, flags = want
    info = result(text)
    assert info is not None
    assert (info.shape, info.dtype) == (shape, dtype)
    assert (info.dtensor, info.requires_grad, info.leaf) == (
        "D" in flags,
        "G" in flags,
        "L" in flags,
    )


def test_every_call_is_covered():
    made = {parse_step(text).call for text in VALID}
    others = {"sync", "backward", "model", "sgd_step", "zero_grad"}
    assert made | others == set(CALLS)


def test_tracked_placements():
    assert result("d = distribute_tensor(t, [Shard(-1)])").placements == (S1,)
    assert result("d = redistribute(x, [Replicate()])").placements == (R,)
    assert result("d = from_local(t, [Partial(avg)])").placements == (AVG,)
    for text in (
        "s = relu(x)",
        "l = to_local(x)",
        "s = clone(x)",
        "m = mark_sharding(t, [0, null])",
    ):
        assert result(text).placements is None


def test_to_local_of_untracked_placements_has_an_unknown_shape():
    info = result("l = to_local(u)")
    assert info.shape is None and not info.dtensor


def test_unknown_shapes_stay_unknown():
    values = {**VALUES, "l": result("l = to_local(u)")}
    for text in (
        "s = relu(l)",
        "s = add(l, y)",
        "s = matmul(l, w)",
        "s = reshape(l, [4, -1])",
        "s = sum(l, 0)",
        "s = permute(l, [1, 0])",
        "s = squeeze(l)",
        "s = cat([l, y])",
        "s = transpose(l, 0, 1)",
        "s = flatten(l)",
        "s = unsqueeze(l, 0)",
        "s = linear(l, weight)",
        "d = from_local(l, [Shard(0)])",
        "d = distribute_tensor(l, [Shard(5)])",
    ):
        assert run(text, values).result.shape is None, text
    assert run("s = reshape(l, [4, 8])", values).result.shape == (4, 8)
    assert run("s = sum(l)", values).result.shape == ()
    assert run("d = from_local(l, [Shard(0)], shape=[4, 8])", values).result.shape == (4, 8)


# --- the mesh: from_local grows, to_local shrinks (settled point 5) -----------------------------


@pytest.mark.parametrize(
    ("mesh", "placements", "local", "global_"),
    [
        ((2, 2), "[Shard(0), Shard(0)]", (4, 3), (16, 3)),
        ((2, 2), "[Shard(0), Shard(1)]", (4, 3), (8, 6)),
        ((2, 2), "[Replicate(), Shard(-1)]", (4, 3), (4, 6)),
        ((2, 4), "[Partial(), Shard(0)]", (4, 3), (16, 3)),
        ((1, 4), "[Shard(1), Replicate()]", (4, 3), (4, 3)),
    ],
)
def test_from_local_global_shape(mesh, placements, local, global_):
    values = {"piece": _plain(local)}
    info = run(f"d = from_local(piece, {placements})", values, mesh).result
    assert info.shape == global_
    back = run("l = to_local(d)", {"d": info}, mesh).result
    assert back.shape == local


def test_to_local_is_device_0s_piece_with_uneven_chunks():
    values = {"d": ValueInfo((10, 3), "float32", True, (S0,), False, True)}
    assert run("l = to_local(d)", values, (4,)).result.shape == (3, 3)
    values = {"d": ValueInfo((2, 3), "float32", True, (S0, S1), False, True)}
    assert run("l = to_local(d)", values, (2, 2)).result.shape == (1, 2)


# --- JSON arguments ------------------------------------------------------------------------------


def test_json_arguments():
    two_d = {"x": ValueInfo((16, 8), "float32", True, (S0, R), True, True)}
    r = run("s = redistribute(d=x, placements=[Shard(0), Replicate()])", two_d, (2, 2))
    assert (r.args, r.kwargs) == ([{"value": "x"}, [["shard", 0], ["replicate"]]], {})
    r = run("s = sum(y, 0, true)")
    assert (r.args, r.kwargs) == ([{"value": "y"}], {"dim": 0, "keepdim": True})
    r = run("s = reshape(y, shape=[2*n, -1])")
    assert r.args == [{"value": "y"}, [8, -1]]
    r = run("s = to(y, float16)")
    assert r.args == [{"value": "y"}, "float16"]
    r = run("s = mul(y, n/2)")
    assert r.args == [{"value": "y"}, 2]
    r = run("s = cat([y, t], dim=-1)")
    assert (r.args, r.kwargs) == ([[{"value": "y"}, {"value": "t"}]], {"dim": -1})
    r = run("d = from_local(t, [Partial()], shape=[4*n, 8], run_check=false)")
    assert r.args == [{"value": "t"}, [["partial"]]]
    assert r.kwargs == {"shape": [16, 8], "run_check": False}
    r = run("d = distribute_tensor(t, [Shard(-1)], src_data_rank=null)")
    assert (r.args[1], r.kwargs) == ([["shard", -1]], {"src_data_rank": None})
    r = run("s = linear(y, weight, bias)")
    assert r.kwargs == {"bias": {"value": "bias"}}
    r = run("backward(z, g)")
    assert (r.args, r.kwargs) == ([{"value": "z"}], {"grad": {"value": "g"}})


def test_engines():
    assert run("m = mark_sharding(t, [0, null])").engines == frozenset({"xla"})
    assert run("c = clear_sharding(t)").engines == frozenset({"xla"})
    r = run("sync()")
    assert (r.engines, r.result, r.args, r.kwargs) == (frozenset({"xla"}), None, [], {})
    assert run("s = relu(x)").engines is None
    assert run("s = redistribute(x, [Replicate()])").engines is None


# --- mark_sharding's spec -------------------------------------------------------------------------


def test_mark_sharding_with_axis_names():
    names = ("dp", "tp")
    r = run("m = mark_sharding(t, [dp, tp])", mesh=(2, 2), mesh_names=names)
    assert r.args == [{"value": "t"}, ["dp", "tp"]]
    r = run("m = mark_sharding(bt, [[dp, tp], null, null])", mesh=(2, 2), mesh_names=names)
    assert r.args[1] == [["dp", "tp"], None, None]
    err = refused("m = mark_sharding(t, [dp, tpp])", mesh=(2, 2), mesh_names=names)
    assert "'tpp' is not a mesh axis; did you mean 'tp'?" in err.message
    assert err.arg == 1
    err = refused("m = mark_sharding(t, [dp, dp])", mesh=(2, 2), mesh_names=names)
    assert "mesh axis dp is used twice" in err.message
    err = refused("m = mark_sharding(t, [dp, null])", mesh=(2, 2))
    assert "the mesh has no names" in err.message


@pytest.mark.parametrize(
    ("text", "mesh", "words"),
    [
        ("m = mark_sharding(t, [0])", (4,), "spec has 1 entry, but t has 2 dims"),
        ("m = mark_sharding(t, [0, null, null])", (4,), "spec has 3 entries"),
        ("m = mark_sharding(t, [1, null])", (4,), "mesh axis 1 doesn't exist"),
        ("m = mark_sharding(t, [-1, null])", (4,), "mesh axis -1 doesn't exist"),
        ("m = mark_sharding(t, [0, 0])", (2, 2), "mesh axis 0 is used twice"),
        ("m = mark_sharding(t, [[0, 1], 1])", (2, 2), "mesh axis 1 is used twice"),
        ("m = mark_sharding(t, [Shard(0), null])", (4,), "must be a list with one entry per"),
        ("m = mark_sharding(t, 0)", (4,), "must be a list with one entry per tensor dim"),
    ],
)
def test_mark_sharding_refuses(text, mesh, words):
    err = refused(text, mesh=mesh)
    assert words in err.message
    assert err.arg == 1


# --- autograd --------------------------------------------------------------------------------------


def test_backward_defines_grads_of_leaves_that_require_grad():
    r = run("backward(loss)")
    assert r.result is None
    assert set(r.defines) == {"x.grad", "p.grad"}
    assert r.defines["x.grad"] == ValueInfo((16, 8), "float32", True, None, False, True)
    assert r.defines["p.grad"] == ValueInfo((16, 8), "float32", False, None, False, True)
    r = run("backward(z, grad=g)")
    assert set(r.defines) == {"x.grad", "p.grad"}


def test_grads_are_values_after_backward():
    values = {**VALUES, **run("backward(loss)").defines}
    assert run("s = mul(x.grad, 2)", values).result.shape == (16, 8)
    err = refused("s = clone(x.grad)")
    assert "'x.grad' exists only after backward(...)" in err.message
    err = refused("s = clone(y.grad)")
    assert "y does not require grad, so it never gets y.grad" in err.message


@pytest.mark.parametrize(
    ("text", "words", "arg"),
    [
        ("backward(y)", "y does not require grad", 0),
        ("backward(y)", "element 0 of tensors does not require grad", 0),
        ("backward(z)", "backward needs a single number, but z (shape [16, 16]) is not one", 0),
        ("backward(z)", "such as loss = sum(z), or pass grad=g with g = ones_like(z)", 0),
        ("backward(z, grad=y)", "grad y (shape [16, 8]) must have the shape of z", "grad"),
        ("backward(z, y)", "must have the shape of z", 1),
        ("backward(loss, grad=2)", "backward's grad= must be a value name or null", "grad"),
    ],
)
def test_backward_refuses(text, words, arg):
    err = refused(text)
    assert words in err.message
    assert err.arg == arg


# --- modules ---------------------------------------------------------------------------------------


def test_module_calls():
    values = {"inp": _plain((16, 8)), "idx": _plain((16,), "int64")}
    assert run("o = model(inp)", values, layers=LAYERS).result == ValueInfo(
        (16, 2), "float32", True, None, True, False
    )
    embed = [("emb", parse_layer("Embedding(10, 6)", N))]
    assert run("o = model(idx)", values, layers=embed).result.shape == (16, 6)
    assert run("sgd_step(0.1)", values, layers=LAYERS).result is None
    assert run("zero_grad()", values, layers=LAYERS).result is None
    assert "this case has none" in refused("o = model(inp)", values=values).message
    assert (
        "lr=0 must be more than 0" in refused("sgd_step(0)", values=values, layers=LAYERS).message
    )
    err = refused("o = model(idx)", values=values, layers=LAYERS)
    assert "ends in 16, but the first layer Linear(8, 4) takes 8" in err.message
    assert "takes token indices" in refused("o = model(inp)", values=values, layers=embed).message


# --- errors: plain words, located --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words", "arg"),
    [
        # unknown calls
        (
            "s = foo(x)",
            "'foo' is not a call steps can make; the calls are: distribute_tensor",
            None,
        ),
        ("s = redistibute(x)", "did you mean 'redistribute'? the calls are", None),
        ("s = Relu(x)", "did you mean 'relu'?", None),
        # argument counts
        (
            "s = redistribute(x)",
            "redistribute needs 2 arguments (d, placements), but placements is missing; write "
            "redistribute(d, placements, async_op=false), for example: "
            "y = redistribute(x, [Replicate()])",
            None,
        ),
        ("s = matmul()", "a, b are missing", None),
        ("s = relu(x, y)", "relu takes at most 1 argument in order, but this step gives 2", 1),
        ("sync(x)", "sync takes no arguments in order", 0),
        (
            "s = to_local(x, [Shard(0)])",
            "grad_placements is given by name, such as grad_placements=...",
            1,
        ),
        ("s = redistribute(x, [Replicate()], true)", "async_op is given by name", 2),
        # argument kinds
        (
            "s = redistribute(x, y)",
            "redistribute's 2nd argument must be placements such as [Replicate()], not the value "
            "name y",
            1,
        ),
        ("s = redistribute(x, Replicate())", "put it in a list: [Replicate()]", 1),
        ("s = redistribute(x, [Replicate(), 0])", "must be placements", 1),
        ("s = to(x, 3)", "to's 2nd argument must be a dtype: float32", 1),
        (
            "s = sum(x, keepdim=1)",
            "sum's keepdim= must be true or false, not the number 1",
            "keepdim",
        ),
        ("s = cat(x)", "put it in a list: [x]", 0),
        ("s = cat([])", "list at least one value", 0),
        (
            "s = add(2, x)",
            "add's 1st argument must be a value name, such as x, not the number 2",
            0,
        ),
        ("s = add(x, [Shard(0)])", "to distribute a value, use distribute_tensor", 1),
        ("s = add(x, true)", "not true", 1),
        ("s = reshape(y, [2.5])", "must be a list of sizes, such as [2*n, -1]", 1),
        ("s = reshape(y, 8)", "not the number 8", 1),
        ("s = sum(y, float32)", "not the dtype float32", 1),
        ("s = transpose(y, 0, n/4)", "", None),
        # keywords
        (
            "s = sum(x, dims=0)",
            "sum has no keyword 'dims'; did you mean 'dim'? its keywords are dim, keepdim",
            "dims",
        ),
        (
            "s = relu(x, inplace=true)",
            "relu has no keyword 'inplace'; it has no keywords",
            "inplace",
        ),
        ("s = sum(x, 0, dim=1)", "sum's dim is given twice", "dim"),
        # value names
        ("s = relu(yy)", "'yy' is not a value here; did you mean 'y'? values so far: x, u", 0),
        ("s = cat([y, later1])", "'later1' is made later, at step 4; use it after that", 0),
        ("s = linear(y, weight, bias=later1)", "made later, at step 4", "bias"),
        # DTensor rules
        (
            "s = redistribute(x, [Replicate(), Replicate()])",
            "the mesh [4] has 1 axis, so placements needs 1 placement, one per axis, not 2",
            1,
        ),
        (
            "s = distribute_tensor(t, [Shard(2)])",
            "Shard(2) is out of range for t, which has 2 dims (shape [16, 8]); use Shard(0) to "
            "Shard(1), or Shard(-1) for the last",
            1,
        ),
        ("s = distribute_tensor(t, [Shard(-3)])", "Shard(-3) is out of range", 1),
        (
            "s = from_local(v, placements=[Shard(1)])",
            "Shard(1) is out of range for v",
            "placements",
        ),
        ("s = to_local(x, grad_placements=[Shard(4)])", "out of range", "grad_placements"),
        ("s = distribute_tensor(t, [Partial()])", "can't use a Partial placement", 1),
        ("s = distribute_tensor(x, [Shard(0)])", "x is already distributed (a DTensor)", 0),
        ("s = distribute_tensor(t, [Shard(0)], src_data_rank=4)", "not a device", "src_data_rank"),
        ("s = redistribute(y, [Replicate()])", "redistribute needs a distributed value", 0),
        ("s = redistribute(x, [Partial()])", "redistribute can't make Partial()", 1),
        ("s = redistribute(pp, [Partial(avg)])", "can't make Partial(avg)", 1),
        ("s = to_local(y)", "such as d = distribute_tensor(y, [Replicate()])", 0),
        ("s = full_tensor(t)", "needs a distributed value", 0),
        ("s = from_local(x, [Shard(0)])", "take its piece first, such as p = to_local(x)", 0),
        (
            "s = from_local(t, [Shard(0)], shape=[16])",
            "shape= has 1 sizes, but t has 2 dims",
            "shape",
        ),
        ("s = from_local(t, [Shard(0)], shape=[16, -1])", "has a negative size", "shape"),
        # shapes
        (
            "s = matmul(y, e)",
            "matmul: the sizes don't fit: [16, 8] @ [16, 4] needs the last size of the first (8) "
            "to equal the first size of the second (16)",
            1,
        ),
        ("s = matmul(y, y)", "needs the last size of the first (8)", 1),
        ("s = matmul(w, v)", "to equal the size of the second (8)", 1),
        ("s = matmul(bt, bt)", "the second-to-last size of the second (16)", 1),
        ("s = matmul(bt, b3)", "have batch sizes [2] and [3]", 1),
        ("s = matmul(loss, y)", "loss is a single number (shape []); use mul(loss, y)", 0),
        ("s = matmul(y, h)", "y is float32 and h is float16; convert one first", 1),
        (
            "s = add(y, e)",
            "add: the sizes don't fit: [16, 8] and [16, 4] can't be combined; from the right, "
            "each pair of sizes must be equal or one of them 1 (8 and 4 are neither)",
            1,
        ),
        ("s = linear(y, w)", "x [16, 8] ends in 8, but the weight [8, 16] takes 16", 1),
        ("s = linear(y, weight, bias=v)", "the bias [8] doesn't fit the result [16, 4]", "bias"),
        ("s = linear(loss, weight)", "linear needs x with at least one dim", 0),
        ("s = reshape(y, [3, 5])", "y (shape [16, 8]) has 128 elements, but [3, 5] holds 15", 1),
        ("s = reshape(y, [3, -1])", "the other sizes multiply to 3, which doesn't divide 128", 1),
        ("s = reshape(y, [-1, -1])", "only one size may be -1", 1),
        ("s = reshape(y, [-2, -64])", "has a negative size", 1),
        ("s = reshape(y, [n/3, -1])", "'n/3' is not a whole number when n=4", 1),
        ("s = reshape(y, [n/(n-4), -1])", "divides by zero when n=4", 1),
        ("s = sum(y, 2)", "dim 2 is out of range for y, which has 2 dims (shape [16, 8])", 1),
        ("s = sum(y, [0, -2])", "dim lists the same dim twice", 1),
        ("s = sum(y, dim=[])", "leave dim out to reduce over every dim", "dim"),
        ("s = softmax(y, 5)", "dim 5 is out of range", 1),
        ("s = unsqueeze(y, 3)", "use 0 to 2, or -1 for the last", 1),
        ("s = transpose(y, 0, 2)", "out of range", 2),
        ("s = sum(loss, 1)", "loss, which has no dims (a single number)", 1),
        ("s = t(bt)", "t works on tensors of at most 2 dims", 0),
        ("s = permute(bt, [0, 1])", "dims lists 2 dims, but bt (shape [2, 16, 8]) has 3", 1),
        ("s = permute(bt, [0, 0, 1])", "the same dim twice", 1),
        ("s = flatten(bt, 2, 1)", "start_dim (2) comes after end_dim (1)", 1),
        ("s = cat([y, e], 0)", "must match in every dim except dim 0", 0),
        ("s = cat([y, bt])", "must match in every dim", 0),
        ("s = cat([loss, loss])", "cat can't join single numbers", 0),
        ("s = squeeze(y, 2)", "dim 2 is out of range", 1),
        # dtypes
        ("s = mean(i)", "mean needs a floating-point tensor", 0),
        ("s = gelu(i)", "convert it first, such as f = to(i, float32)", 0),
        ("s = softmax(k, 0)", "but k is bool", 0),
        ("s = neg(k)", "neg doesn't work on a bool tensor", 0),
        ("s = sub(k, k)", "sub doesn't work on bool tensors", None),
    ],
)
def test_refused_steps(text, words, arg):
    later = {"later1": 4}
    if words == "":  # an expression is fine where a dim goes
        assert result(text, later=later).shape == (8, 16)
        return
    err = refused(text, later=later)
    assert words in err.message
    assert err.arg == arg


def test_no_values_yet():
    err = refused("s = relu(x)", values={})
    assert err.message == "'x' is not a value here; no values are made yet"


# --- lenient: a step expected to raise ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "s = redistribute(x, [Partial()])",
        "s = distribute_tensor(t, [Shard(5), Replicate()])",
        "s = distribute_tensor(x, [Partial()])",
        "s = redistribute(y, [Replicate()])",
        "s = matmul(y, e)",
        "s = reshape(y, [3, 5])",
        "backward(y)",
        "s = to_local(t)",
        "m = mark_sharding(t, [7, 7, 7])",
    ],
)
def test_lenient_checks_only_names_counts_and_kinds(text):
    r = run(text, lenient=True)
    assert r.result is None and r.defines == {}
    assert r.call == parse_step(text).call


def test_lenient_still_checks_names_counts_kinds_and_sizes():
    assert (
        "not a value here" in refused("s = redistribute(nope, [Partial()])", lenient=True).message
    )
    assert "needs 2 arguments" in refused("s = redistribute(x)", lenient=True).message
    assert "must be placements" in refused("s = redistribute(x, y)", lenient=True).message
    assert "not a whole number" in refused("s = reshape(y, [n/3])", lenient=True).message
    r = run("s = redistribute(x, [Partial(avg)])", lenient=True)
    assert r.args == [{"value": "x"}, [["partial", "avg"]]]


# --- what the editor shows -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CALLS))
def test_call_specs_read_well(name):
    spec = CALLS[name]
    assert spec.name == name
    signature = parse_step(spec.signature)  # a signature reads like a step
    assert signature.call == name
    assert spec.doc[0].isupper() and spec.doc.endswith(".")
    assert len(spec.doc) < 200
    example = parse_step(spec.example)
    assert example.call == name
    values = {
        **VALUES,
        "d": VALUES["x"],
        "inp": _plain((16, 8)),
    }
    options = {"layers": LAYERS} if name in ("model", "sgd_step", "zero_grad") else {}
    if name == "model":
        values["x"] = _plain((16, 8))
    r = resolve(example, N, values, MESH, **options)
    assert r.call == name
    assert (r.result is None) == (name in ("sync", "backward", "sgd_step", "zero_grad"))
    assert (r.engines is not None) == (name in ("mark_sharding", "clear_sharding", "sync"))


# --- fuzz: any parsed step gives a Resolved or a CallError, nothing else -------------------------

_ARG = st.recursive(
    st.one_of(
        st.sampled_from(sorted(VALUES)).map(Name),
        st.sampled_from(["nope", "x.grad", "dp"]).map(Name),
        st.sampled_from(["n", "2*n", "n/3", "n-4", "-n", "n/(n-4)"]).map(Expr),
        st.sampled_from(["float32", "int64", "bool"]).map(DType),
        st.sampled_from([S0, S1, R, P, AVG, Placement("shard", -3), Placement("shard", 7)]),
        st.integers(-5, 300),
        st.floats(-2, 2, allow_nan=False),
        st.booleans(),
        st.none(),
    ),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)
_KEYS = st.sampled_from(
    ["dim", "keepdim", "grad", "bias", "shape", "src_data_rank", "grad_placements", "zz"]
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(CALLS)),
    st.lists(_ARG, max_size=4),
    st.dictionaries(_KEYS, _ARG, max_size=2),
    st.sampled_from([(4,), (2, 2), (1, 4)]),
    st.booleans(),
)
def test_resolve_raises_only_call_errors(call, args, kwargs, mesh, lenient):
    step = Step("s", call, tuple(args), kwargs, "")
    try:
        r = resolve(step, N, VALUES, mesh, lenient=lenient, layers=LAYERS, mesh_names=("dp", "tp"))
    except CallError as exc:
        assert exc.message
        return
    assert r.call == call
    json.dumps([r.args, r.kwargs])
