"""The native engine: DTensor itself on the CPU, n ranks in one worker process.

Imported only inside a worker. Each case runs on every rank at once (torch's threaded
process group, through ``runner.threaded``), on ``DeviceMesh("cpu")`` with real data.
It observes and never judges: rank 0's observation stands for the case, and every rank
adds its own piece, so the checker sees all of them. DTensor is the truth this engine
reports: where it differs from the oracle or from XLA, the checker and the "engines
disagree" report say so.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import (
    DeviceMesh,
    DTensor,
    Partial,
    distribute_module,
    distribute_tensor,
)

from . import interpreter
from .interpreter import error_info, make_input, placement_json, to_placements
from .protocol import (
    InputTensor,
    ModuleObservation,
    ModuleRequest,
    Observation,
    ReadJson,
    Request,
    ShardObservation,
    StepsObservation,
    StepsRequest,
    TensorObservation,
    TensorRequest,
    ValueObservation,
)
from .threaded import ThreadedWorld, WorldBroken
from .worker import fault_actions

DEFAULT_TIMEOUT = 60.0
_world: ThreadedWorld | None = None

try:  # DTensor's own layout function: where each rank's piece sits
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - depends on the torch version
    compute_local_shape_and_global_offset = None  # type: ignore[assignment]


def start(devices: int) -> dict[str, Any]:
    """Build the n-rank world once for this worker."""
    global _world
    _world = ThreadedWorld(max(devices, 1))
    return {
        "devices": max(devices, 1),
        "device_type": "cpu (DTensor, threaded process group)",
        "torch": torch.__version__,
    }


def _mesh(shape: list[int], names: list[str] | None = None) -> DeviceMesh:
    count = 1
    for size in shape:
        count *= size
    ids = torch.arange(count).reshape(shape)
    return DeviceMesh("cpu", ids, mesh_dim_names=tuple(names) if names else None)


def _fault(req: Request, rank: int) -> None:
    """``SHARDSPEC_TEST_FAULT=<case id>=rank_raise|rank_hang``: rank 1 (or 0) misbehaves."""
    for action in fault_actions(req):
        victim = 1 if _world is not None and _world.world_size > 1 else 0
        if rank != victim:
            continue
        if action == "rank_raise":
            raise RuntimeError(f"injected fault on rank {rank}")
        if action == "rank_hang":
            # This rank never reaches the case's collectives (it returns at once); its
            # peers wait in them until the world's timeout wakes them.
            raise _SkipCase


class _SkipCase(Exception):
    """Test-only: a rank that leaves the case before its collectives."""


def _piece(
    local: torch.Tensor, dt: DTensor, whole: torch.Tensor | None, rank: int
) -> ShardObservation:
    """This rank's piece of a DTensor: shape, offset, and whether it holds its slice."""
    shape, offset = compute_local_shape_and_global_offset(dt.shape, dt.device_mesh, dt.placements)
    data = local.detach()
    equal = False
    if whole is not None and not any(isinstance(p, Partial) for p in dt.placements):
        index = tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))
        expected = whole[index]
        equal = tuple(data.shape) == tuple(expected.shape) and bool(torch.equal(data, expected))
    elif whole is not None:
        equal = True  # a partial piece holds a share of the value, not a slice: not compared
    return {
        "device": rank,
        "shape": list(data.shape),
        "padded_shape": list(data.shape),
        "offset": [int(o) for o in offset],
        "extent": list(data.shape),
        "replica_id": 0,
        "values_equal": equal,
    }


def _merge_shards(per_rank: list[list[ShardObservation]]) -> list[ShardObservation]:
    return [piece for pieces in per_rank for piece in pieces]


def _run(req: Request, fn: Any) -> list[Any]:
    assert _world is not None, "start() first"
    timeout = float(req.get("timeout") or DEFAULT_TIMEOUT)  # type: ignore[union-attr]

    def guarded(rank: int) -> Any:
        try:
            return fn(rank)
        except _SkipCase:
            return None

    try:
        return _world.run(guarded, timeout)
    except WorldBroken as exc:
        # A rank thread can't be stopped: only a new process helps. Dying makes the
        # executor fail this case alone and start a fresh worker for the next one.
        print(f"native engine: {exc}; restarting the worker", file=sys.stderr, flush=True)
        os._exit(3)


# --- v1 tensor cases -------------------------------------------------------------------


def run_tensor(req: TensorRequest) -> TensorObservation:
    def rank_fn(rank: int) -> TensorObservation:
        _fault(req, rank)
        x = make_input(req["shape"], req["dtype"], req["seed"])
        x.requires_grad_(req["requires_grad"])
        mesh = _mesh(req["mesh"])
        began = time.perf_counter()
        try:
            dt = distribute_tensor(x, mesh, to_placements(req["placements"]))
        except Exception as exc:
            return {"error": error_info(exc)}
        seconds = time.perf_counter() - began
        return {
            "type": type(dt).__name__,
            "placements": [placement_json(p) for p in dt.placements],
            "global_shape": list(dt.shape),
            "dtype": str(dt.dtype).removeprefix("torch."),
            # Settled point 12: on native, requires_grad and is_leaf read the DTensor.
            "requires_grad": bool(dt.requires_grad),
            "is_leaf": bool(dt.is_leaf),
            "shards": [_piece(dt.to_local(), dt, x.detach(), rank)],
            "seconds": seconds,
        }

    results = _run(req, rank_fn)
    first = results[0]
    if "error" in first:
        return first
    first["shards"] = _merge_shards([r.get("shards", []) for r in results])
    return first


# --- v1 module cases -------------------------------------------------------------------


def run_module(req: ModuleRequest) -> ModuleObservation:
    from .engine_layers import build

    torch.manual_seed(req["seed"])  # in the main thread: threads share the generator
    reference = build(req["layers"])
    forward = req.get("forward")
    x_cpu = None
    if forward:
        x_cpu = interpreter.forward_input(req)
        with torch.no_grad():
            want = reference(x_cpu)
    originals = {name: p.detach() for name, p in reference.named_parameters()}

    def rank_fn(rank: int) -> ModuleObservation:
        _fault(req, rank)
        model = copy.deepcopy(reference)
        mesh = _mesh(req["mesh"])
        try:
            sharded = distribute_model(model, req, mesh)
        except Exception as exc:
            return {"error": error_info(exc)}
        params: dict[str, Any] = {}
        for name, param in sharded.named_parameters():
            entry: dict[str, Any] = {"shape": list(param.shape), "type": type(param.data).__name__}
            if isinstance(param, DTensor):
                entry["placements"] = [placement_json(p) for p in param.placements]
                entry["shards"] = [_piece(param.to_local(), param, originals[name], rank)]
            params[name] = entry
        out: ModuleObservation = {"type": type(sharded).__name__, "params": params}
        if x_cpu is not None:
            try:
                with torch.no_grad():
                    got = sharded(x_cpu)  # input_fn distributes it (Replicate by default)
                    got = got.full_tensor() if isinstance(got, DTensor) else got
            except Exception as exc:  # DTensor's own gaps (no sharding strategy) are facts
                out["forward"] = {"error": error_info(exc)}  # type: ignore[typeddict-item]
                return out
            out["forward"] = interpreter.forward_report(got, want, forward["rtol"])
        return out

    results = _run(req, rank_fn)
    first = results[0]
    if "error" in first:
        return first
    for name, entry in first["params"].items():
        if "shards" in entry:
            entry["shards"] = _merge_shards([r["params"][name].get("shards", []) for r in results])
    return first


# --- v1.1 steps ------------------------------------------------------------------------


def distribute_model(model: nn.Module, spec: Any, mesh: DeviceMesh) -> nn.Module:
    """distribute_module with each placed parameter made a DTensor parameter; DTensor then
    replicates the rest (settled point 15)."""
    placed = spec["params"]

    def partition(module_name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        for param_name, param in list(module.named_parameters(recurse=False)):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if full in placed:
                dist = distribute_tensor(
                    param, device_mesh, to_placements(placed[full]), src_data_rank=None
                )
                module.register_parameter(param_name, nn.Parameter(dist))

    return distribute_module(
        model,
        mesh,
        partition if spec.get("partition", True) else None,
        # settled point 15: the input is Replicate() unless input_placements says otherwise;
        # every rank holds the same data, so it is split without a collective
        **interpreter.module_fns(spec, replicate_input=True, src_data_rank=None),
    )


class NativeBackend(interpreter.Backend):
    """One rank's view: the DTensor API on DeviceMesh("cpu"), torch ops on DTensors."""

    def __init__(self, req: StepsRequest, rank: int, model: nn.Module | None = None):
        super().__init__(req)
        self.rank = rank
        self.mesh = _mesh(req["mesh"], req.get("mesh_names"))
        if model is not None and req.get("module") is not None:
            self.model = distribute_model(copy.deepcopy(model), req["module"], self.mesh)

    def tensor(self, spec: InputTensor, data: torch.Tensor) -> Any:
        x = data.clone().requires_grad_(spec["requires_grad"])
        if spec["placements"] is None:
            return x  # a plain tensor, on the CPU (settled point 6)
        # Every rank holds the same data: split locally, without a collective.
        return distribute_tensor(
            x, self.mesh, to_placements(spec["placements"]), src_data_rank=None
        )

    def global_data(self, value: Any) -> torch.Tensor | None:
        if isinstance(value, DTensor):
            # A collective: every rank reads the same values in the same order, once each.
            return self.once_per_read_point(value, lambda v: v.full_tensor().detach())
        if isinstance(value, torch.Tensor):
            return value.detach()
        return None

    def observe(self, value: Any, read: ReadJson) -> ValueObservation:
        out = interpreter.describe(value)
        if isinstance(value, DTensor) and "placements_error" not in out:
            whole = self.global_data(value)
            out["shards"] = [_piece(value.to_local(), value, whole, self.rank)]
        return out


def run_steps(req: StepsRequest) -> StepsObservation:
    snapshots: dict[str, Any] | None = None
    if req["reference"]:
        snapshots, raised = interpreter.run_reference(req)
        if raised is not None:
            return {"reference_error": raised}

    # Built once, in this thread: the ranks share torch's generator (settled in threaded.py).
    model = interpreter.build_model(req) if req.get("module") is not None else None

    def rank_fn(rank: int) -> StepsObservation:
        _fault(req, rank)
        return interpreter.run(NativeBackend(req, rank, model), snapshots)

    results = _run(req, rank_fn)
    first = results[0]
    for key, view in first.get("values", {}).items():
        if "shards" in view:
            view["shards"] = _merge_shards(
                [r.get("values", {}).get(key, {}).get("shards", []) for r in results]
            )
    return first


def run(req: Request) -> Observation:
    if req["op"] == "tensor":
        return run_tensor(req)  # type: ignore[arg-type]
    if req["op"] == "module":
        return run_module(req)  # type: ignore[arg-type]
    if req["op"] == "steps":
        return run_steps(req)  # type: ignore[arg-type]
    raise ValueError(f"unknown op {req['op']!r}")
