"""Scenarios for tests/test_threaded.py, run in a subprocess (the pytest process never imports
torch): ``python tests/_threaded_scenarios.py NAME [ARGS]`` prints one JSON object.

Inputs are ``arange`` tensors, so the test can compute what DTensor must give in pure Python.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from runner.threaded import (
    RankFailed,
    RanksHung,
    ThreadedWorld,
    ThreadedWorldUnavailable,
    WorldBroken,
)


def grid(rows: int, cols: int) -> torch.Tensor:
    return torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols)


def semantics() -> dict[str, Any]:
    """DTensor's answers at world size 4, one entry per rank."""

    def shard_rows(rank: int) -> dict[str, Any]:
        mesh = DeviceMesh("cpu", list(range(4)))
        x = grid(8, 4)
        d = distribute_tensor(x, mesh, [Shard(0)])
        r = d.redistribute(mesh, [Replicate()])
        return {
            "local": d.to_local().tolist(),
            "full_equal": bool(d.full_tensor().equal(x)),
            "replicated_local": r.to_local().tolist(),
            "replicated_placements": [str(p) for p in r.placements],
        }

    def shard_2d(rank: int) -> dict[str, Any]:
        mesh = DeviceMesh("cpu", torch.arange(4).reshape(2, 2))
        d = distribute_tensor(grid(8, 4), mesh, [Shard(0), Shard(1)])
        return {"coordinate": mesh.get_coordinate(), "local": d.to_local().tolist()}

    def backward(rank: int) -> dict[str, Any]:
        mesh = DeviceMesh("cpu", list(range(4)))
        x = distribute_tensor(grid(8, 4).requires_grad_(True), mesh, [Shard(0)])
        w = distribute_tensor(grid(4, 2).requires_grad_(True), mesh, [Replicate()])
        ((x * x).sum() + (x @ w).sum()).backward()
        assert isinstance(x.grad, DTensor) and isinstance(w.grad, DTensor)
        return {
            "is_leaf": x.is_leaf,
            "requires_grad": x.requires_grad,
            "x_grad": x.grad.full_tensor().tolist(),
            "w_grad": w.grad.full_tensor().tolist(),
        }

    with ThreadedWorld(4) as world:
        return {
            "shard_rows": world.run(shard_rows, timeout=60),
            "shard_2d": world.run(shard_2d, timeout=60),
            "backward": world.run(backward, timeout=60),
        }


def pitfall(clear: bool, reps: int) -> dict[str, Any]:
    """Uneven ``[Shard(0), Shard(0)]`` on a (2, 4) mesh, after other cases, in new worlds.

    Rows: 7 over the outer axis gives 4 and 3, so the plan for the inner axis depends on the
    mesh coordinate. Each repetition is a new world: its threads may get the ids of the last
    world's threads, for other ranks, and so DTensor's cached plans for another coordinate.
    """
    rows = 7
    x = grid(rows, 3)
    earlier: list[Callable[[DeviceMesh], Any]] = [
        lambda mesh: distribute_tensor(grid(rows, 3), mesh, [Shard(0), Shard(0)]).full_tensor(),
        lambda mesh: distribute_tensor(grid(8, 4), mesh, [Shard(0), Shard(1)]).full_tensor(),
        lambda mesh: (
            distribute_tensor(grid(13, 2), mesh, [Replicate(), Shard(0)])
            .redistribute(mesh, [Shard(0), Shard(0)])
            .full_tensor()
        ),
    ]
    wrong = errors = 0
    for rep in range(reps):

        def before(rank: int, i: int = rep % len(earlier)) -> None:
            earlier[i](DeviceMesh("cpu", torch.arange(8).reshape(2, 4)))

        def check(rank: int) -> bool:
            mesh = DeviceMesh("cpu", torch.arange(8).reshape(2, 4))
            d = distribute_tensor(x, mesh, [Shard(0), Shard(0)])
            return bool(d.full_tensor().equal(x))

        # A stale plan shows as wrong values, or as a shape error inside a collective.
        with ThreadedWorld(8, clear_caches=clear) as world:
            try:
                world.run(before, timeout=60)
                wrong += not all(world.run(check, timeout=60))
            except RankFailed:
                errors += 1
    return {"clear": clear, "reps": reps, "wrong": wrong, "errors": errors}


def isolation() -> dict[str, Any]:
    """A rank that raises, one that skips a collective, one that dies before a 2-D mesh."""
    events: list[dict[str, Any]] = []

    def ok(rank: int) -> bool:
        mesh = DeviceMesh("cpu", torch.arange(4).reshape(2, 2))
        return bool(
            distribute_tensor(grid(8, 4), mesh, [Shard(0), Shard(1)])
            .full_tensor()
            .equal(grid(8, 4))
        )

    def raises(rank: int) -> float:
        mesh = DeviceMesh("cpu", list(range(4)))
        if rank == 2:
            raise ValueError("rank 2 refuses")
        return distribute_tensor(grid(8, 4), mesh, [Shard(0)]).full_tensor().sum().item()

    def skips(rank: int) -> float | None:
        mesh = DeviceMesh("cpu", list(range(4)))
        d = distribute_tensor(grid(8, 4), mesh, [Shard(0)])
        if rank == 0:
            return None  # the others wait for rank 0 in full_tensor's all-gather
        return d.full_tensor().sum().item()

    def dies_before_mesh(rank: int) -> None:
        if rank == 1:
            raise KeyError("no mesh for rank 1")
        DeviceMesh("cpu", torch.arange(4).reshape(2, 2))  # the others wait in new_group

    def attempt(name: str, fn: Callable[[int], Any], timeout: float) -> None:
        try:
            out = world.run(fn, timeout=timeout)
            events.append({"name": name, "result": "ok", "values": out})
        except RankFailed as exc:
            events.append(
                {
                    "name": name,
                    "result": "RankFailed",
                    "rank": exc.rank,
                    "exc": type(exc.exc).__name__,
                    "message": str(exc),
                }
            )
        except RanksHung as exc:
            events.append(
                {
                    "name": name,
                    "result": "RanksHung",
                    "ranks": exc.ranks,
                    "seconds": exc.seconds,
                    "stuck": exc.stuck,
                }
            )

    with ThreadedWorld(4) as world:
        attempt("ok", ok, 60)
        attempt("raises", raises, 60)
        attempt("after_raise", ok, 60)
        attempt("skips", skips, 3)
        attempt("after_hang", ok, 60)
        attempt("dies_before_mesh", dies_before_mesh, 60)
        attempt("after_barrier", ok, 60)
    return {"events": events}


def stuck() -> dict[str, Any]:
    """A rank busy outside torch.distributed can't be woken: the process is done for."""
    out: dict[str, Any] = {}
    world = ThreadedWorld(2)

    def sleeps(rank: int) -> None:
        if rank == 1:
            time.sleep(120)

    try:
        world.run(sleeps, timeout=1)
    except RanksHung as exc:
        out["hung"] = {"ranks": exc.ranks, "stuck": exc.stuck}
    for what, action in (
        ("run", lambda: world.run(lambda rank: rank, timeout=5)),
        ("new_world", lambda: ThreadedWorld(2)),
    ):
        try:
            action()
            out[what] = "ran"
        except WorldBroken as exc:
            out[what] = f"WorldBroken: {exc}"
    world.close()
    return out


def unavailable(what: str) -> dict[str, Any]:
    """Simulate a torch where a piece the world needs has moved."""
    if what == "module":
        sys.modules["torch.testing._internal.distributed.multi_threaded_pg"] = None  # type: ignore[assignment]
    else:
        import torch.distributed.tensor._redistribute as redistribute

        redistribute._gen_transform_infos = lambda src, dst: []  # a plain function: no cache
    try:
        ThreadedWorld(2)
    except ThreadedWorldUnavailable as exc:
        return {"raised": "ThreadedWorldUnavailable", "message": str(exc)}
    return {"raised": None}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "semantics": semantics,
    "pitfall": lambda clear, reps: pitfall(clear == "1", int(reps)),
    "isolation": isolation,
    "stuck": stuck,
    "unavailable": unavailable,
}

if __name__ == "__main__":
    name, *args = sys.argv[1:]
    print(json.dumps(SCENARIOS[name](*args)))
