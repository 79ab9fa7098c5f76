"""The layer allowlist and its tiny grammar: ``Name(arg, ...)``, never ``eval``.

Arguments follow torch's names and order; any of them may also be written ``name=value``.
Sizes may be expressions in n. Pure Python (no torch): ``engine_layers`` builds the modules,
and ``output_shapes`` works out each layer's output shape as torch would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from . import expr
from .words import close_match
from .yamlload import short

_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.S)
_NUMBER = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")

Value = int | float | bool
ArgKind = Literal["size", "count", "dim", "prob", "flag"]


@dataclass(frozen=True)
class Arg:
    """One argument, as torch names it.

    ``kind``: size (whole number >= 1, may use n), count (>= 0), dim (any whole number),
    prob (a number from 0 to 1), flag (true/false). ``default`` None: the argument is required.
    """

    name: str
    kind: ArgKind
    default: Value | None = None
    keyword_only: bool = False


def _flag(name: str) -> Arg:
    return Arg(name, "flag", True, keyword_only=True)


_CONV = (
    Arg("in_channels", "size"),
    Arg("out_channels", "size"),
    Arg("kernel_size", "size"),
    Arg("stride", "size", 1),
    Arg("padding", "count", 0),
    _flag("bias"),
)
# name -> its arguments in torch's order (only those shardspec offers)
ARGS: dict[str, tuple[Arg, ...]] = {
    "Linear": (Arg("in_features", "size"), Arg("out_features", "size"), _flag("bias")),
    "ReLU": (),
    "GELU": (),
    "Tanh": (),
    "Sigmoid": (),
    "LayerNorm": (Arg("normalized_shape", "size"),),
    "Embedding": (Arg("num_embeddings", "size"), Arg("embedding_dim", "size")),
    "TransformerEncoderLayer": (
        Arg("d_model", "size"),
        Arg("nhead", "size"),
        Arg("dim_feedforward", "size"),
        Arg("dropout", "prob", 0.0),
        _flag("batch_first"),
        _flag("bias"),
    ),
    "Conv1d": _CONV,
    "Conv2d": _CONV,
    "Dropout": (Arg("p", "prob"),),
    "Softmax": (Arg("dim", "dim"),),
    "SiLU": (),
    "RMSNorm": (Arg("normalized_shape", "size"),),
    "Flatten": (Arg("start_dim", "dim", 1), Arg("end_dim", "dim", -1)),
    "Identity": (),
}
_SIGNATURE = {
    "Linear": "Linear(in, out[, bias=false])",
    "ReLU": "ReLU()",
    "GELU": "GELU()",
    "Tanh": "Tanh()",
    "Sigmoid": "Sigmoid()",
    "LayerNorm": "LayerNorm(d)",
    "Embedding": "Embedding(num, dim)",
    "TransformerEncoderLayer": (
        "TransformerEncoderLayer(d_model, nhead, dim_feedforward[, dropout=0.0, "
        "batch_first=true, bias=false])"
    ),
    "Conv1d": "Conv1d(in, out, kernel_size[, stride=1, padding=0, bias=false])",
    "Conv2d": "Conv2d(in, out, kernel_size[, stride=1, padding=0, bias=false])",
    "Dropout": "Dropout(0)",
    "Softmax": "Softmax(dim)",
    "SiLU": "SiLU()",
    "RMSNorm": "RMSNorm(d)",
    "Flatten": "Flatten([start_dim=1, end_dim=-1])",
    "Identity": "Identity()",
}
SIGNATURES = ", ".join(_SIGNATURE.values())
_ELEMENTWISE = frozenset({"ReLU", "GELU", "Tanh", "Sigmoid", "SiLU", "Identity", "Dropout"})
_LAST_DIM = {  # layers that read the last dim: what they call it
    "Linear": "takes",
    "LayerNorm": "normalizes",
    "RMSNorm": "normalizes",
    "TransformerEncoderLayer": "takes",
}


class LayerError(ValueError):
    """A layer that can't be read, built or fed.

    ``expression`` is the size at fault, if one is; ``layer`` the layer's name in the
    module, when ``output_shapes`` raised it.
    """

    def __init__(self, message: str, expression: str | None = None, layer: str | None = None):
        super().__init__(message)
        self.expression = expression
        self.layer = layer


@dataclass(frozen=True)
class Layer:
    """A parsed layer with its arguments resolved for one n.

    ``sizes`` are the required size arguments (``Linear``'s in and out, ``Conv1d``'s in, out
    and kernel_size); ``options`` every other argument but ``bias``, defaults filled in.
    """

    kind: str
    sizes: tuple[int, ...]
    bias: bool = True
    options: tuple[tuple[str, Value], ...] = ()

    def __post_init__(self) -> None:
        given = dict(self.options)
        full = tuple(
            (a.name, given.get(a.name, a.default))
            for a in ARGS.get(self.kind, ())
            if not _in_sizes(a) and a.name != "bias"
        )
        object.__setattr__(self, "options", tuple((k, v) for k, v in full if v is not None))

    def option(self, name: str) -> Value:
        """The value of a non-size argument, such as ``stride`` or ``batch_first``."""
        return dict(self.options)[name]

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes, as ``named_parameters()`` of the torch.nn module gives."""
        kind, sizes = self.kind, self.sizes
        if kind == "Linear":
            in_f, out_f = sizes
            entries = [("weight", (out_f, in_f)), ("bias", (out_f,))]
        elif kind == "LayerNorm":
            entries = [("weight", sizes), ("bias", sizes)]
        elif kind in ("Embedding", "RMSNorm"):
            return {"weight": sizes}
        elif kind in ("Conv1d", "Conv2d"):
            c_in, c_out, k = sizes
            entries = [("weight", (c_out, c_in) + (k,) * _spatial(kind)), ("bias", (c_out,))]
        elif kind == "TransformerEncoderLayer":
            d, _, ff = sizes
            entries = [
                ("self_attn.in_proj_weight", (3 * d, d)),
                ("self_attn.in_proj_bias", (3 * d,)),
                ("self_attn.out_proj.weight", (d, d)),
                ("self_attn.out_proj.bias", (d,)),
                ("linear1.weight", (ff, d)),
                ("linear1.bias", (ff,)),
                ("linear2.weight", (d, ff)),
                ("linear2.bias", (d,)),
                ("norm1.weight", (d,)),
                ("norm1.bias", (d,)),
                ("norm2.weight", (d,)),
                ("norm2.bias", (d,)),
            ]
        else:
            return {}
        return {name: shape for name, shape in entries if self.bias or not name.endswith("bias")}

    def __str__(self) -> str:
        """The layer as it would be written, without defaults; it parses back to itself."""
        args = [str(s) for s in self.sizes]
        values = dict(self.options, bias=self.bias)
        for arg in ARGS.get(self.kind, ()):
            if _in_sizes(arg) or arg.name not in values:
                continue
            value = values[arg.name]
            if arg.default is None:
                args.append(_show(value))
            elif value != arg.default:
                args.append(f"{arg.name}={_show(value)}")
        return f"{self.kind}({', '.join(args)})"

    def as_json(self) -> dict:
        return {
            "kind": self.kind,
            "sizes": list(self.sizes),
            "bias": self.bias,
            "options": dict(self.options),
        }

    @classmethod
    def from_json(cls, data: dict) -> Layer:
        """The layer ``as_json`` wrote (``options`` may be missing: defaults)."""
        return cls(
            data["kind"],
            tuple(data["sizes"]),
            data.get("bias", True),
            tuple((data.get("options") or {}).items()),
        )

    def input_problem(self, shape: list[int], what: str = "forward.input_shape") -> str | None:
        """Why an input of ``shape`` can't go into this (first) layer, if it can't;
        ``what`` names the input in the message."""
        if self.kind in ("Linear", "LayerNorm") and shape and shape[-1] != self.sizes[0]:
            verb = "takes" if self.kind == "Linear" else "normalizes"
            return (
                f"{what} {shape} ends in {shape[-1]}, but the first layer {self} "
                f"{verb} {self.sizes[0]} features"
            )
        try:
            _fit(self, tuple(shape))
        except _Misfit as why:
            return f"{what} {shape} doesn't fit the first layer {self}: {why}"
        return None

    def features_out(self, features: int | None) -> int | None:
        """The size of the last dim after this layer, given it before; None if unknown."""
        if self.kind in ("Linear", "Embedding"):
            return self.sizes[1]
        if self.kind == "TransformerEncoderLayer":
            return self.sizes[0]
        if self.kind in ("Conv1d", "Conv2d", "Flatten"):
            return None  # the last dim is a length, or a product: see output_shapes
        return features


def _in_sizes(arg: Arg) -> bool:
    return arg.kind == "size" and arg.default is None


def _spatial(kind: str) -> int:
    return 2 if kind == "Conv2d" else 1


def _show(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def parse_layer(text: str, n: int) -> Layer:
    """Parse one layer for device count ``n``; raises LayerError in plain words."""
    match = _CALL.match(text) if isinstance(text, str) else None
    if not match:
        raise LayerError(f"'{short(text)}' is not a layer; write one of {SIGNATURES}")
    name, body = match.group(1), match.group(2).strip()
    if name not in ARGS:
        close = close_match(name, ARGS)
        hint = f"did you mean {close}? " if close else ""
        raise LayerError(f"unknown layer '{short(name)}'; {hint}allowed layers: {SIGNATURES}")
    spec = ARGS[name]
    by_name = {a.name: a for a in spec}
    positional = [a for a in spec if not a.keyword_only]
    given: dict[str, str] = {}
    count = 0  # plain (not name=value) arguments
    keywords = False
    for arg in [a.strip() for a in body.split(",")] if body else []:
        if "[" in arg or arg.count("(") != arg.count(")"):
            square = " (a square kernel, the same stride and padding in every dim)"
            raise LayerError(
                f"{name} takes single values, not lists or tuples"
                f"{square if name == 'Conv2d' else ''}; write {_signature(name)}"
            )
        if "=" in arg:
            key, _, value = (part.strip() for part in arg.partition("="))
            if key not in by_name:
                raise LayerError(f"{name} has no option '{short(key)}'; write {_signature(name)}")
            if key in given:
                raise LayerError(f"{name}: {key} is given twice; write {_signature(name)}")
            given[key], keywords = value, True
            continue
        if keywords:
            raise LayerError(
                f"{name}: '{short(arg)}' comes after a name=value argument; write the plain "
                f"values first, as in {_signature(name)}"
            )
        if count < len(positional):
            given[positional[count].name] = arg
        count += 1
    missing = [a.name for a in spec if a.default is None and a.name not in given]
    if count > len(positional) or (missing and not keywords):
        raise LayerError(f"{_takes(name, positional)}, not {count}; write {_signature(name)}")
    if missing:
        raise LayerError(f"{name} needs {', '.join(missing)}; write {_signature(name)}")
    values = {a.name: _value(name, a, given[a.name], n) for a in spec if a.name in given}
    layer = Layer(
        name,
        tuple(int(values[a.name]) for a in spec if _in_sizes(a)),
        bool(values.get("bias", True)),
        tuple((k, v) for k, v in values.items() if k != "bias" and not _in_sizes(by_name[k])),
    )
    _check(layer, n, any(expr.parse(t).uses_n for k, t in given.items() if _numeric(by_name[k])))
    return layer


def _numeric(arg: Arg) -> bool:
    return arg.kind in ("size", "count", "dim")


def _takes(name: str, positional: list[Arg]) -> str:
    required = [a.name for a in positional if a.default is None]
    optional = [a.name for a in positional if a.default is not None]
    if not optional and all(a.kind == "size" for a in positional):
        return f"{name} takes {len(required)} size(s) ({', '.join(required) or 'none'})"
    names = ", ".join(required)
    if optional:
        names += f"[{', ' if names else ''}{', '.join(optional)}]"
        amount = f"{len(required)} to {len(positional)} arguments"
    else:
        amount = f"{len(required)} argument{'s' if len(required) != 1 else ''}"
    return f"{name} takes {amount} ({names})"


def _value(name: str, arg: Arg, text: str, n: int) -> Value:
    """One argument's value for device count ``n``."""
    if arg.kind == "flag":
        if text not in ("true", "false", "True", "False"):
            raise LayerError(f"{name}({arg.name}=...) takes true or false, not '{short(text)}'")
        return text in ("true", "True")
    if arg.kind == "prob":
        if not _NUMBER.match(text) or float(text) > 1:
            raise LayerError(
                f"{name}: {arg.name} takes a number from 0 to 1, such as 0.0, not '{short(text)}'"
            )
        if float(text) != 0:
            raise LayerError(
                f"{name}: {arg.name}={text} is not supported: shardspec accepts only "
                f"{arg.name}=0 for now, because random dropout would make the sharded and the "
                f"unsharded runs differ; write {'Dropout(0)' if arg.name == 'p' else 'dropout=0.0'}"
            )
        return float(text)
    try:
        value = expr.parse(text).evaluate(n)
    except expr.ExprError as exc:
        hint = text if arg.kind == "size" and "n=" in str(exc) else None
        raise LayerError(f"{name}: {exc}", hint) from None
    if arg.kind == "size" and value < 1:
        raise LayerError(
            f"{name}: '{short(text, 200)}' is {value} when n={n}; sizes must be at least 1", text
        )
    if arg.kind == "count" and value < 0:
        raise LayerError(
            f"{name}: {arg.name} '{short(text, 200)}' is {value} when n={n}; it must be at least 0"
        )
    return value


def _check(layer: Layer, n: int, uses_n: bool) -> None:
    """Rules between a layer's arguments, as torch enforces them (or would fail later on)."""
    when = f" when n={n}" if uses_n else ""
    if layer.kind == "TransformerEncoderLayer":
        d_model, nhead, _ = layer.sizes
        if d_model % nhead:
            raise LayerError(
                f"{layer.kind}: d_model={d_model} is not divisible by nhead={nhead}{when}; "
                "attention splits d_model evenly over the heads"
            )
    if layer.kind == "Flatten":
        start, end = layer.option("start_dim"), layer.option("end_dim")
        if (start < 0) == (end < 0) and start > end:  # type: ignore[operator]
            raise LayerError(f"Flatten: start_dim={start} comes after end_dim={end}{when}")


def _signature(name: str) -> str:
    return _SIGNATURE[name]


# --- shapes ---------------------------------------------------------------------------------


class _Misfit(Exception):
    """Why an input shape doesn't fit a layer (a phrase, for a message)."""


def _wrap(what: str, dim: int, rank: int) -> int:
    size = max(rank, 1)  # torch treats a 0-D input as 1-D here
    if not -size <= dim < size:
        raise _Misfit(
            f"{what}={dim} is out of range for a {rank}-D input (dims {-size} to {size - 1})"
        )
    return dim % size


def _fit(layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of ``layer`` for an input of ``shape``; raises _Misfit."""
    kind, rank = layer.kind, len(shape)
    if kind in _ELEMENTWISE:
        return shape
    if kind == "Embedding":
        return (*shape, layer.sizes[1])
    if kind == "Softmax":
        _wrap("dim", int(layer.option("dim")), rank)
        return shape
    if kind == "Flatten":
        start = _wrap("start_dim", int(layer.option("start_dim")), rank)
        end = _wrap("end_dim", int(layer.option("end_dim")), rank)
        if start > end:
            raise _Misfit(
                f"start_dim={layer.option('start_dim')} comes after "
                f"end_dim={layer.option('end_dim')} for a {rank}-D input"
            )
        if not rank:
            return (1,)
        return (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])
    if kind in _LAST_DIM:
        d = layer.sizes[0]
        if kind == "TransformerEncoderLayer" and rank not in (2, 3):
            order = "batch, seq" if layer.option("batch_first") else "seq, batch"
            raise _Misfit(
                f"it takes a 3-D [{order}, d_model] or a 2-D [seq, d_model] input, not {rank}-D"
            )
        if not rank:
            raise _Misfit("it needs an input with at least 1 dim")
        if shape[-1] != d:
            raise _Misfit(f"it {_LAST_DIM[kind]} {d} features in the last dim, not {shape[-1]}")
        return (*shape[:-1], layer.sizes[1]) if kind == "Linear" else shape
    if kind in ("Conv1d", "Conv2d"):
        spatial = _spatial(kind)
        c_in, c_out, k = layer.sizes
        stride, padding = int(layer.option("stride")), int(layer.option("padding"))
        if rank not in (spatial + 1, spatial + 2):
            dims = "length" if spatial == 1 else "height, width"
            raise _Misfit(
                f"it takes a {spatial + 2}-D [batch, channels, {dims}] or a {spatial + 1}-D "
                f"[channels, {dims}] input, not {rank}-D"
            )
        if shape[-spatial - 1] != c_in:
            channels = shape[-spatial - 1]
            raise _Misfit(f"it takes {c_in} channels in dim {rank - spatial - 1}, not {channels}")
        out = []
        for size in shape[-spatial:]:
            if size + 2 * padding < k:
                raise _Misfit(
                    f"its kernel_size {k} is larger than the input's {size}"
                    + (f" padded by {padding} on each side" if padding else "")
                )
            out.append((size + 2 * padding - k) // stride + 1)
        return (*shape[: -spatial - 1], c_out, *out)
    raise _Misfit(f"shardspec doesn't know the shape rule of {kind}")


def output_shapes(layers: Sequence[tuple[str, Layer]], input_shape: Sequence[int]) -> list[tuple]:
    """Each layer's output shape for a forward input of ``input_shape``, as torch computes it.

    Raises LayerError (its ``layer`` is the layer's name) at the first layer whose input
    doesn't fit, saying what it got and why.
    """
    shape = tuple(input_shape)
    source = f"the input {list(shape)}"
    shapes: list[tuple] = []
    for index, (name, layer) in enumerate(layers):
        if layer.kind == "Embedding" and index:
            raise LayerError(
                f"layer {name} = {layer} takes token indices, so it can only be the first layer",
                layer=name,
            )
        try:
            shape = _fit(layer, shape)
        except _Misfit as why:
            raise LayerError(
                f"layer {name} = {layer} doesn't fit {source}: {why}", layer=name
            ) from None
        shapes.append(shape)
        source = f"{list(shape)}, the output of {name} = {layer}"
    return shapes


def _needs(layer: Layer) -> tuple[int, int, str] | None:
    """(dim counted from the end, its size, what it holds) that ``layer`` requires."""
    if layer.kind in _LAST_DIM:
        return -1, layer.sizes[0], "features"
    if layer.kind in ("Conv1d", "Conv2d"):
        return -_spatial(layer.kind) - 1, layer.sizes[0], "channels"
    return None


def _known_after(layer: Layer, known: dict[int, int]) -> dict[int, int]:
    """The dims (counted from the end) whose size is known after ``layer``."""
    kind = layer.kind
    if kind in _LAST_DIM:
        return {**known, -1: layer.sizes[1] if kind == "Linear" else layer.sizes[0]}
    if kind in ("Conv1d", "Conv2d"):
        channel = -_spatial(kind) - 1
        return {**{k: v for k, v in known.items() if k < channel}, channel: layer.sizes[1]}
    if kind == "Flatten":
        start, end = int(layer.option("start_dim")), int(layer.option("end_dim"))
        if end >= 0:
            return {}  # where the dims end up depends on the rank
        after = {k: v for k, v in known.items() if k > end}
        if start >= 0:
            return after
        if all(k in known for k in range(start, end + 1)):
            after[end] = math.prod(known[k] for k in range(start, end + 1))
        return after | {k + end - start: v for k, v in known.items() if k < start}
    return known  # elementwise, Softmax, Dropout, Identity


def chain_problem(layers: list[tuple[str, Layer]]) -> tuple[str, str] | None:
    """The first layer whose input doesn't match what the previous layer gives.

    Made without the input shape, so only sizes known from the layers alone are checked
    (a Linear after Conv1d and Flatten is not: its features depend on the input's length);
    ``output_shapes`` checks the whole chain for a given input.
    """
    known: dict[int, int] = {}
    for index, (name, layer) in enumerate(layers):
        if layer.kind == "Embedding":
            if index:
                return name, f"{layer} takes token indices, so it can only be the first layer"
            known = {-1: layer.sizes[1]}
            continue
        need = _needs(layer)
        if need is not None:
            dim, size, what = need
            have = known.get(dim)
            if have is not None and have != size:
                return name, f"{layer} takes {size} {what}, but the layer before gives {have}"
        known = _known_after(layer, known)
    return None
