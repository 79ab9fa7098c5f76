"""runner.xla_sharding: predicted HLO sharding strings, checked by hand and against torch_xla.

This process never imports torch: real torch_xla runs in one subprocess per device count.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

from runner.placements import Placement, parse
from runner.xla_sharding import predict, predict_or_none


def P(*texts: str) -> list[Placement]:
    return [parse(t) for t in texts]


# (mesh, placements, tensor rank, string measured on torch_xla 2.9)
MEASURED = [
    ((4,), P("Shard(0)"), 2, "{devices=[4,1]0,1,2,3}"),
    ((2, 2), P("Replicate()", "Shard(0)"), 2, "{devices=[2,1,2]0,2,1,3 last_tile_dim_replicate}"),
    (
        (2, 4),
        P("Replicate()", "Shard(0)"),
        2,
        "{devices=[4,1,2]0,4,1,5,2,6,3,7 last_tile_dim_replicate}",
    ),
    ((2, 2), P("Shard(0)", "Shard(1)"), 2, "{devices=[2,2]0,1,2,3}"),
    ((2, 2), P("Shard(1)", "Shard(0)"), 2, "{devices=[2,2]0,2,1,3}"),
    ((1, 4), P("Replicate()", "Shard(0)"), 2, "{devices=[4,1]0,1,2,3}"),
    ((1,), P("Shard(0)"), 2, "{replicated}"),
    ((1, 1), P("Shard(0)", "Shard(1)"), 2, "{replicated}"),
    # 1-D tensors: no tile dim of 1 to pad with.
    ((4,), P("Shard(0)"), 1, "{devices=[4]0,1,2,3}"),
    ((2, 2), P("Shard(0)", "Replicate()"), 1, "{devices=[2,2]0,1,2,3 last_tile_dim_replicate}"),
    # Size-1 mesh axes: a Shard over one tiles nothing; an unused one adds no replica dim.
    ((1, 4), P("Shard(0)", "Replicate()"), 2, "{replicated}"),
    ((4, 1), P("Replicate()", "Shard(0)"), 2, "{replicated}"),
    ((4, 1), P("Shard(1)", "Shard(0)"), 2, "{devices=[1,4]0,1,2,3}"),
    (
        (1, 2, 2),
        P("Shard(0)", "Replicate()", "Shard(0)"),
        1,
        "{devices=[2,2]0,2,1,3 last_tile_dim_replicate}",
    ),
    # Negative dims and a 3-D mesh.
    ((2, 2), P("Shard(-1)", "Shard(-2)"), 3, "{devices=[1,2,2]0,2,1,3}"),
    (
        (2, 2, 2),
        P("Shard(1)", "Replicate()", "Shard(0)"),
        3,
        "{devices=[2,2,1,2]0,2,4,6,1,3,5,7 last_tile_dim_replicate}",
    ),
    (
        (2, 2, 2),
        P("Replicate()", "Shard(2)", "Replicate()"),
        3,
        "{devices=[1,1,2,4]0,1,4,5,2,3,6,7 last_tile_dim_replicate}",
    ),
    ((4, 2), P("Replicate()", "Replicate()"), 2, "{replicated}"),
    ((4,), P("Replicate()"), 0, "{replicated}"),
]

# Several mesh axes on one tensor dim, as DTensor means it (nested, major to minor in mesh
# order). These equal what torch_xla prints for mark_sharding with a tuple partition spec;
# distribute_tensor itself keeps only the last axis (a known divergence).
SEVERAL_AXES = [
    ((2, 2), P("Shard(0)", "Shard(0)"), 2, "{devices=[4,1]0,1,2,3}"),
    ((2, 2), P("Shard(0)", "Shard(0)"), 1, "{devices=[4]0,1,2,3}"),
    ((2, 2, 2), P("Shard(1)", "Shard(0)", "Shard(1)"), 2, "{devices=[2,4]0,1,4,5,2,3,6,7}"),
    ((4, 2), P("Shard(1)", "Shard(1)"), 3, "{devices=[1,8,1]0,1,2,3,4,5,6,7}"),
    ((2, 4), P("Shard(-1)", "Shard(1)"), 2, "{devices=[1,8]0,1,2,3,4,5,6,7}"),
    (
        (2, 2, 2),
        P("Shard(0)", "Replicate()", "Shard(0)"),
        2,
        "{devices=[4,1,2]0,2,1,3,4,6,5,7 last_tile_dim_replicate}",
    ),
    (
        (2, 1, 2),
        P("Shard(0)", "Shard(0)", "Replicate()"),
        2,
        "{devices=[2,1,2]0,1,2,3 last_tile_dim_replicate}",
    ),
]


@pytest.mark.parametrize(("mesh", "placements", "rank", "expected"), MEASURED)
def test_measured_examples(mesh, placements, rank, expected) -> None:
    assert predict(mesh, placements, rank) == expected
    assert predict_or_none(mesh, placements, rank) == expected


@pytest.mark.parametrize(("mesh", "placements", "rank", "expected"), SEVERAL_AXES)
def test_several_axes_on_one_dim_follow_dtensor(mesh, placements, rank, expected) -> None:
    assert predict(mesh, placements, rank) == expected


def test_partial_has_no_prediction() -> None:
    placements = P("Replicate()", "Partial()")
    with pytest.raises(ValueError, match="Partial"):
        predict((2, 2), placements, 2)
    assert predict_or_none((2, 2), placements, 2) is None


@pytest.mark.parametrize(
    ("mesh", "placements", "rank"),
    [
        ((2, 2), P("Shard(0)"), 2),  # fewer placements than mesh axes
        ((4,), P("Shard(2)"), 2),
        ((4,), P("Shard(-3)"), 2),
        ((4,), P("Shard(0)"), 0),
    ],
)
def test_bad_layouts_raise(mesh, placements, rank) -> None:
    with pytest.raises(ValueError):
        predict(mesh, placements, rank)


# --- against real torch_xla ------------------------------------------------------------------

# Reads [[mesh, placements as json, rank, how], ...] on stdin and prints the sharding strings as
# one JSON list. how = "dtensor": distribute_tensor on a DeviceMesh (what the engine does);
# "tuple": mark_sharding with a tuple partition spec, XLA's own form of DTensor's nesting.
PROBE = textwrap.dedent(
    """
    import json, os, sys, warnings
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library prints must not corrupt the reply
    warnings.filterwarnings("ignore", message=".*XLA_USE_SPMD is being deprecated")
    warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional")
    import numpy as np
    import torch
    import torch_xla
    import torch_xla.distributed.spmd as xs
    import torch_xla.runtime as xr
    from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor

    xr.use_spmd()
    specs = []
    for mesh, placements, rank, how in json.load(sys.stdin):
        n = int(np.prod(mesh))
        x = torch.zeros([5 + i for i in range(rank)])
        if how == "dtensor":
            ps = [Shard(p[1]) if p[0] == "shard" else Replicate() for p in placements]
            dist = distribute_tensor(x, DeviceMesh("xla", np.arange(n).reshape(mesh)), ps)
            glob = dist.global_tensor
        else:
            axes = [[] for _ in range(rank)]
            for axis, p in enumerate(placements):
                if p[0] == "shard":
                    axes[p[1] % rank].append(axis)
            spec = tuple(None if not a else a[0] if len(a) == 1 else tuple(a) for a in axes)
            glob = x.to("xla")
            xs.mark_sharding(glob, xs.Mesh(np.arange(n), tuple(mesh)), spec)
        specs.append(torch_xla._XLAC._get_xla_sharding_spec(glob))
    out.write(json.dumps(specs) + "\\n")
    out.flush()
    """
)


def _factorizations(n: int, parts: int) -> list[tuple[int, ...]]:
    """Every mesh shape with ``parts`` axes and ``n`` devices, size-1 axes included."""
    if parts == 1:
        return [(n,)]
    return [
        (d, *rest)
        for d in range(1, n + 1)
        if n % d == 0
        for rest in _factorizations(n // d, parts - 1)
    ]


def _layouts(n: int, rng: random.Random, count: int, several: bool) -> list[tuple]:
    """Random (mesh, placements, rank); ``several``: some tensor dim sharded by 2+ axes."""
    out: list[tuple] = []
    while len(out) < count:
        mesh = rng.choice(_factorizations(n, rng.randint(1, 3)))
        rank = rng.randint(1, 3)
        placements = []
        for _ in mesh:
            if rng.random() < 0.3:
                placements.append(Placement("replicate"))
            else:
                placements.append(Placement("shard", rng.randrange(-rank, rank)))
        dims = [p.normalized(rank).dim for p in placements if p.kind == "shard"]
        if (len(dims) != len(set(dims))) == several:
            out.append((mesh, placements, rank))
    return out


def _run_torch_xla(n: int, requests: list[list]) -> list[str]:
    env = dict(os.environ, PJRT_DEVICE="CPU", CPU_NUM_DEVICES=str(n))
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_predictions_match_real_torch_xla(n: int) -> None:
    rng = random.Random(2900 + n)
    single = _layouts(n, rng, 40, several=False)
    # Several axes on a dim need two mesh axes of any size, so n=1 has them too.
    several = _layouts(n, rng, 10, several=True)
    requests = [
        [list(mesh), [p.as_json() for p in placements], rank, how]
        for how, layouts in (("dtensor", single), ("tuple", several))
        for mesh, placements, rank in layouts
    ]
    actual = _run_torch_xla(n, requests)
    assert len(actual) == len(requests)
    wrong = [
        f"{how} mesh={mesh} {[str(p) for p in placements]} rank={rank}: "
        f"torch_xla {got!r}, predicted {predict(mesh, placements, rank)!r}"
        for (mesh, placements, rank), how, got in zip(
            single + several, [r[3] for r in requests], actual, strict=True
        )
        if predict(mesh, placements, rank) != got
    ]
    assert not wrong, "\n".join(wrong)
    assert "torch" not in sys.modules  # torch ran only in the subprocess
