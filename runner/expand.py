"""Expand a case for one engine and device count into a concrete, checkable plan.

Everything here is pure Python. The pieces live beside it: ``requires`` (which counts a
case runs at), ``resolve`` (sizes, the mesh, placements), ``expectations`` (declared
expectations against the oracle). This module puts them together into a
:class:`Variant`: the request an engine runs, and what the checker compares it with.
Shard rules are matched here and only here: the request names each placed parameter.
"""

from __future__ import annotations

import fnmatch
import math
import zlib
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from . import expectations, oracle, program, xla_sharding
from .expectations import Collected, Expect, ParamLayout
from .layers import Layer, LayerError, chain_problem, output_shapes, parse_layer
from .problems import Problem
from .program import Program
from .protocol import ModuleRequest, Request, TensorRequest
from .requires import requires_hint, unmet_requirement
from .resolve import Invalid, Resolver
from .spec import Case
from .yamlload import short

__all__ = ["Expect", "ParamLayout", "Variant", "expand", "parse_device_counts", "requires_hint"]

DEFAULT_MAX_ELEMENTS = 1 << 26
MAX_DEVICES = 4096
# The checks made unasked (DESIGN.md settled point 14); `checks:` turns one off.
CHECKS = (
    "type",
    "global_shape",
    "placements",
    "shards",
    "values",
    "reference",
    "requires_grad",
    "is_leaf",
    "sharding_spec",
)


def parse_device_counts(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> (1, 2, 4, 8), in the order given; ValueError in plain words."""
    try:
        counts = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        counts = ()
    if not counts or any(c < 1 or c > MAX_DEVICES for c in counts):
        raise ValueError(
            f"'{text}' is not a list of device counts (each from 1 to {MAX_DEVICES}); "
            "write them separated by commas, such as 1,2,4,8"
        )
    return counts


@dataclass
class Variant:
    """A case at one engine, device count and grad flag: what one pytest item runs."""

    case: Case
    engine: str
    n: int
    requires_grad: bool | None
    skip: str | None = None
    problems: list[Problem] = field(default_factory=list)
    request: Request | None = None
    expects: list[Expect] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    layout: list[oracle.ShardLayout] = field(default_factory=list)
    param_layouts: dict[str, ParamLayout] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    # torch_xla's sharding string for this layout, as DTensor means it (None: no prediction)
    predicted_spec: str | None = None
    program: Program | None = None  # a v1.1 case: its steps, values and expectations

    @property
    def name(self) -> str:
        parts = [self.engine, f"n{self.n}"]
        if self.requires_grad is not None:
            parts.append("grad" if self.requires_grad else "nograd")
        return "-".join(parts)

    def expect(self, name: str) -> Expect | None:
        return next((e for e in self.expects if e.name == name), None)


def grad_flags(case: Case) -> list[bool | None]:
    """One entry per test the case's requires_grad asks for (None for modules)."""
    if case.kind != "tensor" or "tensors" in case.data:
        return [None]
    inp = case.data.get("input")
    # Cases with schema problems get here too, so input may be anything.
    flag = inp.get("requires_grad", False) if isinstance(inp, dict) else False
    if isinstance(flag, bool):
        return [flag]
    if isinstance(flag, list) and flag and all(isinstance(f, bool) for f in flag):
        return list(dict.fromkeys(flag))
    return [False]


def expand(
    case: Case, engine: str, n: int, *, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> list[Variant]:
    """The variants (one per grad flag) of a case at this engine and device count.

    Never raises: a bug in shardspec becomes a located problem of the case, so that it
    can't hide the other cases (or files).
    """
    variants = [Variant(case, engine, n, flag) for flag in grad_flags(case)]
    # A case with schema problems may hold anything (requires: {min_devices: two}): don't
    # read it further.
    skip = None if case.problems else unmet_requirement(case, n)
    for variant in variants:
        if case.problems:
            variant.problems = list(case.problems)
        elif skip:
            variant.skip = skip
        else:
            try:
                _plan(variant, max_elements)
            except Invalid as exc:
                variant.problems.append(exc.problem)
            except Exception as exc:
                variant.problems.append(
                    case.problem(
                        (),
                        f"shardspec could not expand this case ({type(exc).__name__}: {exc}); "
                        "please report it",
                    )
                )
    return variants


def _plan(variant: Variant, max_elements: int) -> None:
    r = Resolver(variant.case, variant.n)
    data = variant.case.data
    checks = data.get("checks") or {}
    variant.checks = {name: bool(checks.get(name, True)) for name in CHECKS}
    if "timeout" in data:
        variant.description["timeout"] = data["timeout"]
    found = Collected(r)
    if variant.case.kind == "module" and program.is_steps_case(data):
        _plan_steps(variant, r, max_elements, _module_spec(variant, r, max_elements))
    elif variant.case.kind == "module":
        _plan_module(variant, r, found, max_elements)
    elif program.is_steps_case(data):
        _plan_steps(variant, r, max_elements)
    else:
        _plan_tensor(variant, r, found, max_elements)
    variant.expects = found.expects
    variant.unchecked = found.unchecked + r.notes


def _module_spec(variant: Variant, r: Resolver, max_elements: int) -> program.ModuleSpec:
    """A module case's model for its steps, with the shard rules matched here, once."""
    mesh = r.mesh()
    layers = _layers(r, max_elements)
    shapes = {f"{name}.{p}": shape for name, layer in layers for p, shape in layer.params.items()}
    variant.param_layouts = _placed(r, mesh, shapes)
    inp, out = _io_placements(r, mesh)
    return program.ModuleSpec(
        layers,
        variant.param_layouts,
        shapes,
        inp,
        out,
        partition=bool(r.case.data.get("shard")),
    )


def _io_placements(r: Resolver, mesh: tuple[int, ...]) -> tuple[Any, Any]:
    """input_placements and output_placements: distribute_module's input_fn and output_fn."""
    data = r.case.data
    inp = out = None
    if data.get("input_placements") is not None:
        inp = r.placements(data["input_placements"], ("input_placements",), mesh, None)
    if data.get("output_placements") is not None:
        out = r.placements(data["output_placements"], ("output_placements",), mesh, None)
    return inp, out


def _plan_steps(
    variant: Variant, r: Resolver, max_elements: int, module: program.ModuleSpec | None = None
) -> None:
    plan = program.build(r, variant.requires_grad, max_elements, module)
    variant.program = plan
    variant.request = plan.request
    variant.description.update(
        mesh=plan.request["mesh"], steps=[s.text for s in plan.steps], kind="steps"
    )
    if plan.engines is not None and variant.engine not in plan.engines:
        variant.skip = (
            f"{plan.xla_only_call}() is a call of engine {', '.join(sorted(plan.engines))} "
            f"only; engine {variant.engine} has none"
        )


def _seed(case: Case) -> int:
    return zlib.crc32(f"{PurePath(case.doc.path).name}::{case.id}".encode())


def _plan_tensor(variant: Variant, r: Resolver, found: Collected, max_elements: int) -> None:
    data, n = variant.case.data, variant.n
    mesh = r.mesh()
    inp = data.get("input")
    if not isinstance(inp, dict) or "shape" not in inp:
        raise r.fail(
            ("input",), "the case needs input: {shape: [...]}, such as input: {shape: [8, 3]}"
        )
    shape = r.shape(inp["shape"], ("input", "shape"))
    if "placements" not in data:
        raise r.fail((), "the case needs placements, one per mesh axis, such as [Shard(0)]")
    places = r.placements(data["placements"], ("placements",), mesh, len(shape))
    dtype = inp.get("dtype", "float32")
    if variant.requires_grad and dtype not in program.TOLERANCE:  # floating dtypes
        raise r.fail(
            ("input", "requires_grad"),
            f"requires_grad: true needs a floating dtype, but dtype is {dtype}; "
            "only float32, float64, float16 and bfloat16 tensors can require grad",
        )
    elements = math.prod(shape)
    if elements > max_elements:
        raise r.fail(
            ("input", "shape"),
            f"input.shape {list(shape)} has {elements} elements at n={n}, over the limit of "
            f"{max_elements}; make it smaller (or raise --shardspec-max-elements)",
        )
    variant.layout = oracle.layout(shape, mesh, places)
    variant.description.update(
        mesh=list(mesh), placements=[str(p) for p in places], shape=list(shape), dtype=dtype
    )
    request: TensorRequest = {
        "op": "tensor",
        "mesh": list(mesh),
        "placements": [p.as_json() for p in places],
        "shape": list(shape),
        "dtype": dtype,
        "requires_grad": bool(variant.requires_grad),
        "seed": _seed(variant.case),
    }
    variant.request = request
    expectations.tensor(found, shape, mesh, places, variant.layout)
    if variant.engine == "xla" and not any(e.name == "error" for e in found.expects):
        variant.predicted_spec = xla_sharding.predict_or_none(mesh, places, len(shape))


def _layers(r: Resolver, max_elements: int) -> list[tuple[str, Layer]]:
    raw_layers = r.case.data.get("module")
    if not isinstance(raw_layers, dict) or not raw_layers:
        raise r.fail(
            (),
            "a module case needs module: a map from layer name to layer, with one layer per "
            "line, such as fc1: Linear(8, 4)",
        )
    layers: list[tuple[str, Layer]] = []
    for name, text in raw_layers.items():
        try:
            layers.append((name, parse_layer(text, r.n)))
        except LayerError as exc:
            hint = f"; {r.hint(exc.expression)}" if exc.expression else ""
            raise r.fail(("module", name), f"{exc}{hint}") from None
    broken = chain_problem(layers)
    if broken:
        raise r.fail(("module", broken[0]), broken[1])
    sizes = {name: sum(map(math.prod, layer.params.values())) for name, layer in layers}
    if sum(sizes.values()) > max_elements:
        biggest = max(sizes, key=sizes.__getitem__)
        raise r.fail(
            ("module", biggest),
            f"the module's parameters hold {sum(sizes.values())} elements at n={r.n}, over "
            f"the limit of {max_elements} ({biggest} alone holds {sizes[biggest]}); make "
            "the layers smaller (or raise --shardspec-max-elements)",
        )
    return layers


def _placed(
    r: Resolver, mesh: tuple[int, ...], shapes: dict[str, tuple[int, ...]]
) -> dict[str, ParamLayout]:
    """Each parameter a shard rule places (the first rule that matches wins), with its layout."""
    rules = r.case.data.get("shard") or []
    for i, rule in enumerate(rules):
        r.placements(rule["placements"], ("shard", i, "placements"), mesh, None)
        if not any(fnmatch.fnmatchcase(param, rule["params"]) for param in shapes):
            raise r.fail(
                ("shard", i, "params"),
                f"shard rule '{short(rule['params'])}' matches no parameter of this module (a typo?); its parameters are: {', '.join(shapes) or 'none'}",
            )
    placed: dict[str, ParamLayout] = {}
    for param, shape in shapes.items():
        index = next(
            (i for i, rule in enumerate(rules) if fnmatch.fnmatchcase(param, rule["params"])),
            None,
        )
        if index is None:
            continue
        # Checked against the parameter's real rank: XLA fails obscurely otherwise.
        places = r.placements(
            rules[index]["placements"],
            ("shard", index, "placements"),
            mesh,
            len(shape),
            what=f"parameter {param} {list(shape)}",
        )
        placed[param] = ParamLayout(index, places, oracle.layout(shape, mesh, places))
    return placed


def _plan_module(variant: Variant, r: Resolver, found: Collected, max_elements: int) -> None:
    module = _module_spec(variant, r, max_elements)
    mesh = r.mesh()
    variant.description.update(
        mesh=list(mesh), module={n: str(layer) for n, layer in module.layers}
    )
    request: ModuleRequest = {
        "op": "module",
        "mesh": list(mesh),
        **program.module_json(module, _seed(variant.case)),  # type: ignore[typeddict-item]
    }
    variant.request = request
    expectations.module(found, module.shapes, variant.param_layouts)
    _forward(r, found, request, module.layers, max_elements)


def _forward(
    r: Resolver,
    found: Collected,
    request: ModuleRequest,
    layers: list[tuple[str, Layer]],
    max_elements: int,
) -> None:
    fwd = (r.case.data.get("expect") or {}).get("forward")
    if fwd is None:
        return
    path = ("expect", "forward", "input_shape")
    shape = list(r.shape(fwd["input_shape"], path))
    problem = layers[0][1].input_problem(shape)
    if problem:
        raise r.fail(path, problem)
    try:
        output_shapes(layers, tuple(shape))
    except LayerError as exc:
        raise r.fail(path, f"forward.input_shape {shape}: {exc}") from None
    if math.prod(shape) > max_elements:
        raise r.fail(
            path, f"forward.input_shape {shape} is over the limit of {max_elements} elements"
        )
    tolerance = {"atol": fwd.get("atol", 1e-5), "rtol": fwd.get("rtol", 1.3e-6)}
    request["forward"] = {"input_shape": shape, "rtol": tolerance["rtol"]}
    found.add("forward", tolerance, ("expect", "forward"))
