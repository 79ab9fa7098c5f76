"""The allowlisted layers as torch modules (worker-only: imports torch).

Every engine builds a case's module here, so xla, native and the reference all run the
same model with the same initial weights (the caller seeds torch first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from .layers import Layer


def _conv(cls: type[nn.Conv1d] | type[nn.Conv2d]) -> Callable[[Layer], nn.Module]:
    def make(layer: Layer) -> nn.Module:
        c_in, c_out, kernel = layer.sizes
        return cls(
            c_in,
            c_out,
            kernel,
            stride=int(layer.option("stride")),
            padding=int(layer.option("padding")),
            bias=layer.bias,
        )

    return make


def _encoder(layer: Layer) -> nn.Module:
    d_model, nhead, dim_feedforward = layer.sizes
    return nn.TransformerEncoderLayer(
        d_model,
        nhead,
        dim_feedforward,
        dropout=float(layer.option("dropout")),
        batch_first=bool(layer.option("batch_first")),
        norm_first=False,
        bias=layer.bias,
    )


LAYERS: dict[str, Callable[[Layer], nn.Module]] = {
    "Linear": lambda layer: nn.Linear(*layer.sizes, bias=layer.bias),
    "ReLU": lambda layer: nn.ReLU(),
    "GELU": lambda layer: nn.GELU(),
    "Tanh": lambda layer: nn.Tanh(),
    "Sigmoid": lambda layer: nn.Sigmoid(),
    "LayerNorm": lambda layer: nn.LayerNorm(layer.sizes[0]),
    "Embedding": lambda layer: nn.Embedding(*layer.sizes),
    "TransformerEncoderLayer": _encoder,
    "Conv1d": _conv(nn.Conv1d),
    "Conv2d": _conv(nn.Conv2d),
    "Dropout": lambda layer: nn.Dropout(float(layer.option("p"))),
    "Softmax": lambda layer: nn.Softmax(dim=int(layer.option("dim"))),
    "SiLU": lambda layer: nn.SiLU(),
    "RMSNorm": lambda layer: nn.RMSNorm(layer.sizes[0]),
    "Flatten": lambda layer: nn.Flatten(
        int(layer.option("start_dim")), int(layer.option("end_dim"))
    ),
    "Identity": lambda layer: nn.Identity(),
}


def build(layers: list) -> nn.Sequential:
    """An nn.Sequential of the request's layers (``Layer.as_json``), by name and in order."""
    return nn.Sequential(
        OrderedDict((name, LAYERS[spec["kind"]](Layer.from_json(spec))) for name, spec in layers)
    )
