"""The layer allowlist and its tiny grammar: ``Name(arg, ...)``, never ``eval``.

Allowed: Linear(in, out[, bias=false]), ReLU(), GELU(), Tanh(), Sigmoid(),
LayerNorm(d), Embedding(num, dim). Sizes may be expressions in n.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import expr
from .words import close_match
from .yamlload import short

_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.S)
# name -> (positional size arguments, allowed keyword flags)
ALLOWED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Linear": (("in_features", "out_features"), ("bias",)),
    "ReLU": ((), ()),
    "GELU": ((), ()),
    "Tanh": ((), ()),
    "Sigmoid": ((), ()),
    "LayerNorm": (("normalized_shape",), ()),
    "Embedding": (("num_embeddings", "embedding_dim"), ()),
}
_SIGNATURE = {
    "Linear": "Linear(in, out[, bias=false])",
    "ReLU": "ReLU()",
    "GELU": "GELU()",
    "Tanh": "Tanh()",
    "Sigmoid": "Sigmoid()",
    "LayerNorm": "LayerNorm(d)",
    "Embedding": "Embedding(num, dim)",
}
SIGNATURES = ", ".join(_SIGNATURE.values())


class LayerError(ValueError):
    """A layer that can't be read or built; ``expression`` is the size at fault, if one is."""

    def __init__(self, message: str, expression: str | None = None):
        super().__init__(message)
        self.expression = expression


@dataclass(frozen=True)
class Layer:
    """A parsed layer with its sizes resolved for one n."""

    kind: str
    sizes: tuple[int, ...]
    bias: bool = True

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes, as torch.nn creates them."""
        if self.kind == "Linear":
            in_f, out_f = self.sizes
            return (
                {"weight": (out_f, in_f), "bias": (out_f,)}
                if self.bias
                else {"weight": (out_f, in_f)}
            )
        if self.kind == "LayerNorm":
            return {"weight": self.sizes, "bias": self.sizes}
        if self.kind == "Embedding":
            return {"weight": self.sizes}
        return {}

    def __str__(self) -> str:
        args = [str(s) for s in self.sizes]
        if self.kind == "Linear" and not self.bias:
            args.append("bias=false")
        return f"{self.kind}({', '.join(args)})"

    def as_json(self) -> dict:
        return {"kind": self.kind, "sizes": list(self.sizes), "bias": self.bias}

    def input_problem(self, shape: list[int]) -> str | None:
        """Why a forward input of ``shape`` can't go into this (first) layer, if it can't."""
        if self.kind == "Linear" and shape[-1] != self.sizes[0]:
            return f"forward.input_shape {shape} ends in {shape[-1]}, but the first layer {self} takes {self.sizes[0]} features"
        if self.kind == "LayerNorm" and shape[-1] != self.sizes[0]:
            return f"forward.input_shape {shape} ends in {shape[-1]}, but the first layer {self} normalizes {self.sizes[0]} features"
        return None

    def features_out(self, features: int | None) -> int | None:
        if self.kind == "Linear":
            return self.sizes[1]
        if self.kind == "Embedding":
            return self.sizes[1]
        return features


def parse_layer(text: str, n: int) -> Layer:
    """Parse one layer for device count ``n``; raises LayerError in plain words."""
    match = _CALL.match(text) if isinstance(text, str) else None
    if not match:
        raise LayerError(f"'{short(text)}' is not a layer; write one of {SIGNATURES}")
    name, body = match.group(1), match.group(2).strip()
    if name not in ALLOWED:
        close = close_match(name, ALLOWED)
        hint = f"did you mean {close}? " if close else ""
        raise LayerError(f"unknown layer '{short(name)}'; {hint}allowed layers: {SIGNATURES}")
    positional, flags = ALLOWED[name]
    args = [a.strip() for a in body.split(",")] if body else []
    sizes: list[int] = []
    bias = True
    for arg in args:
        if "=" in arg:
            key, _, value = (part.strip() for part in arg.partition("="))
            if key not in flags:
                raise LayerError(f"{name} has no option '{short(key)}'; write {_signature(name)}")
            if value not in ("true", "false"):
                raise LayerError(f"{name}({key}=...) takes true or false, not '{short(value)}'")
            bias = value == "true"
            continue
        try:
            size = expr.parse(arg).evaluate(n)
        except expr.ExprError as exc:
            raise LayerError(f"{name}: {exc}", arg if "n=" in str(exc) else None) from None
        if size < 1:
            raise LayerError(
                f"{name}: '{short(arg, 200)}' is {size} when n={n}; sizes must be at least 1", arg
            )
        sizes.append(size)
    if len(sizes) != len(positional):
        raise LayerError(
            f"{name} takes {len(positional)} size(s) ({', '.join(positional) or 'none'}), not {len(sizes)}; write {_signature(name)}"
        )
    return Layer(name, tuple(sizes), bias)


def _signature(name: str) -> str:
    return _SIGNATURE[name]


def chain_problem(layers: list[tuple[str, Layer]]) -> tuple[str, str] | None:
    """The first layer whose input size doesn't match what the previous layer gives."""
    features: int | None = None
    for index, (name, layer) in enumerate(layers):
        if layer.kind == "Embedding" and index:
            return name, f"{layer} takes token indices, so it can only be the first layer"
        need = layer.sizes[0] if layer.kind in ("Linear", "LayerNorm") else None
        if need is not None and features is not None and need != features:
            return name, f"{layer} takes {need} features, but the layer before gives {features}"
        features = layer.features_out(features)
    return None
