"""A v1.1 case (``tensors:`` and ``steps:``) resolved for one n: the program an engine runs.

Pure Python. Each step is parsed (``stepgrammar``) and checked against the allowlist
(``calls``), which also infers every value's shape, dtype and tracked placements. So a
misspelled call, a value used before it is made, or shapes that can't multiply are
located problems before anything runs. Declared value expectations are checked against
the inferred shapes and DTensor's layout, as in v1. What comes out is the request for
the worker and, per value read, what the checker compares.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from . import calls, oracle
from .calls import CallError, ValueInfo
from .expectations import Collected, Expect
from .oracle import ShardLayout
from .placements import Placement
from .problems import Mark
from .protocol import InputTensor, ReadJson, StepJson, StepsRequest
from .resolve import Resolver
from .stepgrammar import StepSyntaxError, parse_step
from .words import did_you_mean
from .yamlload import JsonPath, short

# The keys of a value expectation: value names may not be one of them (settled point 8).
VALUE_KEYS = (
    "type",
    "instance_of",
    "shape",
    "global_shape",
    "dtype",
    "placements",
    "local_shape",
    "local_shapes",
    "padded_local_shape",
    "sharding_spec",
    "sharding_type",
    "requires_grad",
    "is_leaf",
    "values",
)
RESERVED_NAMES = frozenset((*VALUE_KEYS, "error", "forward", "n"))
# torch.testing.assert_close's default tolerances per dtype (settled point 11).
TOLERANCE = {
    "float16": (1e-5, 1e-3),
    "bfloat16": (1e-5, 1.6e-2),
    "float32": (1e-5, 1.3e-6),
    "float64": (1e-7, 1e-7),
}


@dataclass
class ValuePlan:
    """One value the checker looks at: where it is read, what is known of it before
    running, and what the spec expects of it."""

    key: str  # "x", "x.grad", or "@INDEX" for an unnamed step result
    name: str | None
    step: int | None  # read right after this step; None: after the last step
    mark: Mark  # where the value is made (its tensors: entry or its step)
    info: ValueInfo | None
    asked: tuple[Placement, ...] | None  # placements the case asked for (settled point 13)
    layout: list[ShardLayout] | None  # DTensor's layout for the asked placements
    made_by: int | None  # the step that makes it (None: an input)
    expects: list[Expect] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0

    def expect(self, name: str) -> Expect | None:
        return next((e for e in self.expects if e.name == name), None)

    target: str | None = None  # the step's own name for its result, if it has one
    read_name: str | None = None  # a named value read right after ``step`` (not its result)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.target:
            return f"{self.target} (right after step {self.step})"
        return f"the result of step {self.step}"


@dataclass
class StepPlan:
    index: int
    mark: Mark
    text: str
    call: str
    error: Expect | None  # the step must raise this


@dataclass
class Program:
    """What a steps case is at one n: the request and the checker's side of it."""

    request: StepsRequest
    values: dict[str, ValuePlan]
    steps: list[StepPlan]
    engines: frozenset[str] | None  # None: every engine; else only these (an xla-only call)
    xla_only_call: str | None = None


def is_steps_case(data: dict) -> bool:
    return "steps" in data or "tensors" in data


def _tensors(data: dict, requires_grad: bool | None) -> dict[str, tuple[dict, JsonPath]]:
    """The named inputs: ``tensors:``, or v1's ``input`` + ``placements`` as ``x``."""
    raw = data.get("tensors")
    if isinstance(raw, dict):
        return {name: (spec, ("tensors", name)) for name, spec in raw.items()}
    inp = dict(data.get("input") or {})
    if "placements" in data:
        inp["placements"] = data["placements"]
    inp["requires_grad"] = bool(requires_grad)
    return {"x": (inp, ("input",))}


def _tolerance(value: Any, dtype: str | None) -> tuple[float, float]:
    atol, rtol = TOLERANCE.get(dtype or "", (0.0, 0.0))
    if isinstance(value, dict) and ("atol" in value or "rtol" in value):
        return float(value.get("atol", atol)), float(value.get("rtol", rtol))
    return atol, rtol


@dataclass
class ModuleSpec:
    """A module case's model, as expand resolved it: layers and each placed parameter."""

    layers: list  # [(name, Layer)]
    placed: dict  # parameter name -> ParamLayout
    shapes: dict[str, tuple[int, ...]]  # every parameter's shape
    input_placements: tuple[Placement, ...] | None = None
    output_placements: tuple[Placement, ...] | None = None
    partition: bool = True  # the case has shard: rules (else distribute_module has no fn)


def build(
    r: Resolver,
    requires_grad: bool | None,
    max_elements: int,
    module: ModuleSpec | None = None,
) -> Program:
    """Resolve a steps case for this n; raises resolve.Invalid at the first problem."""
    case, n = r.case, r.n
    data = case.data
    mesh, names = r.mesh_with_names()
    seed_base = f"{PurePath(case.doc.path).name}::{case.id}"
    values: dict[str, ValueInfo] = {}
    plans: dict[str, ValuePlan] = {}
    tensors: list[InputTensor] = []
    for name, (spec, path) in _tensors(data, requires_grad).items():
        if name in RESERVED_NAMES:
            raise r.fail(path, _reserved(name))
        if not isinstance(spec, dict) or "shape" not in spec:
            raise r.fail(path, f"tensor {name} needs a shape, such as {name}: {{shape: [8, 3]}}")
        shape = r.shape(spec["shape"], (*path, "shape"))
        if (elements := math.prod(shape)) > max_elements:
            raise r.fail(
                (*path, "shape"),
                f"{name}'s shape {list(shape)} has {elements} elements at n={n}, over the limit "
                f"of {max_elements}; make it smaller (or raise --shardspec-max-elements)",
            )
        dtype = spec.get("dtype", "float32")
        grad = bool(spec.get("requires_grad", False))
        if grad and dtype not in TOLERANCE:
            raise r.fail(
                (*path, "requires_grad"),
                f"requires_grad: true needs a floating dtype, but {name} is {dtype}",
            )
        places = None
        if spec.get("placements") is not None:
            where = ("placements",) if path == ("input",) else (*path, "placements")
            places = r.placements(spec["placements"], where, mesh, len(shape))
        values[name] = ValueInfo(shape, dtype, places is not None, places, grad, True)
        tensors.append(
            {
                "name": name,
                "shape": list(shape),
                "dtype": dtype,
                "placements": None if places is None else [p.as_json() for p in places],
                "requires_grad": grad,
                "seed": zlib.crc32(f"{seed_base}::{name}".encode()),
            }
        )
        plans[name] = _plan_value(name, None, case.locate(path), values[name], places, mesh, None)

    if module is not None:
        # Parameters are values: model.fc1.weight (and, after backward, its .grad).
        for param, shape in module.shapes.items():
            placed = module.placed.get(param)
            asked = placed.placements if placed is not None else None
            name = f"model.{param}"
            values[name] = ValueInfo(shape, "float32", asked is not None, asked, True, True)
            rule = ("shard", placed.rule, "placements") if placed is not None else ("module",)
            plans[name] = _plan_value(
                name, None, case.locate(rule), values[name], asked, mesh, None
            )

    raw_steps = data.get("steps") or []
    later = _targets(raw_steps)
    steps: list[StepPlan] = []
    step_json: list[StepJson] = []
    engines: frozenset[str] | None = None
    xla_only = None
    for index, raw in enumerate(raw_steps, 1):
        text, path = (
            (raw, ("steps", index - 1))
            if isinstance(raw, str)
            else (
                raw.get("do"),
                ("steps", index - 1, "do"),
            )
        )
        mark = case.locate(path)
        try:
            step = parse_step(text)
        except StepSyntaxError as exc:
            raise r.fail(path, f"step {index}: {exc.message}") from None
        error = raw.get("error") if isinstance(raw, dict) else None
        if step.target in RESERVED_NAMES:
            raise r.fail(path, f"step {index}: {_reserved(step.target)}")
        if step.target is not None and step.target in plans:
            # One name, one value: the checks of the first (and x.grad) would silently go.
            made = plans[step.target].made_by
            first = "an input tensor" if made is None else f"the value of step {made}"
            raise r.fail(
                path,
                f"step {index}: '{step.target}' already names {first}; each step makes one "
                f"new value name: write {step.target}2 = ... and use {step.target}2 after it",
            )
        try:
            resolved = calls.resolve(
                step,
                n,
                values,
                mesh,
                mesh_names=names,
                later={k: v for k, v in later.items() if v > index},
                lenient=error is not None,
                layers=module.layers if module is not None else None,
            )
        except CallError as exc:
            raise r.fail(path, f"step {index} ({short(text, 80)}): {exc.message}") from None
        if resolved.engines is not None:
            engines = resolved.engines if engines is None else engines & resolved.engines
            xla_only = xla_only or resolved.call
        sj: StepJson = {
            "index": index,
            "line": mark.line,
            "target": step.target,
            "call": resolved.call,
            "args": resolved.args,
            "kwargs": resolved.kwargs,
            "error": error is not None,
        }
        if resolved.call == "to_local":
            piece = _device0_piece(resolved.args[0], values, mesh)
            if piece is not None:
                sj["piece"] = piece
        step_json.append(sj)
        step_expect = None
        if error is not None:
            pattern = error.get("match")
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise r.fail(
                        ("steps", index - 1, "error", "match"),
                        f"step {index}: error.match is not a valid regular expression: {exc}",
                    ) from None
            step_expect = Expect("error", dict(error), case.locate(("steps", index - 1, "error")))
        steps.append(StepPlan(index, mark, text, resolved.call, step_expect))
        if error is not None:
            break  # the steps after a step that must raise don't run (settled point 17)
        asked = _asked(resolved.call, resolved.result)
        if step.target:
            if resolved.result is None:
                raise r.fail(path, f"step {index}: {resolved.call}() gives no value to name")
            values[step.target] = resolved.result
            plans[step.target] = _plan_value(
                step.target, None, mark, resolved.result, asked, mesh, index
            )
        for name, info in resolved.defines.items():
            values[name] = info
            plans[name] = _plan_value(name, None, mark, info, None, mesh, index)
        if module is not None and resolved.call == "sgd_step":
            # Every placed parameter keeps its placements after each step (issue 11): read
            # right after the step, against the placements its rule asked for.
            for param, placed in module.placed.items():
                name = f"model.{param}"
                plan = _plan_value(name, index, mark, values[name], placed.placements, mesh, index)
                plan.key = f"{name}@{index}"
                plan.target = name
                plan.name = None
                plan.read_name = name
                plans[plan.key] = plan
        if isinstance(raw, dict) and "expect" in raw:
            if resolved.result is None:
                raise r.fail(
                    ("steps", index - 1, "expect"),
                    f"step {index}: {resolved.call}() gives no value, so it has nothing to expect",
                )
            key = f"@{index}"
            plan = _plan_value(None, index, mark, resolved.result, asked, mesh, index)
            plan.target = step.target
            plans[key] = plan
            _value_expectations(r, plan, raw["expect"], ("steps", index - 1, "expect"), mesh, plans)
    _case_expectations(r, plans, mesh)
    for plan in plans.values():
        # A parameter read right after an sgd_step keeps the tolerance its case declared.
        if plan.read_name and plan.read_name in plans:
            plan.atol, plan.rtol = plans[plan.read_name].atol, plans[plan.read_name].rtol
    request: StepsRequest = {
        "op": "steps",
        "module": None
        if module is None
        else module_json(module, zlib.crc32(f"{seed_base}::model".encode())),
        "mesh": list(mesh),
        "mesh_names": list(names) if names else None,
        "tensors": tensors,
        "steps": step_json,
        "reads": [_read(plan) for plan in plans.values()],
        "reference": True,
    }
    return Program(request, plans, steps, engines, xla_only)


def module_json(module: ModuleSpec, seed: int) -> dict[str, Any]:
    """The model as the worker builds and distributes it (a module request's fields)."""

    def places(p: tuple[Placement, ...] | None) -> list | None:
        return None if p is None else [x.as_json() for x in p]

    return {
        "layers": [(name, layer.as_json()) for name, layer in module.layers],
        "params": {
            name: [p.as_json() for p in placed.placements] for name, placed in module.placed.items()
        },
        "partition": module.partition,
        "seed": seed,
        "input_placements": places(module.input_placements),
        "output_placements": places(module.output_placements),
    }


def _reserved(name: str) -> str:
    return (
        f"'{name}' can't name a value: it is an expectation key (or n), so expect: would be "
        "ambiguous; pick another name"
    )


def _targets(raw_steps: list) -> dict[str, int]:
    """Value name -> the step that makes it, read loosely (for "made later" messages)."""
    out: dict[str, int] = {}
    for index, raw in enumerate(raw_steps, 1):
        text = raw if isinstance(raw, str) else (raw or {}).get("do")
        if isinstance(text, str) and "=" in text.split("(")[0]:
            name = text.split("=")[0].strip()
            out.setdefault(name, index)
    return out


def _asked(call: str, result: ValueInfo | None) -> tuple[Placement, ...] | None:
    """Placements a step asks for: those of distribute_tensor, redistribute, from_local."""
    if result is None or call not in ("distribute_tensor", "redistribute", "from_local"):
        return None
    return result.placements


def _device0_piece(arg: Any, values: dict[str, ValueInfo], mesh: tuple[int, ...]) -> dict | None:
    """Device 0's piece of to_local's argument, when its placements are tracked."""
    name = arg.get("value") if isinstance(arg, dict) else None
    info = values.get(name or "")
    if info is None or info.placements is None or info.shape is None:
        return None
    shape, offset = oracle.shard_of(info.shape, mesh, (0,) * len(mesh), info.placements)
    return {"offset": list(offset), "shape": list(shape)}


def _plan_value(
    name: str | None,
    step: int | None,
    mark: Mark,
    info: ValueInfo | None,
    asked: tuple[Placement, ...] | None,
    mesh: tuple[int, ...],
    made_by: int | None,
) -> ValuePlan:
    layout = None
    if asked is not None and info is not None and info.shape is not None:
        layout = oracle.layout(info.shape, mesh, asked)
    key = name if name is not None else f"@{step}"
    atol, rtol = _tolerance(None, info.dtype if info else None)
    return ValuePlan(key, name, step, mark, info, asked, layout, made_by, atol=atol, rtol=rtol)


def _read(plan: ValuePlan) -> ReadJson:
    equals = [e.value["equals"] for e in plan.expects if e.name == "values" and "equals" in e.value]
    return {
        "key": plan.key,
        "name": plan.name or plan.read_name,
        "step": plan.step,
        "rtol": plan.rtol,
        "equals": equals,
        "made_by": plan.made_by,
    }


def _case_expectations(r: Resolver, plans: dict[str, ValuePlan], mesh: tuple[int, ...]) -> None:
    expect = r.case.data.get("expect")
    if not isinstance(expect, dict):
        return
    for name, wanted in expect.items():
        path = ("expect", name)
        if name in RESERVED_NAMES:
            raise r.fail(
                path,
                f"expect.{name}: with tensors: or steps:, expect maps value names to what they "
                f"must be, such as expect: {{y: {{{name}: ...}}}}",
            )
        plan = plans.get(name)
        if plan is None:
            known = [k for k in plans if not k.startswith("@")]
            raise r.fail(
                path,
                f"'{short(name)}' is not a value of this case"
                + (did_you_mean(name, known) or f"; its values are: {', '.join(known)}"),
            )
        _value_expectations(r, plan, wanted, path, mesh, plans)


def _value_expectations(
    r: Resolver,
    plan: ValuePlan,
    wanted: Any,
    path: JsonPath,
    mesh: tuple[int, ...],
    plans: dict[str, ValuePlan],
) -> None:
    """A value's declared expectations, each checked against what is known before running."""
    if not isinstance(wanted, dict):
        raise r.fail(path, "a value expectation is a map, such as {shape: [8, 3]}")
    found = Collected(r)
    info = plan.info
    where = f"for {plan.label} at n={r.n}"
    for key, value in wanted.items():
        kpath = (*path, key)
        at = r.by_n(value, kpath) if key not in ("values", "sharding_spec") else (value, kpath)
        if at is None:
            found.unchecked.append(f"expect.{key} (no entry for n={r.n})")
            continue
        value, kpath = at
        name = "shape" if key == "global_shape" else key
        if name in ("shape", "local_shape", "padded_local_shape"):
            got = list(r.shape(value, kpath, minimum=1 if name == "shape" else 0))
            truth = _known(name, plan, mesh)
            if truth is not None and got != truth:
                raise r.fail(
                    kpath,
                    f"{key} is {got}, but {_why(name, plan)} gives {truth} {where}; the spec, not "
                    "the engine, disagrees: fix the expectation",
                )
            found.add(name, got, kpath)
        elif name == "local_shapes":
            shapes = [list(r.shape(s, (*kpath, i), minimum=0)) for i, s in enumerate(value)]
            if plan.layout is not None:
                truth = [list(s.shape) for s in plan.layout]
                if shapes != truth:
                    raise r.fail(
                        kpath,
                        f"local_shapes is {shapes}, but DTensor's layout gives {truth} {where}",
                    )
            found.add(name, shapes, kpath)
        elif name == "placements":
            places = r.placements(
                value, kpath, mesh, len(info.shape) if info and info.shape else None
            )
            if plan.asked is not None and tuple(places) != tuple(plan.asked):
                raise r.fail(
                    kpath,
                    f"placements is [{', '.join(map(str, places))}], but the case asks for "
                    f"[{', '.join(map(str, plan.asked))}] {where}; fix the expectation",
                )
            found.add(name, [str(p) for p in places], kpath)
        elif name == "dtype":
            if info is not None and info.dtype and value != info.dtype:
                raise r.fail(kpath, f"dtype is {value}, but the steps give {info.dtype} {where}")
            found.add(name, value, kpath)
        elif name == "sharding_spec":
            found.spec_string(value, kpath, "sharding_spec")
        elif name == "values":
            if isinstance(value, dict) and "equals" in value:
                other = value["equals"]
                if other not in plans:
                    raise r.fail(
                        (*kpath, "equals"),
                        f"'{short(other)}' is not a value of this case"
                        + did_you_mean(other, [k for k in plans if not k.startswith("@")]),
                    )
            plan.atol, plan.rtol = _tolerance(value, info.dtype if info else None)
            found.add(name, value, kpath)
        else:  # type, instance_of, sharding_type, requires_grad, is_leaf
            found.add(name, value, kpath)
    plan.expects.extend(found.expects)
    r.notes.extend(f"{plan.label}: {note}" for note in found.unchecked)


def _known(name: str, plan: ValuePlan, mesh: tuple[int, ...]) -> list[int] | None:
    """What the shape expectation ``name`` must be, when it is known before running."""
    info = plan.info
    if info is None or info.shape is None:
        return None
    if name == "shape":
        return list(info.shape)
    if plan.layout is None or plan.asked is None:
        return None
    if name == "local_shape":
        return list(plan.layout[0].shape)
    return list(oracle.padded_shape(info.shape, mesh, plan.asked))


def _why(name: str, plan: ValuePlan) -> str:
    return "the steps' shapes" if name == "shape" else "DTensor's layout"
