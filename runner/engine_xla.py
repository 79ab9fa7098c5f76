"""The XLA engine: runs a request on torch_xla SPMD and reports plain facts.

Imported only inside a worker process, after the worker has set the PJRT
environment. It observes and never judges: comparisons against the spec happen
in the pytest process (runner.check).
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch_xla
import torch_xla.runtime as xr
from torch import nn
from torch.distributed.tensor import (
    DeviceMesh,
    Partial,
    Replicate,
    Shard,
    distribute_module,
    distribute_tensor,
)
from torch_xla.distributed.spmd import XLAShardedTensor

from .protocol import (
    ErrorInfo,
    ModuleObservation,
    ModuleRequest,
    Observation,
    ParamObservation,
    Request,
    ShardObservation,
    TensorObservation,
    TensorRequest,
)

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
LAYERS = {
    "Linear": lambda sizes, bias: nn.Linear(*sizes, bias=bias),
    "ReLU": lambda sizes, bias: nn.ReLU(),
    "GELU": lambda sizes, bias: nn.GELU(),
    "Tanh": lambda sizes, bias: nn.Tanh(),
    "Sigmoid": lambda sizes, bias: nn.Sigmoid(),
    "LayerNorm": lambda sizes, bias: nn.LayerNorm(sizes[0]),
    "Embedding": lambda sizes, bias: nn.Embedding(*sizes),
}


def start() -> dict[str, Any]:
    """Turn on SPMD and report the runtime."""
    xr.use_spmd()
    return {
        "devices": xr.global_runtime_device_count(),
        "device_type": xr.device_type(),
        "torch": torch.__version__,
        "torch_xla": torch_xla.__version__,
    }


def _placement(spec: list, rank: int | None = None):
    kind = spec[0]
    if kind == "shard":
        dim = spec[1]
        return Shard(dim + rank if rank is not None and dim < 0 else dim)
    return Replicate() if kind == "replicate" else Partial()


def _mesh(shape: list[int]) -> DeviceMesh:
    count = int(np.prod(shape))
    return DeviceMesh("xla", np.arange(count).reshape(shape))


def make_input(shape: list[int], dtype: str, seed: int) -> torch.Tensor:
    """Random values from the case's seed, never all zeros."""
    gen = torch.Generator().manual_seed(seed)
    torch_dtype = DTYPES[dtype]
    if dtype == "bool":
        x = torch.randint(0, 2, shape, generator=gen).bool()
        x.view(-1)[0] = True
    elif dtype.startswith("int"):
        x = torch.randint(1, 1000, shape, generator=gen, dtype=torch_dtype)
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float32)
        x = torch.where(x == 0, torch.ones_like(x), x).to(torch_dtype)
    return x


def _error(exc: BaseException) -> ErrorInfo:
    return {
        "type": type(exc).__name__,
        "bases": [cls.__name__ for cls in type(exc).__mro__],
        "message": str(exc)[:2000],
    }


def _device_index(device: str) -> int:
    return int(str(device).rsplit(":", 1)[-1])


def _slices(indices: Any, shape: list[int]) -> tuple[list[int], list[int]]:
    """Offset and extent claimed by a shard's ``.indices``."""
    if indices is Ellipsis:
        return [0] * len(shape), list(shape)
    offset, extent = [], []
    for index, size in zip(indices, shape, strict=True):
        start, stop, _ = index.indices(size)
        offset.append(start)
        extent.append(max(0, stop - start))
    return offset, extent


def _observe_shards(shards: list, source: torch.Tensor) -> list[ShardObservation]:
    """Each shard's device, unpadded and padded shape, offset, and whether its values
    equal the slice of ``source`` it claims."""
    out = []
    for shard in shards:
        offset, extent = _slices(shard.indices, list(source.shape))
        data = shard.unpadded_data.detach().cpu()
        key = Ellipsis if shard.indices is Ellipsis else tuple(shard.indices)
        expected = source[key]
        same = tuple(data.shape) == tuple(expected.shape) and bool(torch.equal(data, expected))
        out.append(
            {
                "device": _device_index(shard.shard_device),
                "shape": list(data.shape),
                "padded_shape": list(shard.data.shape),
                "offset": offset,
                "extent": extent,
                "replica_id": shard.replica_id,
                "values_equal": same,
            }
        )
    return out


def run_tensor(req: TensorRequest) -> TensorObservation:
    x = make_input(req["shape"], req["dtype"], req["seed"])
    if req["requires_grad"]:
        x.requires_grad_(True)
    mesh = _mesh(req["mesh"])
    placements = [_placement(p) for p in req["placements"]]
    began = time.perf_counter()
    try:
        dist = distribute_tensor(x, mesh, placements)
    except Exception as exc:
        return {"error": _error(exc)}
    elapsed = time.perf_counter() - began
    glob = getattr(dist, "global_tensor", dist)
    shards = _observe_shards(getattr(dist, "local_shards", []), x.detach())
    return {
        "type": type(dist).__name__,
        "global_shape": list(glob.shape),
        "dtype": str(glob.dtype).removeprefix("torch."),
        "requires_grad": bool(glob.requires_grad),
        "is_leaf": bool(dist.is_leaf),
        "sharding_spec": torch_xla._XLAC._get_xla_sharding_spec(glob),
        "shards": shards,
        "seconds": elapsed,
    }


def _build(layers: list) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            (name, LAYERS[spec["kind"]](spec["sizes"], spec["bias"])) for name, spec in layers
        )
    )


def run_module(req: ModuleRequest) -> ModuleObservation:
    torch.manual_seed(req["seed"])
    reference = _build(req["layers"])
    device = torch_xla.device()
    # Move first: distributing CPU params would shard copies, not the module's own.
    model = copy.deepcopy(reference).to(device)
    mesh = _mesh(req["mesh"])
    placed = req["params"]  # the shard rules were matched once, by expand

    def partition(module_name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if full in placed:
                distribute_tensor(param, device_mesh, [_placement(p) for p in placed[full]])

    try:
        sharded = distribute_module(model, mesh, partition)
    except Exception as exc:
        return {"error": _error(exc)}
    originals = dict(reference.named_parameters())
    params: dict[str, ParamObservation] = {}
    for name, param in sharded.named_parameters():
        params[name] = {
            "sharding_spec": torch_xla._XLAC._get_xla_sharding_spec(param),
            "shape": list(param.shape),
            "device": str(param.device),
        }
        if name in placed:
            # The parameter was annotated in place; a wrapper shows its shards.
            shards = XLAShardedTensor(param.detach()).local_shards
            params[name]["shards"] = _observe_shards(shards, originals[name].detach())
    out: ModuleObservation = {"type": type(sharded).__name__, "params": params}
    forward = req.get("forward")
    if forward:
        gen = torch.Generator().manual_seed(req["seed"] + 1)
        first = req["layers"][0][1]
        if first["kind"] == "Embedding":
            x = torch.randint(0, first["sizes"][0], forward["input_shape"], generator=gen)
        else:
            x = torch.randn(forward["input_shape"], generator=gen)
        with torch.no_grad():
            want = reference(x)
            got = sharded(x.to(device)).cpu()
        diff = (got - want).abs()
        out["forward"] = {
            "shape": list(got.shape),
            "expected_shape": list(want.shape),
            "max_abs_error": float(diff.max()) if diff.numel() else 0.0,
            "max_excess": float((diff - forward["rtol"] * want.abs()).max())
            if diff.numel()
            else 0.0,
            "finite": bool(torch.isfinite(got).all()),
        }
    return out


def run(req: Request) -> Observation:
    if req["op"] == "tensor":
        return run_tensor(req)  # type: ignore[arg-type]
    if req["op"] == "module":
        return run_module(req)  # type: ignore[arg-type]
    raise ValueError(f"unknown op {req['op']!r}")
