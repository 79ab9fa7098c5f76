"""The calls a step may make (the allowlist), their arguments, and what they give.

:func:`resolve` checks one parsed step against the allowlist before anything runs: the
call exists, its arguments are in torch's order and of the right kinds, the values it
names are made by then, and (unless the step is expected to raise) the shapes, dtypes
and DTensor rules fit. It infers the result's shape, dtype and tracked placements, and
turns the arguments into JSON for the worker. Pure Python, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import expr, oracle
from .layers import Layer, LayerError, output_shapes
from .placements import Placement
from .stepgrammar import DTYPES, DType, Expr, Name, Step, format_value
from .words import did_you_mean
from .yamlload import short

FLOATS = ("float16", "bfloat16", "float32", "float64")
_CATEGORY = {"bool": 0, "int32": 1, "int64": 1, "float16": 2, "bfloat16": 2, "float32": 2}
_CATEGORY["float64"] = 2
_BITS = {"bool": 1, "int32": 32, "int64": 64, "float16": 16, "bfloat16": 16, "float32": 32}
_BITS["float64"] = 64
_SCALAR_DTYPE = {0: "bool", 1: "int64", 2: "float32"}  # torch's defaults for Python numbers
XLA = frozenset({"xla"})
_REQUIRED = object()


@dataclass(frozen=True)
class ValueInfo:
    """What is known of a value before running: ``shape`` None means unknown."""

    shape: tuple[int, ...] | None
    dtype: str
    dtensor: bool  # a DTensor (distributed) or a plain tensor
    placements: tuple[Placement, ...] | None  # tracked (asked for); None when not tracked
    requires_grad: bool
    leaf: bool


class CallError(ValueError):
    """A step the allowlist refuses; ``arg`` is the positional index or keyword at fault."""

    def __init__(self, message: str, arg: int | str | None = None):
        super().__init__(message)
        self.message = message
        self.arg = arg


@dataclass
class Resolved:
    """A checked step: JSON-able arguments, its result, and the values it defines."""

    call: str
    args: list
    kwargs: dict
    result: ValueInfo | None
    defines: dict[str, ValueInfo] = field(default_factory=dict)
    engines: frozenset[str] | None = None  # None: every engine


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` says which values it takes (see ``_EXPECTED``)."""

    name: str
    kind: str
    default: Any = _REQUIRED
    keyword_only: bool = False

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True)
class CallSpec:
    """An allowlisted call, as the editor shows it."""

    name: str
    signature: str
    doc: str
    example: str
    engines: frozenset[str] | None
    params: tuple[Param, ...] = ()


# What each kind of parameter takes, in words for messages.
_EXPECTED = {
    "tensor": "a value name, such as x",
    "tensor_or_number": "a value name or a number, such as y or 2",
    "tensor_or_null": "a value name or null",
    "tensors": "a list of value names, such as [x, y]",
    "placements": "placements such as {placements}",
    "placements_or_null": "placements such as {placements}, or null",
    "dtype": "a dtype: " + ", ".join(DTYPES),
    "int": "a whole number, such as 0 or -1",
    "int_or_null": "a whole number or null",
    "dims_or_null": "a dim such as 0, a list of dims such as [0, 1], or null",
    "dims": "a list of dims, such as [1, 0]",
    "sizes": "a list of sizes, such as [2*n, -1]",
    "sizes_or_null": "a list of sizes, such as [4*n, 8], or null",
    "bool": "true or false",
    "number": "a number, such as 0.1",
    "spec": "a list with one entry per tensor dim (a mesh axis number, a list of axes, or null), such as [0, null]",
}


def _p(name: str, kind: str, default: Any = _REQUIRED, keyword_only: bool = False) -> Param:
    return Param(name, kind, default, keyword_only)


def _signature(name: str, params: Sequence[Param]) -> str:
    parts = [p.name if p.required else f"{p.name}={format_value(p.default)}" for p in params]
    return f"{name}({', '.join(parts)})"


CALLS: dict[str, CallSpec] = {}


def _add(
    name: str,
    params: Sequence[Param],
    doc: str,
    example: str,
    engines: frozenset[str] | None = None,
) -> None:
    CALLS[name] = CallSpec(name, _signature(name, params), doc, example, engines, tuple(params))


_T = _p("t", "tensor")
# --- DTensor --------------------------------------------------------------------------
_add(
    "distribute_tensor",
    [_T, _p("placements", "placements"), _p("src_data_rank", "int_or_null", 0, True)],
    "Distributes the plain tensor t over the case's mesh with one placement per mesh axis; "
    "the result is a new DTensor that requires grad when t does.",
    "d = distribute_tensor(t, [Shard(0)])",
)
_add(
    "redistribute",
    [_p("d", "tensor"), _p("placements", "placements"), _p("async_op", "bool", False, True)],
    "Moves the DTensor d to other placements (one per mesh axis), keeping its global value.",
    "y = redistribute(x, [Replicate()])",
)
_add(
    "to_local",
    [_p("d", "tensor"), _p("grad_placements", "placements_or_null", None, True)],
    "The piece of the DTensor d that each device holds, as a plain tensor (device 0's piece "
    "is what the expectations read).",
    "piece = to_local(x)",
)
_add(
    "full_tensor",
    [_p("d", "tensor"), _p("grad_placements", "placements_or_null", None, True)],
    "Gathers the DTensor d into one plain tensor with its global shape.",
    "whole = full_tensor(x)",
)
_add(
    "from_local",
    [
        _T,
        _p("placements", "placements"),
        _p("shape", "sizes_or_null", None, True),
        _p("run_check", "bool", False, True),
    ],
    "Makes a DTensor from t, which every device passes as its own piece; Shard(d) makes dim "
    "d as many times larger as its mesh axis has devices, unless shape= gives the global shape.",
    "d = from_local(t, [Shard(0)])",
)
# --- XLA SPMD ---------------------------------------------------------------------------
_add(
    "mark_sharding",
    [_T, _p("spec", "spec")],
    "Annotates t with an XLA sharding: for each tensor dim a mesh axis (number or name), a "
    "list of axes, or null for not split (engine xla only).",
    "a = mark_sharding(t, [0, null])",
    XLA,
)
_add(
    "clear_sharding",
    [_T],
    "Removes t's XLA sharding annotation (engine xla only).",
    "c = clear_sharding(a)",
    XLA,
)
_add(
    "sync",
    [],
    "Runs the XLA computation built so far, torch_xla.sync() (engine xla only).",
    "sync()",
    XLA,
)
# --- ops ---------------------------------------------------------------------------------
for _name, _what in (
    ("add", "Adds a and b"),
    ("sub", "Subtracts b from a"),
    ("mul", "Multiplies a by b"),
):
    _add(
        _name,
        [_p("a", "tensor"), _p("b", "tensor_or_number")],
        f"{_what} element by element (b may be a number; sizes broadcast as in torch).",
        f"z = {_name}(x, y)",
    )
_add(
    "div",
    [_p("a", "tensor"), _p("b", "tensor_or_number")],
    "Divides a by b element by element, giving floating-point results (b may be a number).",
    "z = div(x, 2)",
)
for _name, _doc in (
    ("neg", "Flips the sign of every element of t."),
    ("relu", "Keeps positive elements of t and makes the others 0."),
    ("gelu", "Applies GELU to every element of t (floating-point t only)."),
    ("tanh", "Applies tanh to every element of t."),
    ("sigmoid", "Applies the sigmoid to every element of t."),
    ("exp", "Raises e to every element of t."),
    ("clone", "Copies t (the copy stays in the autograd graph)."),
    ("detach", "Cuts t out of the autograd graph: the same values, not requiring grad."),
    ("ones_like", "A tensor of ones with t's shape and dtype (a DTensor when t is one)."),
    ("zeros_like", "A tensor of zeros with t's shape and dtype (a DTensor when t is one)."),
):
    _add(_name, [_T], _doc, f"y = {_name}(x)")
_add(
    "to",
    [_T, _p("dtype", "dtype")],
    "Converts t to another dtype, such as float16.",
    "h = to(x, float16)",
)
_add(
    "matmul",
    [_p("a", "tensor"), _p("b", "tensor")],
    "Matrix product of a and b, with torch.matmul's rules ([m, k] by [k, p] gives [m, p]; "
    "1-D and batched tensors too).",
    "z = matmul(x, w)",
)
_add(
    "linear",
    [_p("x", "tensor"), _p("weight", "tensor"), _p("bias", "tensor_or_null", None)],
    "Computes x times weight transposed, plus bias: x [..., in] and weight [out, in] give [..., out].",
    "y = linear(x, weight, bias)",
)
for _name, _doc in (
    ("sum", "Adds up t's elements: all of them, or along dim (a dim or a list of dims)."),
    ("mean", "The mean of t's elements: all of them, or along dim (floating-point t only)."),
    ("amax", "The largest of t's elements: all of them, or along dim."),
):
    _add(
        _name,
        [_T, _p("dim", "dims_or_null", None), _p("keepdim", "bool", False)],
        _doc + " keepdim=true keeps the reduced dims with size 1.",
        f"s = {_name}(z, dim=0, keepdim=true)" if _name == "sum" else f"m = {_name}(z, dim=-1)",
    )
for _name, _doc in (
    ("softmax", "Softmax of t along dim: the elements along it become positive and add up to 1."),
    ("log_softmax", "The log of softmax of t along dim."),
):
    _add(_name, [_T, _p("dim", "int")], _doc, f"p = {_name}(z, -1)")
_add(
    "transpose",
    [_T, _p("dim0", "int"), _p("dim1", "int")],
    "Swaps two dims of t.",
    "y = transpose(x, 0, 1)",
)
_add("t", [_T], "Transposes a tensor of at most 2 dims (rows become columns).", "y = t(w)")
_add(
    "permute",
    [_T, _p("dims", "dims")],
    "Puts the dims of t in a new order: dims lists every dim once.",
    "y = permute(x, [1, 0])",
)
_add(
    "reshape",
    [_T, _p("shape", "sizes")],
    "Gives t a new shape with the same number of elements; one size may be -1 (worked "
    "out), and sizes may be expressions in n.",
    "y = reshape(x, [2*n, -1])",
)
_add(
    "flatten",
    [_T, _p("start_dim", "int", 0), _p("end_dim", "int", -1)],
    "Merges the dims from start_dim to end_dim of t into one.",
    "y = flatten(x, start_dim=1)",
)
_add(
    "unsqueeze",
    [_T, _p("dim", "int")],
    "Adds a dim of size 1 to t, at position dim.",
    "y = unsqueeze(x, 0)",
)
_add(
    "squeeze",
    [_T, _p("dim", "dims_or_null", None)],
    "Removes the dims of size 1 from t (all of them, or only dim).",
    "y = squeeze(x, 0)",
)
_add(
    "cat",
    [_p("tensors", "tensors"), _p("dim", "int", 0)],
    "Joins the listed tensors along dim; their other sizes must be equal.",
    "y = cat([a, b], dim=0)",
)
# --- autograd ----------------------------------------------------------------------------
_add(
    "backward",
    [_p("loss", "tensor"), _p("grad", "tensor_or_null", None)],
    "Computes gradients from loss (a single number, or any shape with grad= of that shape); "
    "afterwards x.grad is the gradient of each input x that requires grad.",
    "backward(loss)",
)
# --- modules (kind: module) --------------------------------------------------------------
_add(
    "model",
    [_p("x", "tensor")],
    "Runs the case's module forward on x (kind: module only).",
    "out = model(x)",
)
_add(
    "sgd_step",
    [_p("lr", "number")],
    "One SGD step on every module parameter p: p -= lr * p.grad, then the grads are zeroed "
    "(kind: module only).",
    "sgd_step(0.1)",
)
_add(
    "zero_grad",
    [],
    "Clears the gradients of every module parameter (kind: module only).",
    "zero_grad()",
)
MODULE_CALLS = frozenset({"model", "sgd_step", "zero_grad"})
DTENSOR_CALLS = frozenset(
    {"distribute_tensor", "redistribute", "to_local", "full_tensor", "from_local"}
)


# --- words for messages --------------------------------------------------------------------


def _then(suggestion: str) -> str:
    """A did-you-mean suggestion followed by more words: "; did you mean 'x'? " or "; "."""
    return f"{suggestion} " if suggestion else "; "


def _ordinal(i: int) -> str:
    return {0: "1st", 1: "2nd", 2: "3rd"}.get(i, f"{i + 1}th")


def _describe(value: Any) -> str:
    if isinstance(value, Name):
        return f"the value name {value.text}"
    if isinstance(value, Expr):
        return f"the size {value.text}"
    if isinstance(value, DType):
        return f"the dtype {value.name}"
    if isinstance(value, Placement):
        return f"the placement {value}"
    if isinstance(value, bool) or value is None:
        return format_value(value)
    if isinstance(value, int | float):
        return f"the number {format_value(value)}"
    if isinstance(value, list):
        return f"the list {short(format_value(value), 50)}" if value else "an empty list"
    return short(value)


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "unknown" if shape is None else str(list(shape))


def _rank_text(rank: int) -> str:
    return "no dims (a single number)" if rank == 0 else f"{rank} dim" + ("s" if rank > 1 else "")


@dataclass
class _Tensor:
    """A tensor argument: its name and what is known of it."""

    name: str
    info: ValueInfo

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.info.shape

    @property
    def rank(self) -> int | None:
        return None if self.info.shape is None else len(self.info.shape)

    def described(self) -> str:
        return f"{self.name} (shape {_shape_text(self.shape)})"


class _Ctx:
    """One resolve call: the step, n, the mesh, the values, and where each argument came from."""

    def __init__(
        self,
        spec: CallSpec,
        n: int,
        values: dict[str, ValueInfo],
        mesh: tuple[int, ...],
        mesh_names: tuple[str, ...] | None,
        later: dict[str, int],
        layers: Sequence[tuple[str, Layer]] | None,
    ):
        self.spec, self.call, self.n = spec, spec.name, n
        self.values, self.mesh, self.mesh_names = values, tuple(mesh), mesh_names
        self.later, self.layers = later, layers
        self.where: dict[str, int | str] = {}  # param name -> positional index or keyword

    def fail(self, message: str, param: str | None = None) -> CallError:
        return CallError(message, self.where.get(param) if param else None)

    def usage(self) -> str:
        return f"write {self.spec.signature}, for example: {self.spec.example}"

    def placements_example(self) -> str:
        return "[" + ", ".join(["Replicate()"] * max(1, len(self.mesh))) + "]"

    def place(self, param: str) -> str:
        where = self.where.get(param)
        if isinstance(where, int):
            return f"{self.call}'s {_ordinal(where)} argument"
        return f"{self.call}'s {param}="


# --- binding and kinds ------------------------------------------------------------------------


def _bind(ctx: _Ctx, step: Step) -> dict[str, Any]:
    """Raw argument per parameter name, checked for count, keywords and order."""
    spec = ctx.spec
    positional = [p for p in spec.params if not p.keyword_only]
    bound: dict[str, Any] = {}
    for i, value in enumerate(step.args):
        if i >= len(positional):
            named = [p.name for p in spec.params if p.keyword_only]
            hint = (
                f" ({', '.join(named)} {'is' if len(named) == 1 else 'are'} given by name, such as "
                f"{named[0]}=...)"
                if named
                else ""
            )
            most = len(positional)
            raise CallError(
                f"{ctx.call} takes {'no' if not most else f'at most {most}'} "
                f"argument{'s' if most != 1 else ''} in order, but this step gives "
                f"{len(step.args)}{hint}; {ctx.usage()}",
                i,
            )
        bound[positional[i].name] = value
        ctx.where[positional[i].name] = i
    names = [p.name for p in spec.params]
    optional = [p.name for p in spec.params if not p.required]
    for key, value in step.kwargs.items():
        if key not in names:
            known = f"its keywords are {', '.join(optional)}" if optional else "it has no keywords"
            raise CallError(
                f"{ctx.call} has no keyword '{key}'{_then(did_you_mean(key, names))}{known}; "
                f"{ctx.usage()}",
                key,
            )
        if key in bound:
            raise CallError(
                f"{ctx.call}'s {key} is given twice: as the {_ordinal(ctx.where[key])} argument "
                f"(counted in order) and as {key}=; give it once",
                key,
            )
        bound[key] = value
        ctx.where[key] = key
    missing = [p.name for p in spec.params if p.required and p.name not in bound]
    if missing:
        needs = [p.name for p in spec.params if p.required]
        raise CallError(
            f"{ctx.call} needs {len(needs)} argument{'s' if len(needs) != 1 else ''} "
            f"({', '.join(needs)}), but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing; {ctx.usage()}"
        )
    return bound


def _lookup(ctx: _Ctx, name: Name, param: str) -> _Tensor:
    text = name.text
    info = ctx.values.get(text)
    if info is not None:
        return _Tensor(text, info)
    if text in ctx.later:
        raise ctx.fail(
            f"'{text}' is made later, at step {ctx.later[text]}; use it after that", param
        )
    base = text.removesuffix(".grad")
    if base != text and base in ctx.values:
        if not ctx.values[base].requires_grad:
            raise ctx.fail(
                f"{base} does not require grad, so it never gets {text}; give {base} "
                "requires_grad: true",
                param,
            )
        raise ctx.fail(
            f"'{text}' exists only after backward(...): call backward first, such as "
            "backward(loss), then use it",
            param,
        )
    known = [k for k in ctx.values]
    so_far = f"values so far: {', '.join(known)}" if known else "no values are made yet"
    raise ctx.fail(f"'{text}' is not a value here{_then(did_you_mean(text, known))}{so_far}", param)


def _int(ctx: _Ctx, value: Any, param: str) -> int:
    if isinstance(value, Expr):
        try:
            return value.evaluate(ctx.n)
        except expr.ExprError as exc:
            raise ctx.fail(f"{ctx.call}: {exc}", param) from None
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, Expr) or (isinstance(value, int) and not isinstance(value, bool))


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _is_placements(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, Placement) for v in value)


def _spec_entry_ok(value: Any) -> bool:
    if value is None or isinstance(value, Name) or _is_int(value):
        return True
    return isinstance(value, list) and all(isinstance(v, Name) or _is_int(v) for v in value)


def _kind_ok(ctx: _Ctx, kind: str, value: Any) -> bool:
    if kind.endswith("_or_null") and value is None:
        return True
    base = kind.removesuffix("_or_null")
    checks: dict[str, Callable[[Any], bool]] = {
        "tensor": lambda v: isinstance(v, Name),
        "tensor_or_number": lambda v: isinstance(v, Name) or _is_number(v),
        "tensors": lambda v: (
            isinstance(v, list) and bool(v) and all(isinstance(t, Name) for t in v)
        ),
        "placements": _is_placements,
        "dtype": lambda v: isinstance(v, DType),
        "int": _is_int,
        "dims": lambda v: isinstance(v, list) and all(_is_int(d) for d in v),
        "sizes": lambda v: isinstance(v, list) and all(_is_int(d) for d in v),
        "bool": lambda v: isinstance(v, bool),
        "number": _is_number,
        "spec": lambda v: isinstance(v, list) and all(_spec_entry_ok(e) for e in v),
    }
    if base == "dims":  # dims_or_null: one dim or a list of them
        return _is_int(value) or checks["dims"](value)
    return checks[base](value)


def _type_error(ctx: _Ctx, param: Param, value: Any) -> CallError:
    expected = _EXPECTED[param.kind].format(placements=ctx.placements_example())
    hint = ""
    if param.kind.startswith("placements") and isinstance(value, Placement):
        hint = f"; put it in a list: [{value}]"
    elif param.kind == "tensors" and isinstance(value, Name):
        hint = f"; put it in a list: [{value.text}]"
    elif param.kind == "tensors" and value == []:
        hint = "; list at least one value"
    elif param.kind.startswith("tensor") and isinstance(value, Placement | list):
        hint = "; to distribute a value, use distribute_tensor or redistribute"
    return ctx.fail(
        f"{ctx.place(param.name)} must be {expected}, not {_describe(value)}{hint}", param.name
    )


def _to_json(ctx: _Ctx, value: Any, param: str) -> Any:
    if isinstance(value, Name):
        return {"value": value.text}
    if isinstance(value, Placement):
        return value.as_json()
    if isinstance(value, DType):
        return value.name
    if isinstance(value, Expr):
        return _int(ctx, value, param)
    if isinstance(value, list):
        return [_to_json(ctx, v, param) for v in value]
    return value


def _spec_json(ctx: _Ctx, value: Any) -> Any:
    """mark_sharding's spec: axis names stay names (text), sizes become numbers."""
    if isinstance(value, Name):
        return value.text
    if isinstance(value, list):
        return [_spec_json(ctx, v) for v in value]
    return _to_json(ctx, value, "spec")


def _semantic(ctx: _Ctx, param: Param, value: Any) -> Any:
    """The argument as the rules use it: tensors looked up, sizes evaluated."""
    if value is None:
        return None
    kind = param.kind.removesuffix("_or_null")
    if kind == "tensor" or (kind == "tensor_or_number" and isinstance(value, Name)):
        return _lookup(ctx, value, param.name)
    if kind == "tensors":
        return [_lookup(ctx, v, param.name) for v in value]
    if kind == "placements":
        return tuple(value)
    if kind == "dtype":
        return value.name
    if kind in ("int", "number", "tensor_or_number", "dims", "sizes"):
        if isinstance(value, list):
            return [_int(ctx, v, param.name) for v in value]
        return _int(ctx, value, param.name)
    if kind == "spec":
        return value  # checked by mark_sharding's rule
    return value


# --- resolve ---------------------------------------------------------------------------------------


def resolve(
    step: Step,
    n: int,
    values: dict[str, ValueInfo],
    mesh: tuple[int, ...],
    *,
    mesh_names: tuple[str, ...] | None = None,
    later: dict[str, int] | None = None,
    lenient: bool = False,
    layers: Sequence[tuple[str, Layer]] | None = None,
) -> Resolved:
    """Check ``step`` at device count ``n``; raises :class:`CallError` in plain words.

    ``values`` are the values made so far; ``later`` maps names made by later steps to
    their step number. ``lenient`` (a step expected to raise) checks only names, argument
    counts and kinds; the result is then None. ``layers`` is a module case's module.
    """
    spec = CALLS.get(step.call)
    if spec is None:
        raise CallError(
            f"'{step.call}' is not a call steps can make{_then(did_you_mean(step.call, CALLS))}"
            f"the calls are: {', '.join(CALLS)}"
        )
    ctx = _Ctx(spec, n, values, mesh, mesh_names, later or {}, layers)
    if spec.name in MODULE_CALLS and layers is None:
        raise CallError(
            f"{spec.name} works on the case's module, and this case has none; it is for "
            "kind: module cases, with module: layers"
        )
    raw = _bind(ctx, step)
    sem: dict[str, Any] = {}
    for param in spec.params:
        if param.name not in raw:
            sem[param.name] = None if param.default is _REQUIRED else param.default
            continue
        value = raw[param.name]
        if not _kind_ok(ctx, param.kind, value):
            raise _type_error(ctx, param, value)
        sem[param.name] = _semantic(ctx, param, value)
    # Required arguments go in order, optional ones by name (torch's and the worker's names).
    args: list = []
    kwargs: dict[str, Any] = {}
    for param in spec.params:
        if param.name not in raw:
            continue
        if param.kind == "spec":
            value = _spec_json(ctx, raw[param.name])
        else:
            value = _to_json(ctx, raw[param.name], param.name)
        if param.required:
            args.append(value)
        else:
            kwargs[param.name] = value
    if lenient:
        return Resolved(spec.name, args, kwargs, None, {}, spec.engines)
    result, defines = _RULES[spec.name](ctx, sem)
    return Resolved(spec.name, args, kwargs, result, defines, spec.engines)


# --- shared rules ----------------------------------------------------------------------------------


def _wrap(ctx: _Ctx, dim: int, t: _Tensor, param: str, extra: int = 0) -> int | None:
    """``dim`` made non-negative for ``t`` (rank + extra positions); None when rank is unknown."""
    if t.rank is None:
        return None
    size = max(t.rank + extra, 1)
    if not -size <= dim < size:
        last = f"0 to {size - 1}, or -1 for the last" if size > 1 else "0 or -1"
        raise ctx.fail(
            f"{ctx.call}: dim {dim} is out of range for {t.name}, which has "
            f"{_rank_text(t.rank)} (shape {_shape_text(t.shape)}); use {last}",
            param,
        )
    return dim % size


def _promote(a: str, b: str) -> str:
    ca, cb = _CATEGORY[a], _CATEGORY[b]
    if ca != cb:
        return a if ca > cb else b
    if a == b:
        return a
    if {a, b} == {"float16", "bfloat16"}:
        return "float32"
    return a if _BITS[a] > _BITS[b] else b


def _result_dtype(operands: list[_Tensor | int | float]) -> str:
    """torch's type promotion: tensors with dims, then 0-dim tensors, then Python numbers."""
    dims = [o.info.dtype for o in operands if isinstance(o, _Tensor) and o.rank != 0]
    zero = [o.info.dtype for o in operands if isinstance(o, _Tensor) and o.rank == 0]
    numbers = [o for o in operands if not isinstance(o, _Tensor)]
    result = _fold(dims) or _fold(zero) or "int64"
    if dims and zero and _CATEGORY[_fold(zero) or "bool"] > _CATEGORY[result]:
        result = _fold(zero) or result
    for number in numbers:
        category = 2 if isinstance(number, float) else 0 if isinstance(number, bool) else 1
        if category > _CATEGORY[result]:
            result = _SCALAR_DTYPE[category]
    return result


def _fold(dtypes: list[str]) -> str | None:
    out: str | None = None
    for dtype in dtypes:
        out = dtype if out is None else _promote(out, dtype)
    return out


def _op(inputs: Sequence[_Tensor | None], shape: tuple[int, ...] | None, dtype: str) -> ValueInfo:
    """An op's result: a DTensor when any input is, requires grad when any input does."""
    tensors = [t for t in inputs if t is not None]
    grad = dtype in FLOATS and any(t.info.requires_grad for t in tensors)
    dtensor = any(t.info.dtensor for t in tensors)
    return ValueInfo(shape, dtype, dtensor, None, grad, not grad)


def _broadcast(ctx: _Ctx, a: _Tensor, b: _Tensor) -> tuple[int, ...] | None:
    if a.shape is None or b.shape is None:
        return None
    out = []
    for i in range(1, max(len(a.shape), len(b.shape)) + 1):
        x = a.shape[-i] if i <= len(a.shape) else 1
        y = b.shape[-i] if i <= len(b.shape) else 1
        if x != y and 1 not in (x, y):
            raise ctx.fail(
                f"{ctx.call}: the sizes don't fit: {list(a.shape)} and {list(b.shape)} can't be "
                f"combined; from the right, each pair of sizes must be equal or one of them 1 "
                f"({x} and {y} are neither)",
                "b",
            )
        out.append(max(x, y) if 0 not in (x, y) else 0)
    return tuple(reversed(out))


def _check_placements(
    ctx: _Ctx, places: tuple[Placement, ...], t: _Tensor, param: str
) -> tuple[Placement, ...]:
    """One placement per mesh axis, Shard dims inside t; returned with dims made non-negative."""
    if len(places) != len(ctx.mesh):
        axes = f"{len(ctx.mesh)} ax{'is' if len(ctx.mesh) == 1 else 'es'}"
        raise ctx.fail(
            f"{ctx.call}: the mesh {list(ctx.mesh)} has {axes}, so {param} needs "
            f"{len(ctx.mesh)} placement{'s' if len(ctx.mesh) != 1 else ''}, one per axis, not "
            f"{len(places)}; for example {ctx.placements_example()}",
            param,
        )
    if t.rank is None:
        return places
    out = []
    for p in places:
        if p.kind == "shard" and not -t.rank <= (p.dim or 0) < t.rank:
            use = f"Shard(0) to Shard({t.rank - 1}), or Shard(-1) for the last" if t.rank else ""
            raise ctx.fail(
                f"{ctx.call}: {p} is out of range for {t.name}, which has {_rank_text(t.rank)} "
                f"(shape {_shape_text(t.shape)})" + (f"; use {use}" if use else ""),
                param,
            )
        out.append(p.normalized(t.rank))
    return tuple(out)


def _needs_dtensor(ctx: _Ctx, t: _Tensor, param: str) -> None:
    if not t.info.dtensor:
        raise ctx.fail(
            f"{ctx.call} needs a distributed value (a DTensor), but {t.name} is a plain tensor; "
            f"make one first, such as d = distribute_tensor({t.name}, {ctx.placements_example()})",
            param,
        )


def _needs_plain(ctx: _Ctx, t: _Tensor, param: str, instead: str) -> None:
    if t.info.dtensor:
        raise ctx.fail(
            f"{ctx.call} takes a plain tensor, but {t.name} is already distributed (a DTensor); "
            f"{instead}",
            param,
        )


def _needs_float(ctx: _Ctx, t: _Tensor, param: str = "t") -> None:
    if t.info.dtype not in FLOATS:
        raise ctx.fail(
            f"{ctx.call} needs a floating-point tensor ({', '.join(FLOATS)}), but {t.name} is "
            f"{t.info.dtype}; convert it first, such as f = to({t.name}, float32)",
            param,
        )


Rule = Callable[[_Ctx, dict[str, Any]], tuple[ValueInfo | None, dict[str, ValueInfo]]]
_RULES: dict[str, Rule] = {}


def _rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            _RULES[name] = fn
        return fn

    return register


# --- DTensor rules --------------------------------------------------------------------------------


def _grad_placements(ctx: _Ctx, sem: dict[str, Any], d: _Tensor) -> None:
    if sem["grad_placements"] is not None:
        _check_placements(ctx, sem["grad_placements"], d, "grad_placements")


@_rule("distribute_tensor")
def _distribute_tensor(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    _needs_plain(ctx, t, "t", f"use redistribute({t.name}, [...]) to change its placements")
    places = _check_placements(ctx, sem["placements"], t, "placements")
    if any(p.kind == "partial" for p in places):
        raise ctx.fail(
            "distribute_tensor can't use a Partial placement: DTensor refuses it; to check that "
            "it raises, give this step an error: expectation",
            "placements",
        )
    rank = sem["src_data_rank"]
    devices = math.prod(ctx.mesh)
    if rank is not None and not 0 <= rank < devices:
        raise ctx.fail(
            f"distribute_tensor: src_data_rank={rank} is not a device; use 0 to {devices - 1}, "
            "or null to split locally",
            "src_data_rank",
        )
    info = t.info
    return ValueInfo(info.shape, info.dtype, True, places, info.requires_grad, True), {}


@_rule("redistribute")
def _redistribute(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    d: _Tensor = sem["d"]
    _needs_dtensor(ctx, d, "d")
    places = _check_placements(ctx, sem["placements"], d, "placements")
    current = d.info.placements
    for axis, p in enumerate(places):
        if p.kind == "partial" and (current is None or current[axis] != p):
            raise ctx.fail(
                f"redistribute can't make {p} (DTensor refuses: redistributing to Partial is for "
                "its internal use); to check that it raises, give this step an error: expectation",
                "placements",
            )
    grad = d.info.requires_grad
    return ValueInfo(d.shape, d.info.dtype, True, places, grad, not grad), {}


@_rule("to_local")
def _to_local(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    d: _Tensor = sem["d"]
    _needs_dtensor(ctx, d, "d")
    _grad_placements(ctx, sem, d)
    shape = None
    if d.info.placements is not None and d.shape is not None:
        shape, _ = oracle.shard_of(d.shape, ctx.mesh, (0,) * len(ctx.mesh), d.info.placements)
    grad = d.info.requires_grad
    return ValueInfo(shape, d.info.dtype, False, None, grad, not grad), {}


@_rule("full_tensor")
def _full_tensor(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    d: _Tensor = sem["d"]
    _needs_dtensor(ctx, d, "d")
    _grad_placements(ctx, sem, d)
    grad = d.info.requires_grad
    return ValueInfo(d.shape, d.info.dtype, False, None, grad, not grad), {}


@_rule("from_local")
def _from_local(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    _needs_plain(ctx, t, "t", f"take its piece first, such as p = to_local({t.name})")
    places = _check_placements(ctx, sem["placements"], t, "placements")
    shape: tuple[int, ...] | None = None
    if sem["shape"] is not None:
        shape = tuple(sem["shape"])
        if t.rank is not None and len(shape) != t.rank:
            raise ctx.fail(
                f"from_local: shape= has {len(shape)} sizes, but {t.name} has "
                f"{_rank_text(t.rank)} (shape {_shape_text(t.shape)}); give one size per dim",
                "shape",
            )
        if any(s < 0 for s in shape):
            raise ctx.fail(
                f"from_local: shape= {list(shape)} has a negative size; sizes are 0 or more",
                "shape",
            )
    elif t.shape is not None:
        grown = list(t.shape)
        for axis, p in enumerate(places):
            if p.kind == "shard" and p.dim is not None:
                grown[p.dim] *= ctx.mesh[axis]
        shape = tuple(grown)
    grad = t.info.requires_grad
    return ValueInfo(shape, t.info.dtype, True, places, grad, not grad), {}


# --- XLA rules ---------------------------------------------------------------------------------------


@_rule("mark_sharding")
def _mark_sharding(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    spec: list = sem["spec"]
    if t.rank is not None and len(spec) != t.rank:
        raise ctx.fail(
            f"mark_sharding: spec has {len(spec)} entr{'y' if len(spec) == 1 else 'ies'}, but "
            f"{t.name} has {_rank_text(t.rank)} (shape {_shape_text(t.shape)}); give one entry "
            "per tensor dim: a mesh axis, a list of axes, or null",
            "spec",
        )
    seen: set[int] = set()
    for entry in spec:
        for axis in entry if isinstance(entry, list) else [entry]:
            if axis is None:
                continue
            index = _mesh_axis(ctx, axis)
            if index in seen:
                raise ctx.fail(
                    f"mark_sharding: mesh axis {_axis_text(ctx, index)} is used twice in the "
                    "spec; each axis can split at most one tensor dim",
                    "spec",
                )
            seen.add(index)
    info = t.info
    return ValueInfo(info.shape, info.dtype, info.dtensor, None, info.requires_grad, info.leaf), {}


def _axis_text(ctx: _Ctx, index: int) -> str:
    return ctx.mesh_names[index] if ctx.mesh_names else str(index)


def _mesh_axis(ctx: _Ctx, axis: Any) -> int:
    rank = len(ctx.mesh)
    if isinstance(axis, Name):
        if not ctx.mesh_names:
            raise ctx.fail(
                f"mark_sharding: '{axis.text}' names a mesh axis, but the mesh has no names; use "
                f"axis numbers 0 to {rank - 1}, or name the axes: mesh: {{shape: [...], names: "
                "[...]}",
                "spec",
            )
        if axis.text not in ctx.mesh_names:
            raise ctx.fail(
                f"mark_sharding: '{axis.text}' is not a mesh axis"
                f"{did_you_mean(axis.text, ctx.mesh_names)}; the mesh's axes are "
                f"{', '.join(ctx.mesh_names)}",
                "spec",
            )
        return ctx.mesh_names.index(axis.text)
    index = _int(ctx, axis, "spec")
    if not 0 <= index < rank:
        raise ctx.fail(
            f"mark_sharding: mesh axis {index} doesn't exist; the mesh {list(ctx.mesh)} has "
            f"axes 0 to {rank - 1}",
            "spec",
        )
    return index


@_rule("clear_sharding")
def _clear_sharding(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    info = sem["t"].info
    return ValueInfo(info.shape, info.dtype, info.dtensor, None, info.requires_grad, info.leaf), {}


@_rule("sync", "zero_grad")
def _nothing(ctx: _Ctx, sem: dict[str, Any]) -> tuple[None, dict]:
    return None, {}


# --- op rules ------------------------------------------------------------------------------------------


@_rule("add", "sub", "mul", "div")
def _binary(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    a: _Tensor = sem["a"]
    b = sem["b"]
    if isinstance(b, _Tensor):
        shape = _broadcast(ctx, a, b)
        dtype = _result_dtype([a, b])
    else:
        shape, dtype = a.shape, _result_dtype([a, b])
    if ctx.call == "div" and dtype not in FLOATS:
        dtype = "float32"
    if ctx.call == "sub" and dtype == "bool":
        raise ctx.fail("sub doesn't work on bool tensors; convert them first, such as to(x, int64)")
    return _op([a, b if isinstance(b, _Tensor) else None], shape, dtype), {}


@_rule("neg", "relu", "gelu", "tanh", "sigmoid", "exp", "clone")
def _unary(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    dtype = t.info.dtype
    if ctx.call == "gelu":
        _needs_float(ctx, t)
    if ctx.call in ("neg", "relu") and dtype == "bool":
        raise ctx.fail(
            f"{ctx.call} doesn't work on a bool tensor; convert it first, such as "
            f"to({t.name}, float32)",
            "t",
        )
    if ctx.call in ("tanh", "sigmoid", "exp") and dtype not in FLOATS:
        dtype = "float32"
    return _op([t], t.shape, dtype), {}


@_rule("detach", "ones_like", "zeros_like")
def _fresh(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    info = sem["t"].info
    return ValueInfo(info.shape, info.dtype, info.dtensor, None, False, True), {}


@_rule("to")
def _to(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    dtype = sem["dtype"]
    if dtype == t.info.dtype:
        return _same_object(t.info), {}
    return _op([t], t.shape, dtype), {}


def _same_object(info: ValueInfo) -> ValueInfo:
    """``to`` with the same dtype returns the tensor itself; its placements aren't re-asked."""
    return ValueInfo(info.shape, info.dtype, info.dtensor, None, info.requires_grad, info.leaf)


@_rule("matmul")
def _matmul(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    a: _Tensor = sem["a"]
    b: _Tensor = sem["b"]
    _same_dtype(ctx, a, b, "b")
    return _op([a, b], _matmul_shape(ctx, a, b), a.info.dtype), {}


def _same_dtype(ctx: _Ctx, a: _Tensor, b: _Tensor, param: str) -> None:
    if a.info.dtype != b.info.dtype:
        raise ctx.fail(
            f"{ctx.call} needs tensors of one dtype, but {a.name} is {a.info.dtype} and {b.name} "
            f"is {b.info.dtype}; convert one first, such as to({b.name}, {a.info.dtype})",
            param,
        )


def _matmul_shape(ctx: _Ctx, a: _Tensor, b: _Tensor) -> tuple[int, ...] | None:
    if a.shape is None or b.shape is None:
        return None
    for t, param in ((a, "a"), (b, "b")):
        if not t.shape:
            raise ctx.fail(
                f"matmul needs tensors with at least one dim, but {t.name} is a single number "
                f"(shape []); use mul({a.name}, {b.name})",
                param,
            )
    sa, sb = a.shape, b.shape
    k_a = sa[-1]
    k_b = sb[0] if len(sb) == 1 else sb[-2]
    if k_a != k_b:
        which = (
            "the size of the second"
            if len(sb) == 1
            else "the first size of the second"
            if len(sb) == 2
            else "the second-to-last size of the second"
        )
        raise ctx.fail(
            f"matmul: the sizes don't fit: {list(sa)} @ {list(sb)} needs the last size of the "
            f"first ({k_a}) to equal {which} ({k_b})",
            "b",
        )
    if len(sa) == 1 and len(sb) == 1:
        return ()
    if len(sb) == 1:
        return sa[:-1]
    if len(sa) == 1:
        return (*sb[:-2], sb[-1])
    batch_a = _Tensor(a.name, _with_shape(a.info, sa[:-2]))
    batch_b = _Tensor(b.name, _with_shape(b.info, sb[:-2]))
    try:
        batch = _broadcast(ctx, batch_a, batch_b) or ()
    except CallError:
        raise ctx.fail(
            f"matmul: the sizes don't fit: {list(sa)} @ {list(sb)} have batch sizes "
            f"{list(sa[:-2])} and {list(sb[:-2])}, which must be equal or 1 from the right",
            "b",
        ) from None
    return (*batch, sa[-2], sb[-1])


def _with_shape(info: ValueInfo, shape: tuple[int, ...]) -> ValueInfo:
    return ValueInfo(shape, info.dtype, info.dtensor, None, info.requires_grad, info.leaf)


@_rule("linear")
def _linear(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    x: _Tensor = sem["x"]
    w: _Tensor = sem["weight"]
    b: _Tensor | None = sem["bias"]
    _same_dtype(ctx, x, w, "weight")
    if b is not None:
        _same_dtype(ctx, x, b, "bias")
    shape = None
    if x.shape is not None and w.shape is not None:
        if not x.shape or len(w.shape) not in (1, 2):
            raise ctx.fail(
                f"linear needs x with at least one dim and a weight of 1 or 2 dims [out, in], "
                f"but {x.described()} and {w.described()}",
                "weight" if x.shape else "x",
            )
        if x.shape[-1] != w.shape[-1]:
            raise ctx.fail(
                f"linear: the sizes don't fit: x {list(x.shape)} ends in {x.shape[-1]}, but the "
                f"weight {list(w.shape)} takes {w.shape[-1]} (weight is [out, in])",
                "weight",
            )
        shape = (*x.shape[:-1], w.shape[0]) if len(w.shape) == 2 else x.shape[:-1]
    if b is not None and shape is not None and b.shape is not None:
        out = _Tensor("the result", _with_shape(x.info, shape))
        try:
            joined = _broadcast(ctx, out, b)
        except CallError:
            joined = None
        if joined != shape:
            raise ctx.fail(
                f"linear: the bias {list(b.shape)} doesn't fit the result {list(shape)}; a bias "
                f"is usually [out], here [{shape[-1] if shape else 1}]",
                "bias",
            )
    return _op([x, w, b], shape, x.info.dtype), {}


def _dims(ctx: _Ctx, raw: Any, t: _Tensor, param: str) -> list[int] | None:
    """A dim or a list of dims, non-negative, each once; None when t's rank is unknown."""
    dims = raw if isinstance(raw, list) else [raw]
    out = [_wrap(ctx, d, t, param) for d in dims]
    if t.rank is None:
        return None
    wrapped = [d for d in out if d is not None]
    if len(set(wrapped)) != len(wrapped):
        raise ctx.fail(f"{ctx.call}: dim lists the same dim twice ({raw}); list each once", param)
    return wrapped


@_rule("sum", "mean", "amax")
def _reduce(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    dim, keepdim = sem["dim"], sem["keepdim"]
    if ctx.call == "mean":
        _needs_float(ctx, t)
    if dim == []:
        raise ctx.fail(
            f"{ctx.call}: dim=[] lists no dims; leave dim out to reduce over every dim", "dim"
        )
    dtype = t.info.dtype
    if ctx.call == "sum" and dtype not in FLOATS:
        dtype = "int64"  # torch sums integers and bools as int64
    shape: tuple[int, ...] | None = None
    if dim is None and ctx.call != "amax":
        shape = ()  # torch.sum(t) and torch.mean(t) ignore keepdim without dim
    elif t.shape is not None:
        dims = (list(range(len(t.shape))) if dim is None else _dims(ctx, dim, t, "dim")) or []
        if dim is not None and not t.shape:
            shape = ()
        else:
            shape = tuple(
                (1 if keepdim else None) if i in dims else s for i, s in enumerate(t.shape)
            )
            shape = tuple(s for s in shape if s is not None)
    elif dim is not None:
        _dims(ctx, dim, t, "dim")
    return _op([t], shape, dtype), {}


@_rule("softmax", "log_softmax")
def _softmax(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    _needs_float(ctx, t)
    _wrap(ctx, sem["dim"], t, "dim")
    return _op([t], t.shape, t.info.dtype), {}


@_rule("transpose")
def _transpose(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    d0 = _wrap(ctx, sem["dim0"], t, "dim0")
    d1 = _wrap(ctx, sem["dim1"], t, "dim1")
    shape = None
    if t.shape is not None and d0 is not None and d1 is not None:
        grid = list(t.shape)
        if grid:
            grid[d0], grid[d1] = grid[d1], grid[d0]
        shape = tuple(grid)
    return _op([t], shape, t.info.dtype), {}


@_rule("t")
def _t(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    if t.rank is not None and t.rank > 2:
        raise ctx.fail(
            f"t works on tensors of at most 2 dims, but {t.described()} has {t.rank}; use "
            f"transpose({t.name}, 0, 1) or permute",
            "t",
        )
    shape = None if t.shape is None else tuple(reversed(t.shape))
    return _op([t], shape, t.info.dtype), {}


@_rule("permute")
def _permute(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    dims: list[int] = sem["dims"]
    if t.shape is None:
        return _op([t], None, t.info.dtype), {}
    if len(dims) != len(t.shape):
        raise ctx.fail(
            f"permute: dims lists {len(dims)} dim{'s' if len(dims) != 1 else ''}, but "
            f"{t.described()} has {len(t.shape)}; list every dim once, such as "
            f"{list(reversed(range(len(t.shape))))}",
            "dims",
        )
    wrapped = _dims(ctx, dims, t, "dims") or []
    return _op([t], tuple(t.shape[d] for d in wrapped), t.info.dtype), {}


@_rule("reshape")
def _reshape(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    sizes: list[int] = sem["shape"]
    if sizes.count(-1) > 1:
        raise ctx.fail("reshape: only one size may be -1 (worked out from the others)", "shape")
    if any(s < -1 for s in sizes):
        raise ctx.fail(
            f"reshape: {sizes} has a negative size; sizes are 0 or more, with one -1 allowed",
            "shape",
        )
    if t.shape is None:
        return _op([t], None if -1 in sizes else tuple(sizes), t.info.dtype), {}
    count = math.prod(t.shape)
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if known == 0 or count % known:
            raise ctx.fail(
                f"reshape: {t.described()} has {count} elements, which can't be shaped as "
                f"{sizes}: the other sizes multiply to {known}, which doesn't divide {count}",
                "shape",
            )
        sizes = [count // known if s == -1 else s for s in sizes]
    elif known != count:
        raise ctx.fail(
            f"reshape: {t.described()} has {count} elements, but {sizes} holds {known}; the "
            "counts must be equal (one size may be -1 to work it out)",
            "shape",
        )
    return _op([t], tuple(sizes), t.info.dtype), {}


@_rule("flatten")
def _flatten(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    start = _wrap(ctx, sem["start_dim"], t, "start_dim")
    end = _wrap(ctx, sem["end_dim"], t, "end_dim")
    if t.shape is None or start is None or end is None:
        return _op([t], None, t.info.dtype), {}
    if start > end:
        raise ctx.fail(
            f"flatten: start_dim ({sem['start_dim']}) comes after end_dim ({sem['end_dim']}) "
            f"for {t.described()}",
            "start_dim",
        )
    if not t.shape:
        return _op([t], (1,), t.info.dtype), {}
    shape = (*t.shape[:start], math.prod(t.shape[start : end + 1]), *t.shape[end + 1 :])
    return _op([t], shape, t.info.dtype), {}


@_rule("unsqueeze")
def _unsqueeze(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    dim = _wrap(ctx, sem["dim"], t, "dim", extra=1)
    if t.shape is None or dim is None:
        return _op([t], None, t.info.dtype), {}
    return _op([t], (*t.shape[:dim], 1, *t.shape[dim:]), t.info.dtype), {}


@_rule("squeeze")
def _squeeze(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    t: _Tensor = sem["t"]
    if t.shape is None:
        if sem["dim"] is not None:
            _dims(ctx, sem["dim"], t, "dim")
        return _op([t], None, t.info.dtype), {}
    dims = range(len(t.shape)) if sem["dim"] is None else _dims(ctx, sem["dim"], t, "dim") or []
    shape = tuple(s for i, s in enumerate(t.shape) if not (i in dims and s == 1))
    return _op([t], shape, t.info.dtype), {}


@_rule("cat")
def _cat(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    tensors: list[_Tensor] = sem["tensors"]
    first = tensors[0]
    dtype = _result_dtype(list(tensors))
    dim = _wrap(ctx, sem["dim"], first, "dim")
    known = [t for t in tensors if t.shape is not None]
    if len(known) != len(tensors) or dim is None:
        return _op(tensors, None, dtype), {}
    if not first.shape:
        raise ctx.fail(
            f"cat can't join single numbers (shape []) such as {first.name}; use "
            f"unsqueeze({first.name}, 0) first",
            "tensors",
        )
    total = 0
    for t in tensors:
        assert t.shape is not None
        same = len(t.shape) == len(first.shape) and all(
            a == b for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=True)) if i != dim
        )
        if not same:
            raise ctx.fail(
                f"cat: the sizes don't fit: {first.described()} and {t.described()} must match "
                f"in every dim except dim {sem['dim']}",
                "tensors",
            )
        total += t.shape[dim]
    shape = (*first.shape[:dim], total, *first.shape[dim + 1 :])
    return _op(tensors, shape, dtype), {}


# --- autograd and modules ---------------------------------------------------------------------------


@_rule("backward")
def _backward(ctx: _Ctx, sem: dict[str, Any]) -> tuple[None, dict[str, ValueInfo]]:
    loss: _Tensor = sem["loss"]
    grad: _Tensor | None = sem["grad"]
    if not loss.info.requires_grad:
        raise ctx.fail(
            f"backward: {loss.name} does not require grad, so there are no gradients to compute "
            "(torch: element 0 of tensors does not require grad and does not have a grad_fn); "
            "start from a value made from an input with requires_grad: true",
            "loss",
        )
    if grad is None and loss.shape is not None and loss.shape != ():
        raise ctx.fail(
            f"backward needs a single number, but {loss.described()} is not one; reduce it first, "
            f"such as loss = sum({loss.name}), or pass grad=g with g = ones_like({loss.name})",
            "loss",
        )
    if grad is not None and None not in (grad.shape, loss.shape) and grad.shape != loss.shape:
        raise ctx.fail(
            f"backward: grad {grad.described()} must have the shape of {loss.described()}",
            "grad",
        )
    defines = {
        f"{name}.grad": ValueInfo(info.shape, info.dtype, info.dtensor, None, False, True)
        for name, info in ctx.values.items()
        if info.leaf and info.requires_grad and not name.endswith(".grad")
    }
    return None, defines


@_rule("model")
def _model(ctx: _Ctx, sem: dict[str, Any]) -> tuple[ValueInfo, dict]:
    x: _Tensor = sem["x"]
    layers = list(ctx.layers or [])
    shape = x.shape
    dtype = x.info.dtype
    if layers and shape is not None:
        name, first = layers[0]
        if first.kind == "Embedding":
            if dtype not in ("int32", "int64"):
                raise ctx.fail(
                    f"model: its first layer {name} = {first} takes token indices (int64), but "
                    f"{x.name} is {dtype}",
                    "x",
                )
        elif not shape:
            raise ctx.fail(f"model: {x.name} is a single number; give it at least one dim", "x")
        else:
            problem = first.input_problem(list(shape), what=x.name)
            if problem:
                raise ctx.fail(f"model: {problem}", "x")
        try:
            shape = output_shapes(layers, tuple(shape))[-1]
        except LayerError as exc:
            raise ctx.fail(f"model: {exc}", "x") from None
    if layers and layers[0][1].kind == "Embedding":
        dtype = "float32"
    return ValueInfo(shape, dtype, True, None, True, False), {}


@_rule("sgd_step")
def _sgd_step(ctx: _Ctx, sem: dict[str, Any]) -> tuple[None, dict]:
    if sem["lr"] <= 0:
        raise ctx.fail(f"sgd_step: lr={sem['lr']} must be more than 0, such as 0.1", "lr")
    return None, {}
