"""The allowlisted layers as torch modules (worker-only: imports torch).

Every engine builds a case's module here, so xla, native and the reference all run the
same model with the same initial weights (the caller seeds torch first).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

LAYERS = {
    "Linear": lambda sizes, bias: nn.Linear(*sizes, bias=bias),
    "ReLU": lambda sizes, bias: nn.ReLU(),
    "GELU": lambda sizes, bias: nn.GELU(),
    "Tanh": lambda sizes, bias: nn.Tanh(),
    "Sigmoid": lambda sizes, bias: nn.Sigmoid(),
    "LayerNorm": lambda sizes, bias: nn.LayerNorm(sizes[0]),
    "Embedding": lambda sizes, bias: nn.Embedding(*sizes),
}


def build(layers: list) -> nn.Sequential:
    """An nn.Sequential of the request's layers, by name and in order."""
    return nn.Sequential(
        OrderedDict(
            (name, LAYERS[spec["kind"]](spec["sizes"], spec["bias"])) for name, spec in layers
        )
    )
