"""Random step programs run by the reference engine and, independently, by plain torch.

Run as a script (it imports torch, so the test process doesn't): prints one JSON line per
program with the largest difference found. Used by tests/test_reference.py.
"""

from __future__ import annotations

import json
import random
import sys

import torch

from runner import interpreter, oracle
from runner.placements import Placement

UNARY = ["relu", "tanh", "sigmoid", "exp", "neg", "clone"]


def program(rng: random.Random, index: int) -> tuple[dict, list]:
    """A request, and the same program as (op, args) for the independent evaluation."""
    mesh = rng.choice([[4], [2, 2], [1, 4], [2, 1, 2]])
    rows, cols = rng.choice([2, 3, 4, 5, 8]), rng.choice([2, 3, 4, 6])
    places = [rng.choice([["replicate"], ["shard", 0], ["shard", 1]]) for _ in mesh]
    tensors = [
        {
            "name": "x",
            "shape": [rows, cols],
            "dtype": "float64",
            "placements": places,
            "requires_grad": True,
            "seed": 1000 + index,
        }
    ]
    steps, plain = [], []
    current = "x"
    for i in range(1, rng.randint(2, 5) + 1):
        kind = rng.choice(["unary", "unary", "mul", "add", "redistribute", "full_tensor"])
        target = f"v{i}"
        if kind == "unary":
            op = rng.choice(UNARY)
            steps.append((target, op, [{"value": current}], {}))
            plain.append((target, op, [current]))
        elif kind == "mul":
            steps.append((target, "mul", [{"value": current}, 2.5], {}))
            plain.append((target, "mul", [current, 2.5]))
        elif kind == "add":
            steps.append((target, "add", [{"value": current}, {"value": "x"}], {}))
            plain.append((target, "add", [current, "x"]))
        elif kind == "redistribute":
            new = [rng.choice([["replicate"], ["shard", 0]]) for _ in mesh]
            steps.append((target, "redistribute", [{"value": current}, new], {}))
            plain.append((target, "identity", [current]))
        else:
            steps.append((target, "full_tensor", [{"value": current}], {}))
            plain.append((target, "identity", [current]))
        current = target
    steps.append(("loss", "sum", [{"value": current}], {}))
    plain.append(("loss", "sum", [current]))
    steps.append((None, "backward", [{"value": "loss"}], {}))
    # device 0's piece of x, as DTensor lays it out
    shape, offset = oracle.shard_of(
        (rows, cols),
        mesh,
        (0,) * len(mesh),
        [Placement(p[0], p[1] if len(p) > 1 else None) for p in places],
    )
    steps.append(("piece", "to_local", [{"value": "x"}], {}))
    req = {
        "op": "steps",
        "mesh": mesh,
        "mesh_names": None,
        "tensors": tensors,
        "steps": [
            {
                "index": i,
                "line": i,
                "target": t,
                "call": c,
                "args": a,
                "kwargs": k,
                "error": False,
                **(
                    {"piece": {"offset": list(offset), "shape": list(shape)}}
                    if c == "to_local"
                    else {}
                ),
            }
            for i, (t, c, a, k) in enumerate(steps, 1)
        ],
        "reads": [
            {"key": key, "name": key, "step": None, "rtol": 0.0, "equals": [], "made_by": None}
            for key in (current, "loss", "x.grad", "piece")
        ],
        "reference": True,
    }
    return req, plain, (current, offset, shape)


def independent(req: dict, plain: list) -> dict[str, torch.Tensor]:
    x = interpreter.make_input([*req["tensors"][0]["shape"]], "float64", req["tensors"][0]["seed"])
    x = x.clone().requires_grad_(True)
    env = {"x": x}
    funcs = {
        "relu": torch.relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "exp": torch.exp,
        "neg": torch.neg,
        "clone": torch.clone,
        "identity": lambda t: t,
        "sum": torch.sum,
        "mul": torch.mul,
        "add": torch.add,
    }
    for target, op, args in plain:
        env[target] = funcs[op](*[env[a] if isinstance(a, str) else a for a in args])
    env["loss"].backward()
    return env


def main() -> int:
    rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    for index in range(count):
        req, plain, (last, offset, shape) = program(rng, index)
        snapshots, raised = interpreter.run_reference(req)
        env = independent(req, plain)
        piece = env["x"].detach()[
            tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))
        ]
        want = {
            last: env[last].detach(),
            "loss": env["loss"].detach(),
            "x.grad": env["x"].grad,
            "piece": piece,
        }
        diffs = {
            key: float((snapshots[key] - value).abs().max()) if value.numel() else 0.0
            for key, value in want.items()
            if key in snapshots and snapshots[key].shape == value.shape
        }
        missing = sorted(set(want) - set(diffs))
        print(json.dumps({"index": index, "raised": raised, "diffs": diffs, "missing": missing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
