"""torch's own threaded DTensor test base, run on shardspec requests (a helper of
tests/test_native.py, run in a subprocess: it imports torch).

For each request (the JSON written by the test), every rank distributes the inputs and
runs the steps with the DTensor API by hand, and records each DTensor value's placements
and its own piece (shape and offset, from DTensor's layout function). Rank 0 writes them.
"""

from __future__ import annotations

import json
import os
import threading

import torch
from torch.distributed.tensor import (
    DeviceMesh,
    DTensor,
    Partial,
    Replicate,
    Shard,
    distribute_tensor,
)
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.testing._internal.distributed._tensor.common_dtensor import DTensorOpTestBase

_lock = threading.Lock()
_found: dict[str, dict] = {}


def _placement(raw: list):
    if raw[0] == "shard":
        return Shard(raw[1])
    if raw[0] == "partial":
        return Partial(raw[1] if len(raw) > 1 else "sum")
    return Replicate()


def _json(p) -> list:
    if isinstance(p, Shard):
        return ["shard", p.dim]
    if isinstance(p, Partial):
        return ["partial"] if p.reduce_op == "sum" else ["partial", p.reduce_op]
    return ["replicate"]


def _input(shape: list[int], dtype: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)  # a private generator: ranks are threads
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(getattr(torch, dtype))


class SampleTest(DTensorOpTestBase):
    @property
    def world_size(self) -> int:
        return 4

    def test_requests(self) -> None:
        with open(os.environ["SHARDSPEC_BASE_REQUESTS"]) as handle:
            requests = json.load(handle)
        for name, req in requests.items():
            mesh = DeviceMesh(self.device_type, torch.arange(4).reshape(req["mesh"]))
            seen = self._one_request(req, mesh)
            with _lock:
                for key, (places, piece) in seen.items():
                    entry = _found.setdefault(name, {}).setdefault(
                        key, {"placements": places, "pieces": []}
                    )
                    entry["pieces"].append([self.rank, *piece])
        torch.distributed.barrier()
        if self.rank == 0:
            for entry in (v for case in _found.values() for v in case.values()):
                entry["pieces"].sort()
            with open(os.environ["SHARDSPEC_BASE_OUT"], "w") as out:
                json.dump(_found, out)

    def _one_request(self, req: dict, mesh: DeviceMesh) -> dict:
        values: dict[str, object] = {}
        if req["op"] == "tensor":
            x = _input(req["shape"], req["dtype"], req["seed"])
            values["x"] = distribute_tensor(x, mesh, [_placement(p) for p in req["placements"]])
        else:
            for spec in req["tensors"]:
                x = _input(spec["shape"], spec["dtype"], spec["seed"])
                if spec["placements"] is not None:
                    x = distribute_tensor(x, mesh, [_placement(p) for p in spec["placements"]])
                values[spec["name"]] = x
            for step in req["steps"]:
                if step["error"]:
                    break
                args = [values[a["value"]] if isinstance(a, dict) else a for a in step["args"]]
                call = step["call"]
                if call == "redistribute":
                    result = args[0].redistribute(mesh, [_placement(p) for p in args[1]])
                elif call == "full_tensor":
                    result = args[0].full_tensor()
                elif call == "to_local":
                    result = args[0].to_local()
                else:
                    result = getattr(torch, call)(*args, **step["kwargs"])
                if step["target"]:
                    values[step["target"]] = result
        seen = {}
        for key, value in values.items():
            if isinstance(value, DTensor):
                _, offset = compute_local_shape_and_global_offset(
                    value.shape, mesh, value.placements
                )
                seen[key] = (
                    [_json(p) for p in value.placements],
                    [list(value.to_local().shape), [int(o) for o in offset]],
                )
        return seen
