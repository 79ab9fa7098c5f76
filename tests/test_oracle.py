"""The pure-Python oracle against torch's own DTensor layout function."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from runner import oracle
from runner.placements import Placement, parse

# Runs in a child process so that this test process never imports torch.
TORCH_SIDE = """
import json, sys
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
out = []
for case in json.load(sys.stdin):
    places = [Shard(p[1]) if p[0] == "shard" else Replicate() for p in case["placements"]]
    out.append([
        [list(x) for x in _compute_local_shape_and_global_offset(case["shape"], case["mesh"], coord, places)]
        for coord in case["coords"]
    ])
json.dump(out, sys.stdout)
"""


def random_case(rng: random.Random) -> dict:
    rank = rng.randint(1, 3)
    shape = [rng.randint(1, 13) for _ in range(rank)]
    mesh = [rng.randint(1, 4) for _ in range(rng.randint(1, 3))]
    placements = []
    for _ in mesh:
        if rng.random() < 0.25:
            placements.append(Placement("replicate"))
        else:
            placements.append(Placement("shard", rng.randint(-rank, rank - 1)))
    if len(mesh) >= 2 and rng.random() < 0.3:  # one tensor dim over two mesh axes
        dim = rng.randint(0, rank - 1)
        placements[0] = placements[1] = Placement("shard", dim)
    return {"shape": shape, "mesh": mesh, "placements": placements}


def test_oracle_matches_torch_on_random_layouts() -> None:
    rng = random.Random(20261124)
    cases = [random_case(rng) for _ in range(400)]
    payload = []
    for case in cases:
        devices = 1
        for size in case["mesh"]:
            devices *= size
        payload.append(
            {
                "shape": case["shape"],
                "mesh": case["mesh"],
                # torch's helper takes normalized dims (its public API normalizes first).
                "placements": [
                    p.normalized(len(case["shape"])).as_json() for p in case["placements"]
                ],
                "coords": [list(oracle.coordinate(d, case["mesh"])) for d in range(devices)],
            }
        )
    done = subprocess.run(
        [sys.executable, "-c", TORCH_SIDE],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=True,
    )
    torch_answers = json.loads(done.stdout)
    uneven = two_axes = 0
    for case, answer in zip(cases, torch_answers, strict=True):
        ours = oracle.layout(case["shape"], case["mesh"], case["placements"])
        assert [[list(s.shape), list(s.offset)] for s in ours] == answer, case
        uneven += any(s.shape != ours[0].shape for s in ours)
        dims = [
            p.normalized(len(case["shape"])).dim for p in case["placements"] if p.kind == "shard"
        ]
        two_axes += len(dims) != len(set(dims))
    # The random cases really cover the hard parts.
    assert uneven > 50 and two_axes > 50


def test_chunk_follows_torch_chunk_with_empty_tail() -> None:
    assert [oracle.chunk(5, 4, i) for i in range(4)] == [(2, 0), (2, 2), (1, 4), (0, 5)]
    assert [oracle.chunk(3, 4, i) for i in range(4)] == [(1, 0), (1, 1), (1, 2), (0, 3)]


def test_seed_2d_case_and_padding() -> None:
    places = [parse("Replicate()"), parse("Shard(0)")]
    layout = oracle.layout([6, 3], [2, 2], places)
    assert [(s.coord, s.shape, s.offset) for s in layout] == [
        ((0, 0), (3, 3), (0, 0)),
        ((0, 1), (3, 3), (3, 0)),
        ((1, 0), (3, 3), (0, 0)),
        ((1, 1), (3, 3), (3, 0)),
    ]
    assert oracle.padded_shape([5, 3], [4], [parse("Shard(0)")]) == (2, 3)
    assert oracle.padded_shape([5, 6], [2, 2], [parse("Shard(-1)"), parse("Shard(-1)")]) == (5, 2)
