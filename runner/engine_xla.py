"""The XLA engine: runs a request on torch_xla SPMD and reports plain facts.

Imported only inside a worker process, after the worker has set the PJRT
environment. It observes and never judges: comparisons against the spec happen
in the pytest process (runner.check).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import torch_xla
import torch_xla.distributed.spmd as xs
import torch_xla.runtime as xr
from torch import nn
from torch.distributed.tensor import (
    DeviceMesh,
    distribute_module,
    distribute_tensor,
)
from torch_xla.distributed.spmd import XLAShardedTensor

from . import interpreter
from .engine_layers import build
from .interpreter import error_info as _error
from .interpreter import make_input, placement_json, to_placement, to_placements
from .protocol import (
    InputTensor,
    ModuleObservation,
    ModuleRequest,
    Observation,
    ParamObservation,
    ReadJson,
    Request,
    ShardObservation,
    StepJson,
    StepsObservation,
    StepsRequest,
    TensorObservation,
    TensorRequest,
    ValueObservation,
)


def start() -> dict[str, Any]:
    """Turn on SPMD and report the runtime."""
    xr.use_spmd()
    return {
        "devices": xr.global_runtime_device_count(),
        "device_type": xr.device_type(),
        "torch": torch.__version__,
        "torch_xla": torch_xla.__version__,
    }


def _mesh(shape: list[int]) -> DeviceMesh:
    count = int(np.prod(shape))
    return DeviceMesh("xla", np.arange(count).reshape(shape))


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
    placements = [to_placement(p) for p in req["placements"]]
    began = time.perf_counter()
    try:
        dist = distribute_tensor(x, mesh, placements)
    except Exception as exc:
        return {"error": _error(exc)}
    elapsed = time.perf_counter() - began
    glob = getattr(dist, "global_tensor", dist)
    shards = _observe_shards(getattr(dist, "local_shards", []), x.detach())
    try:  # what the wrapper reports: for "engines disagree" ([Shard(0), Shard(0)] differs)
        reported = [placement_json(p) for p in dist.placements]
    except Exception:
        reported = None
    return {
        "type": type(dist).__name__,
        "placements": reported,
        "global_shape": list(glob.shape),
        "dtype": str(glob.dtype).removeprefix("torch."),
        "requires_grad": bool(glob.requires_grad),
        "is_leaf": bool(dist.is_leaf),
        "sharding_spec": torch_xla._XLAC._get_xla_sharding_spec(glob),
        "shards": shards,
        "seconds": elapsed,
    }


def run_module(req: ModuleRequest) -> ModuleObservation:
    torch.manual_seed(req["seed"])
    reference = build(req["layers"])
    device = torch_xla.device()
    mesh = _mesh(req["mesh"])
    placed = req["params"]  # the shard rules were matched once, by expand
    try:
        sharded = distribute_model(copy.deepcopy(reference), req, mesh, device)
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
        x = interpreter.forward_input(req)
        with torch.no_grad():
            want = reference(x)
            try:
                got = XlaBackend._global(sharded(x.to(device))).detach().cpu()
            except Exception as exc:
                out["forward"] = {"error": _error(exc)}  # type: ignore[typeddict-item]
                return out
        out["forward"] = interpreter.forward_report(got, want, forward["rtol"])
    return out


def run(req: Request) -> Observation:
    if req["op"] == "tensor":
        return run_tensor(req)  # type: ignore[arg-type]
    if req["op"] == "module":
        return run_module(req)  # type: ignore[arg-type]
    if req["op"] == "steps":
        return run_steps(req)  # type: ignore[arg-type]
    raise ValueError(f"unknown op {req['op']!r}")


# --- v1.1: steps --------------------------------------------------------------------


class XlaBackend(interpreter.Backend):
    """Runs steps as a DTensor user does on torch_xla: the DTensor API on what
    distribute_tensor returned, torch ops on those objects; XLA's own API for
    mark_sharding and clear_sharding (DESIGN.md settled point 1)."""

    def __init__(self, req: StepsRequest):
        super().__init__(req)
        self.mesh = _mesh(req["mesh"])
        self.device = torch_xla.device()
        if req.get("module") is not None:
            self.model = distribute_model(
                interpreter.build_model(req), req["module"], self.mesh, self.device
            )

    def tensor(self, spec: InputTensor, data: torch.Tensor) -> Any:
        if spec["placements"] is None:
            # A plain tensor lives on the XLA device (settled point 6), as a leaf.
            return data.to(self.device).detach().requires_grad_(spec["requires_grad"])
        x = data.clone().requires_grad_(spec["requires_grad"])
        return distribute_tensor(x, self.mesh, to_placements(spec["placements"]))

    def xla_call(self, step: StepJson, args: list, kwargs: dict) -> Any:
        name = step["call"]
        if name == "sync":
            torch_xla.sync()
            return None
        if name == "clear_sharding":
            xs.clear_sharding(args[0])
            return args[0]
        shape = self.req["mesh"]
        names = self.req.get("mesh_names")
        mesh = xs.Mesh(
            np.arange(int(np.prod(shape))), tuple(shape), tuple(names) if names else None
        )
        spec = tuple(tuple(e) if isinstance(e, list) else e for e in args[1])
        return xs.mark_sharding(args[0], mesh, spec)

    def before_reads(self) -> None:
        super().before_reads()  # first: the last read point's copies go even if sync raises
        # wait=True: reading local_shards while an async execution is in flight fails at
        # random (measured: 5-11 of 46 ops per run) with the default sync().
        torch_xla.sync(wait=True)

    def _cpu_copy(self, glob: torch.Tensor) -> torch.Tensor:
        """The value on the CPU, copied once per read point (a tiled tensor's .cpu() costs
        about 3 ms, measured)."""
        return self.once_per_read_point(glob, lambda g: g.detach().cpu())

    @staticmethod
    def _global(value: Any) -> torch.Tensor | None:
        """The XLA tensor behind a value. A wrapper made by mixing a DTensor with a plain
        tensor has no global_tensor (measured); its data is the wrapper itself."""
        if isinstance(value, XLAShardedTensor):
            try:
                return value.global_tensor
            except AttributeError:
                return value.as_subclass(torch.Tensor)
        return value if isinstance(value, torch.Tensor) else None

    def global_data(self, value: Any) -> torch.Tensor | None:
        glob = self._global(value)
        return None if glob is None else self._cpu_copy(glob)

    def observe(self, value: Any, read: ReadJson) -> ValueObservation:
        out = interpreter.describe(value)
        if not isinstance(value, torch.Tensor):
            return out
        glob = self._global(value)
        if glob is None or glob.device.type != "xla":
            return out
        try:
            spec = torch_xla._XLAC._get_xla_sharding_spec(glob)
        except RuntimeError:
            # A wrapper made by mixing a DTensor with a plain tensor (or by output_fn) has
            # no XLA tensor behind it (measured: "Expected XLA tensor. Got: XLAFloatType"):
            # its values are still read; its sharding and pieces are not there to read.
            return out
        out["sharding_spec"] = spec
        if spec:
            data = self._cpu_copy(glob)
            shards = None
            if isinstance(value, XLAShardedTensor) and glob is not value:
                try:  # read once: the property copies every piece
                    shards = value.local_shards
                except AttributeError:
                    shards = None
            if shards is None:
                shards = XLAShardedTensor(glob.detach()).local_shards
            out["shards"] = _observe_shards(shards, data)
        return out


def distribute_model(model: nn.Module, spec: Any, mesh: DeviceMesh, device: Any) -> nn.Module:
    """The case's module on XLA: moved to the device first (distributing CPU parameters
    shards copies), then distribute_module with the placed parameters annotated in place."""
    model = model.to(device)
    placed = spec["params"]

    def partition(module_name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if full in placed:
                distribute_tensor(param, device_mesh, to_placements(placed[full]))

    return distribute_module(
        model,
        mesh,
        partition if spec.get("partition", True) else None,
        **interpreter.module_fns(spec, replicate_input=False),
    )


def run_steps(req: StepsRequest) -> StepsObservation:
    snapshots: dict[str, Any] | None = None
    if req["reference"]:
        snapshots, raised = interpreter.run_reference(req)
        if raised is not None:
            return {"reference_error": raised}
    return interpreter.run(XlaBackend(req), snapshots)
