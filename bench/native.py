"""The library's cases on the native engine versus the same cases hand-written on DTensorOpTestBase.

Target (issue 10): shardspec's native engine runs every case of specs/ at n=4
(`pytest specs --engines native --devices 4`) in at most 1.2x the wall time of the same
cases hand-written on torch's threaded test base (`DTensorOpTestBase`, world size 4, one
process), side by side in one run.

The anchor is generated from the library itself, so it covers exactly the same cases: specs/
is loaded and expanded with shardspec's own pure-Python pipeline (`runner.spec.read`,
`runner.expand.expand(case, "native", 4)`, `runner.verdict.verdict`), and each variant's
request becomes one test method that does the same work by hand, in the style of torch's own
DTensor tests (every rank runs the method body in its thread):

- "tensor": the seeded input, `distribute_tensor` on a `DeviceMesh("cpu")`, the type, global
  shape, placements, dtype, requires_grad and is_leaf, and this rank's piece: its shape and
  offset from `compute_local_shape_and_global_offset`, its values against the input's slice;
  the declared local shapes; an expected error is asserted to raise.
- "steps": the seeded inputs, the steps with the DTensor API and torch ops, and the same
  steps on plain CPU tensors (the reference). Every value shardspec reads is read at the same
  point: `full_tensor()`, this rank's piece against its slice, `assert_close` against the
  reference, the asked-for and declared placements and the other declared expectations.
  A step that must raise is asserted to raise.
- "module": the same `nn.Sequential` from the same seed, `distribute_module` with the same
  placements, every parameter's placements and piece, and a forward on a replicated input
  against the CPU module's (`assert_close`).

Variants the anchor's writer can't express yet (module cases with steps: `model()`,
`sgd_step`) are left out of both sides and listed under ``not_in_anchor``.

Variants shardspec skips (an XLA-only call, `requires`) are `unittest.skip`ped tests; the
strict xfail for engine native is an `expectedFailure`. The anchor uses small helpers of its
own and none of shardspec's worker, engine or interpreter (that is what is measured). Like
the native engine, it clears DTensor's two per-mesh caches between tests (new rank threads
reuse old thread ids; DESIGN.md, issue 10), and distributes step inputs without a collective
(`src_data_rank=None`), as the engine does.

    .venv/bin/python bench/native.py                  # measure (3 runs each side)
    .venv/bin/python bench/native.py --repeat 1       # a quick check
    .venv/bin/python bench/native.py --write DIR      # only write the anchor (DIR/test_anchor.py)

Both sides run as whole pytest subprocesses, alternately, and their wall times are compared
(medians). Prints one JSON line; exits 1 when the ratio is over target, a run failed, or the
two sides did not count the same outcomes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import REPO, clean_env, counts, median, ratio, run, summary_line

sys.path.insert(0, str(REPO))

from runner.expand import Variant, expand
from runner.placements import parse as parse_placement
from runner.spec import SUFFIXES
from runner.spec import read as read_spec
from runner.verdict import verdict

TARGET_RATIO = 1.2
DEVICES = 4
ENGINE = "native"


class CantWrite(Exception):
    """The generator has no hand-written form for something a case does."""


# --- The anchor's fixed part -------------------------------------------------------------

HEAD = '''\
"""The hand-written anchor of bench/native.py: specs/ at n=4 on DTensorOpTestBase.

Generated from the spec library by bench/native.py: one test method per case variant that
shardspec's native engine runs (skips and the expected failure included).
"""
import builtins
import contextlib
import copy
import re
import threading
import unittest
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import (
    DeviceMesh,
    DTensor,
    Partial,
    Replicate,
    Shard,
    distribute_module,
    distribute_tensor,
)
from torch.distributed.tensor._redistribute import _gen_transform_infos
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.testing._internal.distributed._tensor.common_dtensor import DTensorOpTestBase

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
# The ranks share torch's global generator: modules are built from their seed one at a time.
BUILD_LOCK = threading.Lock()


def make_input(shape, dtype, seed):
    """Random values from the seed, never all zeros (the library's inputs)."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == "bool":
        x = torch.randint(0, 2, shape, generator=gen).bool()
        if x.numel():
            x.view(-1)[0] = True
        return x
    if dtype.startswith("int"):
        return torch.randint(1, 1000, shape, generator=gen, dtype=DTYPES[dtype])
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    return torch.where(x == 0, torch.ones_like(x), x).to(DTYPES[dtype])


def mesh_of(shape, names=None):
    ids = torch.arange(__DEVICES__).reshape(shape)
    return DeviceMesh("cpu", ids, mesh_dim_names=names)


def local_slices(dt):
    """Where this rank's piece sits in the global value, by DTensor's layout."""
    shape, offset = compute_local_shape_and_global_offset(dt.shape, dt.device_mesh, dt.placements)
    return tuple(slice(o, o + s) for o, s in zip(offset, shape))


def check_piece(label, dt, whole):
    """This rank's piece: the layout's shape, and the slice's values (a partial piece holds
    a share of the value, not a slice: its values are not compared)."""
    local = dt.to_local().detach()
    index = local_slices(dt)
    assert list(local.shape) == [s.stop - s.start for s in index], f"{label}: piece shape"
    if not any(isinstance(p, Partial) for p in dt.placements):
        assert torch.equal(local, whole[index]), f"{label}: piece values"
    return local


def check_value(rank, label, value, ref, rtol, atol, placements=None, required=False, **declared):
    """Read a value: full_tensor, this rank's piece, the reference, declared expectations.
    Returns its global data (None when it does not exist)."""
    if value is None:
        assert not required, f"{label} does not exist"
        return None
    if isinstance(value, DTensor):
        if placements is not None:
            assert tuple(value.placements) == tuple(placements), f"{label}: {value.placements}"
        whole = value.full_tensor().detach()
        local = check_piece(label, value, whole)
    else:
        whole = value.detach()
        local = whole
    if ref is not None:
        torch.testing.assert_close(
            whole, ref.detach(), rtol=rtol, atol=atol, equal_nan=True, check_dtype=False,
            msg=lambda m: f"{label} against the reference: {m}",
        )
    # Declared expectations are device 0's view (a to_local piece differs from rank to rank).
    for key, want in declared.items() if rank == 0 else ():
        if key == "shape":
            assert list(value.shape) == want, f"{label}: shape {list(value.shape)}"
        elif key == "dtype":
            assert str(value.dtype).removeprefix("torch.") == want, f"{label}: {value.dtype}"
        elif key == "type":
            assert type(value).__name__ == want, f"{label}: a {type(value).__name__}"
        elif key == "instance_of":
            assert want in [c.__name__ for c in type(value).__mro__], f"{label}: not a {want}"
        elif key == "requires_grad":
            assert value.requires_grad is want, f"{label}: requires_grad"
        elif key == "is_leaf":
            assert value.is_leaf is want, f"{label}: is_leaf"
        elif key == "local_shape":
            assert list(local.shape) == want, f"{label}: device 0 holds {list(local.shape)}"
        elif key != "local_shapes":
            raise AssertionError(f"{label}: unknown expectation {key}")
    if "local_shapes" in declared:
        want = declared["local_shapes"][rank]
        assert list(local.shape) == want, f"{label}: rank {rank} holds {list(local.shape)}"
    return whole


def same(a, b):
    return a is not None and b is not None and a.shape == b.shape and a.dtype == b.dtype and bool(
        torch.equal(a, b)
    )


@contextlib.contextmanager
def raises(type_name, match):
    """The block raises a type_name (or a subclass, by name) whose message matches."""
    try:
        yield
    except Exception as exc:
        names = [c.__name__ for c in type(exc).__mro__]
        assert type_name in names, f"raised {type(exc).__name__}, not {type_name}: {exc}"
        assert not match or re.search(match, str(exc)), f"the message says: {exc}"
    else:
        raise AssertionError(f"no {type_name} was raised")


def from_local_reference(t, placements, mesh_shape, shape):
    """The global value DTensor.from_local makes when every rank holds t (None: unknown)."""
    out = t
    for size, placement in zip(mesh_shape, placements):
        if isinstance(placement, Shard):
            out = torch.cat([out] * size, dim=placement.dim)
        elif isinstance(placement, Partial) and placement.reduce_op == "sum":
            out = out * size
    if shape is not None and list(out.shape) != list(shape):
        return None
    return out


def contiguous_stride(shape):
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


class TestLibrary(DTensorOpTestBase):
    @property
    def world_size(self):
        return __DEVICES__

    @property
    def device_type(self):
        return "cpu"

    def setUp(self):
        # DTensor keys its redistribute plans and sharding decisions by mesh, and a mesh's key
        # holds thread ids, which each test's new rank threads reuse for other ranks.
        _gen_transform_infos.cache_clear()
        super().setUp()

    def perThreadSetUp(self):
        super().perThreadSetUp()
        DTensor._op_dispatcher.sharding_propagator.propagate_op_sharding.cache.cache_clear()
'''


# --- Writing one test method per variant -------------------------------------------------


def placement_code(spec: list) -> str:
    if spec[0] == "shard":
        return f"Shard({spec[1]})"
    if spec[0] == "partial":
        return "Partial()" if len(spec) == 1 or spec[1] == "sum" else f"Partial({spec[1]!r})"
    if spec[0] == "replicate":
        return "Replicate()"
    raise CantWrite(f"placement {spec}")


def placements_code(specs: list) -> str:
    return "[" + ", ".join(placement_code(p) for p in specs) + "]"


def declared_placements_code(texts: list) -> str:
    return placements_code([parse_placement(t).as_json() for t in texts])


def ident(text: str) -> str:
    return re.sub(r"\W", "_", text)


def mesh_code(mesh: list, names: list | None = None) -> str:
    return f"mesh_of({list(mesh)!r}, {tuple(names)!r})" if names else f"mesh_of({list(mesh)!r})"


@dataclass
class Method:
    name: str
    body: list[str] = field(default_factory=list)
    decorator: str | None = None

    def line(self, text: str = "", depth: int = 0) -> None:
        self.body.append("    " * depth + text if text else "")

    def render(self) -> str:
        out = []
        if self.decorator:
            out.append(f"    {self.decorator}")
        out.append(f"    def {self.name}(self):")
        out.extend(f"        {line}" if line else "" for line in self.body or ["pass"])
        return "\n".join(out)


def _error_of(variant: Variant) -> dict | None:
    found = variant.expect("error")
    return dict(found.value) if found is not None else None


def write_tensor(m: Method, variant: Variant) -> None:
    req = variant.request
    places = placements_code(req["placements"])
    m.line(f"mesh = {mesh_code(req['mesh'])}")
    m.line(f"x = make_input({req['shape']!r}, {req['dtype']!r}, {req['seed']})")
    if req["requires_grad"]:
        m.line("x.requires_grad_(True)")
    error = _error_of(variant)
    if error is not None:
        m.line(f"with raises({error['type']!r}, {error.get('match')!r}):")
        m.line(f"distribute_tensor(x, mesh, {places})", 1)
        return
    rg = bool(req["requires_grad"])
    m.line(f"dt = distribute_tensor(x, mesh, {places})")
    m.line("assert type(dt) is DTensor")
    m.line(f"assert tuple(dt.placements) == tuple({places}), dt.placements")
    m.line(f"assert list(dt.shape) == {req['shape']!r} and dt.dtype == x.dtype")
    # distribute_tensor makes a new leaf that requires grad when its input does.
    m.line(f"assert dt.requires_grad is {rg} and dt.is_leaf")
    m.line("local = check_piece('dt', dt, x.detach())")
    for expect in variant.expects:
        if expect.name == "global_shape":
            m.line(f"assert list(dt.shape) == {expect.value!r}")
        elif expect.name == "local_shape":
            m.line("if self.rank == 0:  # device 0's piece")
            m.line(f"assert list(local.shape) == {expect.value!r}", 1)
        elif expect.name == "local_shapes":
            m.line(f"assert list(local.shape) == {expect.value!r}[self.rank]")
        elif expect.name in ("sharding_spec", "padded_local_shape"):
            continue  # XLA only (settled point 12)
        else:
            raise CantWrite(f"tensor expectation {expect.name}")


LAYER_CODE = {
    "Linear": lambda s, bias: f"nn.Linear({s[0]}, {s[1]}, bias={bias})",
    "ReLU": lambda s, bias: "nn.ReLU()",
    "GELU": lambda s, bias: "nn.GELU()",
    "Tanh": lambda s, bias: "nn.Tanh()",
    "Sigmoid": lambda s, bias: "nn.Sigmoid()",
    "LayerNorm": lambda s, bias: f"nn.LayerNorm({s[0]})",
    "Embedding": lambda s, bias: f"nn.Embedding({s[0]}, {s[1]})",
}


def write_module(m: Method, variant: Variant) -> None:
    req = variant.request
    mesh = req["mesh"]
    m.line(f"mesh = {mesh_code(mesh)}")
    m.line("with BUILD_LOCK:")
    m.line(f"torch.manual_seed({req['seed']})", 1)
    m.line("model = nn.Sequential(OrderedDict([", 1)
    for name, layer in req["layers"]:
        if layer["kind"] not in LAYER_CODE:
            raise CantWrite(f"layer {layer['kind']}")
        code = LAYER_CODE[layer["kind"]](layer["sizes"], layer["bias"])
        m.line(f"({name!r}, {code}),", 2)
    m.line("]))", 1)
    m.line("reference = copy.deepcopy(model)")
    m.line("placed = {")
    for name, places in req["params"].items():
        m.line(f"{name!r}: {placements_code(places)},", 1)
    m.line("}")
    m.line("")
    m.line("def partition(module_name, module, device_mesh):")
    m.line("for param_name, param in list(module.named_parameters(recurse=False)):", 1)
    m.line('full = f"{module_name}.{param_name}" if module_name else param_name', 2)
    m.line("if full in placed:", 2)
    m.line("dist = distribute_tensor(param, device_mesh, placed[full])", 3)
    m.line("module.register_parameter(param_name, nn.Parameter(dist))", 3)
    m.line("")
    error = _error_of(variant)
    if error is not None:
        m.line(f"with raises({error['type']!r}, {error.get('match')!r}):")
        m.line("distribute_module(model, mesh, partition)", 1)
        return
    m.line("sharded = distribute_module(model, mesh, partition)")
    m.line("originals = dict(reference.named_parameters())")
    m.line("for name, param in sharded.named_parameters():")
    # distribute_module replicates every parameter that no rule placed.
    m.line("assert isinstance(param, DTensor), name", 1)
    m.line(f"want = placed.get(name, [Replicate()] * {len(mesh)})", 1)
    m.line("assert tuple(param.placements) == tuple(want), (name, param.placements)", 1)
    m.line("check_piece(name, param, originals[name].detach())", 1)
    forward = req.get("forward")
    if forward:
        tolerance = variant.expect("forward").value
        first = req["layers"][0][1]
        m.line(f"gen = torch.Generator().manual_seed({req['seed'] + 1})")
        if first["kind"] == "Embedding":
            m.line(
                f"x_cpu = torch.randint(0, {first['sizes'][0]}, {forward['input_shape']!r}, "
                "generator=gen)"
            )
        else:
            m.line(f"x_cpu = torch.randn({forward['input_shape']!r}, generator=gen)")
        replicated = ", ".join(["Replicate()"] * len(mesh))
        m.line(f"x = distribute_tensor(x_cpu, mesh, [{replicated}], src_data_rank=None)")
        m.line("with torch.no_grad():")
        m.line("got = sharded(x)", 1)
        m.line("want = reference(x_cpu)", 1)
        m.line("got = got.full_tensor() if isinstance(got, DTensor) else got")
        m.line(
            f"torch.testing.assert_close(got, want, rtol={tolerance['rtol']!r}, "
            f"atol={tolerance['atol']!r})"
        )
    if any(e.name in ("unsharded_params", "replicated_params") for e in variant.expects):
        m.line("params = dict(sharded.named_parameters())")
    for expect in variant.expects:
        names = expect.value
        if expect.name == "sharded_params":
            continue  # placed by a rule: their placements and pieces are checked above
        if expect.name == "unsharded_params":
            m.line(f"for name in {names!r}:")
            m.line(
                f"assert name not in placed and params[name].placements == "
                f"({', '.join(['Replicate()'] * len(mesh))},)",
                1,
            )
        elif expect.name == "replicated_params":
            m.line(f"for name in {names!r}:")
            m.line("assert all(isinstance(p, Replicate) for p in params[name].placements)", 1)
        elif expect.name == "forward" or expect.name.startswith("sharding_spec"):
            continue  # the forward is above; sharding strings are XLA only
        else:
            raise CantWrite(f"module expectation {expect.name}")


TORCH_OPS = {
    "add", "sub", "mul", "div", "neg", "relu", "tanh", "sigmoid", "exp", "matmul",
    "transpose", "t", "permute", "reshape", "unsqueeze", "clone", "ones_like", "zeros_like",
}  # fmt: skip
FUNCTIONAL_OPS = {"gelu", "linear"}
VALUE_CHECKS = ("shape", "dtype", "type", "instance_of", "requires_grad", "is_leaf",
                "local_shape", "local_shapes")  # fmt: skip
XLA_ONLY = ("sharding_spec", "sharding_type", "padded_local_shape")


class Steps:
    """Writes a steps case: each step on DTensors (v_NAME) and on CPU tensors (r_NAME)."""

    def __init__(self, m: Method, variant: Variant):
        self.m = m
        self.variant = variant
        self.req = variant.request
        self.mesh = list(self.req["mesh"])
        self.reference = bool(self.req["reference"]) and variant.checks.get("reference", True)
        self.per_device: set[str] = set()  # values every rank holds its own share of
        self.maybe_unknown: set[str] = set()  # reference values that may be None at run time
        self.unknown: set[str] = set()  # reference values that can't be known
        self.grads_known = True

    # names
    def var(self, name: str, side: str) -> str:
        base, dot, rest = name.partition(".")
        return f"{side}_{ident(base)}" + (f".{rest}" if dot else "")

    def arg(self, value, side: str) -> str:
        if isinstance(value, dict) and set(value) == {"value"}:
            return self.var(value["value"], side)
        if isinstance(value, list):
            return "[" + ", ".join(self.arg(v, side) for v in value) + "]"
        return repr(value)

    def names_in(self, value) -> list[str]:
        if isinstance(value, dict) and set(value) == {"value"}:
            return [value["value"]]
        if isinstance(value, list):
            return [n for v in value for n in self.names_in(v)]
        return []

    def write(self) -> None:
        m, req = self.m, self.req
        m.line(f"mesh = {mesh_code(self.mesh, req.get('mesh_names'))}")
        m.line("seen = {}")
        for spec in req["tensors"]:
            name, rg = ident(spec["name"]), bool(spec["requires_grad"])
            m.line(f"data = make_input({spec['shape']!r}, {spec['dtype']!r}, {spec['seed']})")
            m.line(f"r_{name} = data.clone().requires_grad_({rg})")
            if spec["placements"] is None:
                m.line(f"v_{name} = data.clone().requires_grad_({rg})")
            else:
                # Every rank holds the same data: split locally, without a collective.
                m.line(
                    f"v_{name} = distribute_tensor(data.clone().requires_grad_({rg}), mesh, "
                    f"{placements_code(spec['placements'])}, src_data_rank=None)"
                )
        reads_at: dict[int | None, list[dict]] = {}
        for read in req["reads"]:
            reads_at.setdefault(read["step"], []).append(read)
        ran: set[int] = set()
        for step in req["steps"]:
            result = self.step(step)
            if step["error"]:
                break  # it must raise; the steps after it don't run
            ran.add(step["index"])
            for read in reads_at.get(step["index"], []):
                self.read(read, result)
        for read in reads_at.get(None, []):
            if read["made_by"] is not None and read["made_by"] not in ran:
                continue
            self.read(read, read["name"])
        for read in req["reads"]:
            for other in read["equals"]:
                m.line(
                    f"assert same(seen.get({read['key']!r}), seen.get({other!r})), "
                    f"{read['key'] + ' equals ' + other!r}"
                )

    def step(self, step: dict) -> str | None:
        """Write one step on both sides; the name its result is held under."""
        m, call = self.m, step["call"]
        target = step["target"] or f"_{step['index']}"
        v_expr = self.expression(step, "v")
        if step["error"]:
            error = next(s.error for s in self.variant.program.steps if s.index == step["index"])
            m.line(f"with raises({error.value['type']!r}, {error.value.get('match')!r}):")
            m.line(v_expr, 1)
            return None
        if call == "backward":
            m.line(v_expr)
            if self.reference:
                self.reference_line(step, None)
            return None
        m.line(f"{self.var(target, 'v')} = {v_expr}")
        if self.reference:
            self.reference_line(step, target)
        return target

    def reference_line(self, step: dict, target: str | None) -> None:
        m, call = self.m, step["call"]
        used = self.names_in(step["args"]) + self.names_in(list(step["kwargs"].values()))
        tainted = any(n in self.per_device or n.removesuffix(".grad") in self.per_device
                      for n in used)  # fmt: skip
        if call == "backward":
            if tainted:
                self.grads_known = False  # every device adds its own share
            guard = [n for n in used if n in self.maybe_unknown]
            expr = self.expression(step, "r")
            if guard:
                m.line(f"if {' and '.join(self.var(n, 'r') + ' is not None' for n in guard)}:")
                m.line(expr, 1)
            else:
                m.line(expr)
            return
        r_target = self.var(target, "r")
        if any(n in self.unknown for n in used) or any(
            n.endswith(".grad") and not self.grads_known for n in used
        ):
            self.unknown.add(target)
            m.line(f"{r_target} = None")
            return
        a0 = self.arg(step["args"][0], "r") if step["args"] else ""
        if call == "distribute_tensor":
            expr = f"{a0}.detach().clone().requires_grad_({a0}.requires_grad)"
        elif call in ("redistribute", "full_tensor"):
            expr = f"{a0}.view_as({a0})"
        elif call == "to_local":
            # This rank's piece of the global value (DTensor's layout of the DTensor side).
            expr = f"{a0}[local_slices({self.arg(step['args'][0], 'v')})]"
            tainted = True
        elif call == "from_local":
            shape = step["kwargs"].get("shape")
            expr = (
                f"from_local_reference({a0}, {placements_code(step['args'][1])}, "
                f"{self.mesh!r}, {shape!r})"
            )
            tainted = tainted or any(p[0] != "replicate" for p in step["args"][1])
            if shape is not None:
                self.maybe_unknown.add(target)
        else:
            expr = self.expression(step, "r")
        guard = [n for n in used if n in self.maybe_unknown]
        if guard:
            self.maybe_unknown.add(target)
            cond = " and ".join(f"{self.var(n, 'r')} is not None" for n in guard)
            expr = f"({expr}) if {cond} else None"
        if tainted:
            self.per_device.add(target)
        m.line(f"{r_target} = {expr}")

    def expression(self, step: dict, side: str) -> str:
        """The call as Python on this side's values (DTensor calls: the DTensor side only)."""
        call, args, kwargs = step["call"], step["args"], dict(step["kwargs"])
        a = [self.arg(x, side) for x in args]

        def kw(names: dict) -> str:
            return "".join(f", {k}={v}" for k, v in names.items())

        if call in ("distribute_tensor", "redistribute", "from_local", "to_local", "full_tensor"):
            rest = {}
            for key, value in kwargs.items():
                if key == "grad_placements" and value is not None:
                    rest[key] = placements_code(value)
                elif key == "shape":
                    rest["shape"] = f"torch.Size({value!r})"
                    rest["stride"] = f"contiguous_stride({value!r})"
                else:
                    rest[key] = self.arg(value, side)
            if call == "distribute_tensor":
                return f"distribute_tensor({a[0]}, mesh, {placements_code(args[1])}{kw(rest)})"
            if call == "redistribute":
                return f"{a[0]}.redistribute(mesh, {placements_code(args[1])}{kw(rest)})"
            if call == "from_local":
                return f"DTensor.from_local({a[0]}, mesh, {placements_code(args[1])}{kw(rest)})"
            return f"{a[0]}.{call}({kw(rest).removeprefix(', ')})"
        k = {key: self.arg(value, side) for key, value in kwargs.items()}
        if call == "backward":
            grad = k.get("grad", a[1] if len(a) > 1 else None)
            return f"{a[0]}.backward({grad or ''})"
        if call in TORCH_OPS:
            return f"torch.{call}({', '.join(a)}{kw(k)})"
        if call in FUNCTIONAL_OPS:
            return f"F.{call}({', '.join(a)}{kw(k)})"
        if call in ("softmax", "log_softmax"):
            dim = k.get("dim", a[1] if len(a) > 1 else None)
            return f"F.{call}({a[0]}, dim={dim})"
        if call in ("sum", "mean", "amax", "squeeze", "flatten", "cat", "detach", "to"):
            named = dict(zip(("t", "dim", "keepdim"), a, strict=False))
            named.update(k)
            dim, keepdim = named.get("dim", "None"), named.get("keepdim", "False")
            if call in ("sum", "mean"):
                if dim == "None":
                    return f"torch.{call}({a[0]})"
                return f"torch.{call}({a[0]}, dim={dim}, keepdim={keepdim})"
            if call == "amax":
                return (
                    f"torch.amax({a[0]}, dim={'()' if dim == 'None' else dim}, keepdim={keepdim})"
                )
            if call == "squeeze":
                return (
                    f"torch.squeeze({a[0]})" if dim == "None" else f"torch.squeeze({a[0]}, {dim})"
                )
            if call == "flatten":
                named = dict(zip(("t", "start_dim", "end_dim"), a, strict=False))
                named.update(k)
                start, end = named.get("start_dim", "0"), named.get("end_dim", "-1")
                return f"torch.flatten({a[0]}, {start}, {end})"
            if call == "cat":
                return f"torch.cat({a[0]}, dim={named.get('dim', k.get('dim', '0'))})"
            if call == "detach":
                return f"{a[0]}.detach()"
            dtype = args[1] if len(args) > 1 else kwargs["dtype"]
            return f"{a[0]}.to(torch.{dtype})"
        raise CantWrite(f"call {call}()")

    def read(self, read: dict, held: str | None) -> None:
        """Read a value where shardspec reads it: full_tensor, piece, reference, expectations."""
        if held is None:
            return
        plan = self.variant.program.values[read["key"]]
        checks = self.variant.checks
        declared = {e.name: e.value for e in plan.expects}
        placements = plan.asked if checks.get("placements", True) else None
        if placements is not None:
            places = placements_code([p.as_json() for p in placements])
        elif "placements" in declared:
            places = declared_placements_code(declared["placements"])
        else:
            places = "None"
        ref = "None"
        values = declared.get("values")
        if self.reference and not (isinstance(values, dict) and "equals" in values):
            name = held
            known = name not in self.unknown and not (
                name.endswith(".grad") and not self.grads_known
            )
            if known:
                ref = self.var(name, "r")
            elif values is not None:
                raise CantWrite(f"{read['key']}: expect.values has no reference")
        extra = {k: v for k, v in declared.items() if k in VALUE_CHECKS}
        unknown = set(declared) - set(VALUE_CHECKS) - set(XLA_ONLY) - {"placements", "values"}
        if unknown:
            raise CantWrite(f"{read['key']}: expectations {sorted(unknown)}")
        args = "".join(f", {k}={v!r}" for k, v in extra.items())
        required = bool(plan.expects)
        self.m.line(
            f"seen[{read['key']!r}] = check_value(self.rank, {plan.label!r}, "
            f"{self.var(held, 'v')}, {ref}, {plan.rtol!r}, {plan.atol!r}, {places}"
            f"{', required=True' if required else ''}{args})"
        )


@dataclass
class Entry:
    file: str
    case: str
    variant: str
    kind: str  # run | skip | xfail | error
    method: Method | None
    problem: str = ""


def entries(spec_dir: Path) -> list[Entry]:
    """Every variant of specs/ at n=4 on engine native, as shardspec collects them."""
    out: list[Entry] = []
    paths = sorted(p for p in spec_dir.rglob("*") if p.suffix in SUFFIXES)
    for path in paths:
        shown = os.path.relpath(path, REPO)
        spec = read_spec(path, shown)
        for case in spec.cases:
            for variant in expand(case, ENGINE, DEVICES):
                v = verdict(variant, spec.problems)
                name = f"test_{len(out) + 1:03d}_{ident(path.stem)}__{ident(case.id)}__{ident(variant.name)}"
                entry = Entry(shown, case.id, variant.name, v.kind, None)
                out.append(entry)
                if v.kind == "error":
                    entry.problem = v.reason
                    continue
                m = Method(name)
                entry.method = m
                if v.kind == "skip":
                    m.decorator = f"@unittest.skip({(case.id + ': ' + v.reason)!r})"
                    continue
                if v.kind == "xfail":
                    m.decorator = "@unittest.expectedFailure"
                try:
                    op = variant.request["op"]
                    if op == "tensor":
                        write_tensor(m, variant)
                    elif op == "module":
                        write_module(m, variant)
                    elif op == "steps":
                        Steps(m, variant).write()
                    else:
                        raise CantWrite(f"op {op}")
                except CantWrite as exc:
                    entry.kind, entry.method, entry.problem = "error", None, f"anchor: {exc}"
    return out


def anchor_module(found: list[Entry]) -> str:
    methods = [e.method.render() for e in found if e.method is not None]
    return HEAD.replace("__DEVICES__", str(DEVICES)) + "\n" + "\n\n".join(methods) + "\n"


def write(directory: Path, found: list[Entry]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text("[pytest]\n")  # a project of its own
    path = directory / "test_anchor.py"
    path.write_text(anchor_module(found))
    return path


# --- The measurement ---------------------------------------------------------------------


def run_side(side: str, anchor_dir: Path, ids: list[str]) -> dict:
    if side == "shardspec":
        # Exactly the variants the anchor has: the same work on both sides.
        cmd = ["-m", "pytest", *ids, "--engines", ENGINE, "--devices", str(DEVICES)]
        cwd = REPO
    else:
        cmd = ["-m", "pytest", "test_anchor.py", "-p", "no:shardspec"]
        cwd = anchor_dir
    done = run([sys.executable, *cmd, "-q", "-p", "no:cacheprovider"], cwd, clean_env())
    return {
        "side": side,
        "seconds": round(done.seconds, 2),
        "exit_code": done.exit_code,
        "summary": summary_line(done.stdout),
        "tail": "" if done.exit_code == 0 else (done.stdout + done.stderr)[-3000:],
    }


def measure(repeat: int) -> dict:
    found = entries(REPO / "specs")
    kinds = {k: sum(e.kind == k for e in found) for k in ("run", "skip", "xfail", "error")}
    with tempfile.TemporaryDirectory(prefix="shardspec-bench-native-") as tmp:
        anchor_dir = Path(tmp)
        write(anchor_dir, found)
        ids = [f"{e.file}::{e.case}[{e.variant}]" for e in found if e.method is not None]
        runs: list[dict] = []
        for _ in range(repeat):
            for side in ("shardspec", "anchor"):
                runs.append(run_side(side, anchor_dir, ids))
                print(
                    json.dumps({k: v for k, v in runs[-1].items() if k != "tail"}),
                    file=sys.stderr,
                    flush=True,
                )
    # Variants with a spec error fail the benchmark; those the anchor's writer can't express
    # yet (module steps: model(), sgd_step) are left out of both sides and listed.
    left_out = [f"{e.file}::{e.case}[{e.variant}]: {e.problem}" for e in found if e.kind == "error"]
    broken = [line for line in left_out if ": anchor: " not in line]
    left_out = [line for line in left_out if ": anchor: " in line]
    sides = ("shardspec", "anchor")
    times = {side: [r["seconds"] for r in runs if r["side"] == side] for side in sides}
    medians = {side: median(t) for side, t in times.items()}
    speed = ratio(times["shardspec"], times["anchor"])
    outcomes = {side: [counts(r["summary"]) for r in runs if r["side"] == side] for side in sides}
    green = all(r["exit_code"] == 0 for r in runs)
    # The same outcomes on both sides: passed, skipped, xfailed (else the anchor is not the
    # same cases, and the comparison means nothing).
    same_cases = all(c == outcomes["shardspec"][0] for side in sides for c in outcomes[side])
    result = {
        "benchmark": "native",
        "devices": DEVICES,
        "repeat": repeat,
        "variants": kinds,
        "shardspec_seconds": times["shardspec"],
        "anchor_seconds": times["anchor"],
        "shardspec_median": medians["shardspec"],
        "anchor_median": medians["anchor"],
        "ratio": speed,
        "target_ratio": TARGET_RATIO,
        "summaries": {side: [r["summary"] for r in runs if r["side"] == side] for side in sides},
        "all_green": green,
        "same_cases": same_cases,
        "ok": green and same_cases and not broken and speed <= TARGET_RATIO,
    }
    if broken:
        result["spec_errors"] = broken
    if left_out:
        result["not_in_anchor"] = left_out
    failed = [r for r in runs if r["tail"]]
    if failed:
        result["first_failure"] = {"side": failed[0]["side"], "tail": failed[0]["tail"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument(
        "--write",
        metavar="DIR",
        type=Path,
        help="only write DIR/test_anchor.py (run it with: pytest DIR -p no:shardspec)",
    )
    args = parser.parse_args(argv)
    if args.write:
        found = entries(REPO / "specs")
        path = write(args.write, found)
        kinds = {k: sum(e.kind == k for e in found) for k in ("run", "skip", "xfail", "error")}
        problems = [f"{e.file}::{e.case}[{e.variant}]: {e.problem}" for e in found if e.problem]
        print(json.dumps({"anchor": str(path), "variants": kinds, "not_in_anchor": problems}))
        return 0
    result = measure(args.repeat)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
