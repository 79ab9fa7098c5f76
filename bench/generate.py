"""Generated tensor cases for the scale benchmarks, and the same cases written by hand.

One description of N cases is written four ways:

- **spec files** for shardspec: ``specs/gen_NN.yaml``, 1,000 cases a file (each file well
  under the 1 MiB cap on a spec file);
- **the parametrized anchor** ``param/test_cases.py``: the same cases hand-written as one
  parametrized pytest test (what bench/collection.py collects against shardspec). Its
  body does the work shardspec's default checks do, so it can also be run;
- **the seed-style anchor** ``seed/test_seed_style.py``: the same cases as the seed
  (PyTorch's test_xla_integration.py) writes them, one ``TestCase`` method per case on
  ``torch.testing._internal.common_utils.TestCase``, each checking what shardspec checks
  unasked (type, global shape, every device's piece: shape, offset, values; requires_grad,
  is_leaf; the sharding string);
- **the bare loop** ``bare/loop.py``: ``distribute_tensor`` and the same checks in a plain
  ``for`` loop, no pytest at all.

The cases vary the way the library's do: 1-D and 2-D meshes, Shard on rows, columns and
the last dim of a 3-D tensor, Replicate, uneven rows, four dtypes, requires_grad true and
false, and a declared ``local_shape`` (checked against DTensor's rules before anything runs)
wherever it is the same at every device count.

    .venv/bin/python bench/generate.py DIR --cases 10000     # write all four into DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CASES_PER_FILE = 1000
MAX_FILE_BYTES = 1 << 20  # the loader's cap on a spec file (runner/yamlload.py MAX_BYTES)
DTYPES = ("float32", "bfloat16", "float64", "int32")

# A template: mesh, placements, shape (expressions in n, k, m), local shape or None, and
# whether it needs an even n. k and m vary from case to case.
TEMPLATES = (
    ("[n]", ["Shard(0)"], ["k*n", "m"], ["k", "m"], False),
    ("[n]", ["Shard(1)"], ["m", "k*n"], ["m", "k"], False),
    ("[n]", ["Replicate()"], ["k", "m"], ["k", "m"], False),
    ("[2, n/2]", ["Replicate()", "Shard(0)"], ["k*n/2", "m"], ["k", "m"], True),
    ("[2, n/2]", ["Shard(0)", "Shard(1)"], ["2*k", "m*n/2"], ["k", "m"], True),
    ("[n]", ["Shard(-1)"], ["m", "k", "k*n"], ["m", "k", "k"], False),
    ("[n]", ["Shard(0)"], ["k*n+1", "m"], None, False),  # uneven: device 0's piece varies
)


def cases(count: int) -> list[dict]:
    """The cases, deterministic: id, template index, k, m, dtype, requires_grad."""
    out = []
    for i in range(count):
        dtype = DTYPES[(i // len(TEMPLATES)) % len(DTYPES)]
        out.append(
            {
                "id": f"c{i + 1:05d}",
                "template": i % len(TEMPLATES),
                "k": 1 + i % 5,
                "m": 2 + (i // 7) % 6,
                "dtype": dtype,
                "requires_grad": dtype != "int32" and (i // 3) % 2 == 0,
            }
        )
    return out


def _fill(expr: str, case: dict) -> str:
    """An expression of the template with k and m put in (n stays n)."""
    return expr.replace("k", str(case["k"])).replace("m", str(case["m"]))


def _value(expr: str, n: int) -> int:
    """An expression in n, worked out at one n (the anchors are written for one n)."""
    return int(eval(expr.replace("/", "//"), {"n": n}))  # our own templates, never user text


def _case_yaml(case: dict) -> str:
    mesh, placements, shape, local, even = TEMPLATES[case["template"]]
    shape_text = ", ".join(_fill(s, case) for s in shape)
    lines = [
        f"  - id: {case['id']}",
        f"    description: generated tensor case {case['id']}",
    ]
    if even:
        lines.append("    requires: {devices_divisible_by: 2}")
    lines += [
        f"    mesh: {mesh}",
        f"    placements: [{', '.join(placements)}]",
        f"    input: {{shape: [{shape_text}], dtype: {case['dtype']}, "
        f"requires_grad: {str(case['requires_grad']).lower()}}}",
        "    expect:",
        f"      global_shape: [{shape_text}]",
    ]
    if local is not None:
        lines.append(f"      local_shape: [{', '.join(_fill(s, case) for s in local)}]")
    return "\n".join(lines)


def spec_files(count: int) -> dict[str, str]:
    """File name -> YAML text, CASES_PER_FILE cases a file."""
    all_cases = cases(count)
    files = {}
    for start in range(0, len(all_cases), CASES_PER_FILE):
        chunk = all_cases[start : start + CASES_PER_FILE]
        text = (
            "# yaml-language-server: $schema=../schema/spec.schema.json\n"
            "version: 1\n"
            f"description: bench/generate.py, tensor cases {chunk[0]['id']}..{chunk[-1]['id']}\n"
            "cases:\n" + "\n".join(_case_yaml(c) for c in chunk) + "\n"
        )
        if len(text.encode()) >= MAX_FILE_BYTES:
            raise AssertionError("a generated spec file would be over the 1 MiB cap")
        files[f"gen_{start // CASES_PER_FILE + 1:02d}.yaml"] = text
    return files


# --- the hand-written sides ---------------------------------------------------------------


def _placement_py(text: str) -> str:
    if text.startswith("Shard("):
        return f"Shard({text[6:-1]})"
    return "Replicate()"


def _mesh_py(mesh: str) -> str:
    return "(N,)" if mesh == "[n]" else "(2, N // 2)"


def _shape_py(exprs: list[str], case: dict) -> str:
    """A shape as a hand-writer would type it: sizes in N (as the seed's 3 * device_count)."""
    out = []
    for e in exprs:
        text = _fill(e, case).replace("n/2", "N // 2").replace("n", "N").replace("*", " * ")
        out.append(text.replace("+", " + "))
    return "[" + ", ".join(out) + "]"


# What shardspec checks unasked on a tensor case, written once for every hand-written side.
CHECKS = '''
def check_case(mesh_shape, placements, shape, local_shape, dtype, requires_grad, seed):
    """distribute_tensor, then what shardspec checks unasked."""
    mesh = mesh_of(mesh_shape)
    gen = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    if dt.is_floating_point:
        x = torch.randn(shape, generator=gen).to(dt)
    else:
        x = torch.randint(-100, 100, shape, generator=gen, dtype=dt)
    x.requires_grad_(requires_grad)
    dist = distribute_tensor(x, mesh, placements)
    assert type(dist).__name__ == "XLAShardedTensor"
    glob = dist.global_tensor
    assert list(glob.shape) == list(shape)
    assert glob.requires_grad == requires_grad
    assert dist.is_leaf
    assert torch_xla._XLAC._get_xla_sharding_spec(glob)
    source = x.detach()
    shards = dist.local_shards
    assert len(shards) == mesh.size()
    for shard, (want_shape, want_offset) in zip(shards, chunks(shape, mesh_shape, placements)):
        piece = shard.unpadded_data.detach().cpu()
        key = Ellipsis if shard.indices is Ellipsis else tuple(shard.indices)
        assert list(piece.shape) == want_shape
        offset = [0] * len(shape) if key is Ellipsis else [s.indices(d)[0] for s, d in zip(key, shape)]
        assert offset == want_offset
        assert torch.equal(piece, source[key])
    if local_shape is not None:
        assert list(dist.local_shards[0].unpadded_data.shape) == list(local_shape)


def chunks(shape, mesh_shape, placements):
    """Each device's piece (shape, offset) by DTensor's rules (torch.chunk, nested)."""
    out = []
    count = 1
    for s in mesh_shape:
        count *= s
    for device in range(count):
        coord, rest = [], device
        for s in reversed(mesh_shape):
            coord.insert(0, rest % s)
            rest //= s
        size, offset = list(shape), [0] * len(shape)
        for axis, p in enumerate(placements):
            if isinstance(p, Shard):
                dim = p.dim % len(shape)
                k = mesh_shape[axis]
                step = -(-size[dim] // k)
                start = min(step * coord[axis], size[dim])
                size[dim], offset[dim] = min(step, size[dim] - start), offset[dim] + start
        out.append((size, offset))
    return out
'''

PARAM_ANCHOR = '''\
"""bench/generate.py: __COUNT__ tensor cases hand-written as one parametrized pytest test."""

import pytest

N = 4  # the device count this suite is written for (CPU_NUM_DEVICES)
Shard = lambda dim: ("shard", dim)  # noqa: E731  (plain data at collection: no torch import)
Replicate = lambda: ("replicate",)  # noqa: E731

CASES = [
__PARAMS__
]


@pytest.mark.parametrize(
    "name, mesh, placements, shape, local_shape, dtype, requires_grad",
    CASES,
    ids=[case[0] for case in CASES],
)
def test_case(name, mesh, placements, shape, local_shape, dtype, requires_grad):
    from _checks import run

    run(name, mesh, placements, shape, local_shape, dtype, requires_grad)
'''

PARAM_CHECKS = (
    '''\
"""What test_cases.py runs for a case (imported at run time: collection stays torch-free)."""

import warnings
import zlib

import numpy as np
import torch
import torch_xla
import torch_xla.runtime as xr
from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor

warnings.filterwarnings("ignore", message=".*XLA_USE_SPMD is being deprecated")
xr.use_spmd()
MESHES = {}


def mesh_of(shape):
    if shape not in MESHES:
        count = int(np.prod(shape))
        MESHES[shape] = DeviceMesh("xla", np.arange(count).reshape(shape))
    return MESHES[shape]


def run(name, mesh, placements, shape, local_shape, dtype, requires_grad):
    placements = [Shard(p[1]) if p[0] == "shard" else Replicate() for p in placements]
    check_case(
        mesh, placements, shape, local_shape, dtype, requires_grad, zlib.crc32(name.encode())
    )
'''
    + CHECKS
)

SEED_ANCHOR = (
    '''\
"""bench/generate.py: __COUNT__ tensor cases hand-written in the seed's style.

As PyTorch's test/distributed/tensor/test_xla_integration.py does: a TestCase of
torch.testing._internal, one method per case, torch_xla imported under with_xla.
"""

import unittest
import warnings
import zlib
from functools import wraps

import numpy as np
import torch
from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor
from torch.testing._internal.common_utils import TestCase, run_tests

warnings.filterwarnings("ignore", message=".*XLA_USE_SPMD is being deprecated")
MESHES = {}


def with_xla(func):
    @wraps(func)
    def wrapper(self, *args, **kwargs):
        try:
            import torch_xla  # noqa: F401
            import torch_xla.runtime as xr
        except ImportError as exc:
            raise unittest.SkipTest("torch_xla is not installed.") from exc
        xr.use_spmd()
        self.device_type = "xla"
        func(self, *args, **kwargs)

    return wrapper


def mesh_of(shape):
    if shape not in MESHES:
        count = int(np.prod(shape))
        MESHES[shape] = DeviceMesh("xla", np.arange(count).reshape(shape))
    return MESHES[shape]


import torch_xla  # noqa: E402
import torch_xla.runtime as xr  # noqa: E402
'''
    + CHECKS
    + """

class GeneratedXLAIntegrationTest(TestCase):
__METHODS__


if __name__ == "__main__":
    run_tests()
"""
)

BARE_LOOP = (
    '''\
"""bench/generate.py: __COUNT__ tensor cases as a bare distribute_tensor loop (no pytest)."""

import time
import warnings
import zlib

began = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_xla  # noqa: E402
import torch_xla.runtime as xr  # noqa: E402
from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor  # noqa: E402

warnings.filterwarnings("ignore", message=".*XLA_USE_SPMD is being deprecated")
warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional indexing")
xr.use_spmd()
N = xr.global_runtime_device_count()
MESHES = {}


def mesh_of(shape):
    if shape not in MESHES:
        count = int(np.prod(shape))
        MESHES[shape] = DeviceMesh("xla", np.arange(count).reshape(shape))
    return MESHES[shape]

'''
    + CHECKS
    + """

CASES = [
__ROWS__
]
passed = 0
for row in CASES:
    check_case(*row)
    passed += 1
print(f"{passed} passed in {time.perf_counter() - began:.2f}s")
"""
)


def _row(case: dict) -> tuple[str, str, str, str]:
    """A case as Python source: mesh, placements, shape, local shape."""
    mesh, placements, shape, local, _even = TEMPLATES[case["template"]]
    places = "[" + ", ".join(_placement_py(p) for p in placements) + "]"
    local_py = _shape_py(local, case) if local is not None else "None"
    return _mesh_py(mesh), places, _shape_py(shape, case), local_py


def param_anchor(count: int) -> str:
    params = []
    for case in cases(count):
        mesh, places, shape, local = _row(case)
        params.append(
            f"    ('{case['id']}', {mesh}, {places}, {shape}, {local}, '{case['dtype']}', "
            f"{case['requires_grad']}),"
        )
    return PARAM_ANCHOR.replace("__COUNT__", str(count)).replace("__PARAMS__", "\n".join(params))


def seed_anchor(count: int) -> str:
    methods = []
    for case in cases(count):
        mesh, places, shape, local = _row(case)
        needs_even = TEMPLATES[case["template"]][4]
        guard = "N % 2 == 0" if needs_even else "True"
        methods.append(
            f"""
    @with_xla
    def test_{case["id"]}(self):
        N = xr.global_runtime_device_count()
        if {guard}:
            check_case({mesh}, {places}, {shape}, {local}, "{case["dtype"]}",
                       {case["requires_grad"]}, zlib.crc32(b"{case["id"]}"))"""
        )
    return SEED_ANCHOR.replace("__COUNT__", str(count)).replace("__METHODS__", "".join(methods))


def bare_loop(count: int) -> str:
    rows = []
    for case in cases(count):
        mesh, places, shape, local = _row(case)
        rows.append(
            f"    ({mesh}, {places}, {shape}, {local}, '{case['dtype']}', "
            f"{case['requires_grad']}, zlib.crc32(b'{case['id']}')),"
        )
    return BARE_LOOP.replace("__COUNT__", str(count)).replace("__ROWS__", "\n".join(rows))


PYTEST_INI = "[pytest]\nshardspec_paths = specs\n"
# As a hand-written suite would: torch_xla's per-call warnings filtered in the ini.
ANCHOR_INI = (
    "[pytest]\nfilterwarnings =\n"
    "    ignore:XLA_USE_SPMD is being deprecated\n"
    "    ignore:Using a non-tuple sequence for multidimensional indexing\n"
    "    ignore:__array__ implementation doesn't accept a copy keyword\n"
)


def write(directory: Path, count: int) -> dict[str, Path]:
    """Write DIR/specs/ (with DIR/pytest.ini), DIR/param/, DIR/seed/ and DIR/bare/.

    Each anchor folder has a pytest.ini of its own, so it is a project of its own (and
    shardspec's plugin, though installed, finds no spec folder there).
    """
    specs = directory / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    for name, text in spec_files(count).items():
        (specs / name).write_text(text)
    (directory / "pytest.ini").write_text(PYTEST_INI)
    out = {"specs": specs}
    for folder, files in {
        "param": {"test_cases.py": param_anchor(count), "_checks.py": PARAM_CHECKS},
        "seed": {"test_seed_style.py": seed_anchor(count)},
        "bare": {"loop.py": bare_loop(count)},
    }.items():
        where = directory / folder
        where.mkdir(parents=True, exist_ok=True)
        (where / "pytest.ini").write_text(ANCHOR_INI)
        for name, text in files.items():
            (where / name).write_text(text)
        out[folder] = where
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--cases", type=int, default=10_000)
    args = parser.parse_args(argv)
    written = write(args.directory, args.cases)
    print(json.dumps({k: str(v) for k, v in written.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
