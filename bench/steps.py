"""1,000 step cases through shardspec versus the same programs as a hand-written pytest.

Target: shardspec runs N (default 1000) cases of 3 to 5 steps each, at n=4, in at most 1.2x
the wall time of the same programs written by hand as one parametrized pytest test in one
process. The anchor does the same work per case: it builds seeded random CPU inputs,
distributes them (distribute_tensor on DeviceMesh("xla"), or xs.mark_sharding on an xs.Mesh),
runs the ops, calls torch_xla.sync(wait=True), and for every value reads its sharding string,
reads every device's piece, checks each piece equals the slice of the value it claims, and
compares the value with the same ops on CPU tensors (torch.testing.assert_close).

The programs are ones torch_xla 2.9 runs (torch_xla 2.9 facts in ../shared/DESIGN.md, and measured): pointwise ops,
reductions over a dim, transpose(0, 1) and softmax on distributed tensors, and the same ops
after mark_sharding on a plain tensor. Sizes vary from case to case, so the cases are not all
the same graph.

    .venv/bin/python bench/steps.py                  # measure (1000 cases, 3 runs each side)
    .venv/bin/python bench/steps.py --cases 100 --repeat 1   # a quick check
    .venv/bin/python bench/steps.py --write DIR      # only write the spec files (and the anchor)

Both sides run as whole pytest subprocesses, alternately, and their wall times are compared
(medians). Prints one JSON line; exits 1 when the ratio is over target or any run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import clean_env, counts, median, ratio, run, summary_line

TARGET_RATIO = 1.2
CASES_PER_FILE = 250
MAX_FILE_BYTES = 1 << 20
DEVICES = 4
SIZES = (1, 2, 3, 4)  # rows (or columns) are 4*k: a handful of graphs per template


# --- The programs -----------------------------------------------------------------------
# A template is written twice, from one description: as YAML steps for shardspec, and as a
# Python function for the anchor (hand-written below, in ANCHOR). Each YAML step is one op.


@dataclass(frozen=True)
class Template:
    name: str
    mesh: list[int]
    # name -> (shape as a function of k, placements text or None for a plain tensor)
    tensors: dict[str, tuple]
    steps: list[str]

    @property
    def two_d(self) -> bool:
        return len(self.mesh) > 1


TEMPLATES = [
    Template(
        "relu_mul_sum",
        [DEVICES],
        {"x": (lambda k: [4 * k, 16], "[Shard(0)]")},
        ["y = relu(x)", "z = mul(y, 2)", "s = sum(z, dim=1)"],
    ),
    Template(
        "tanh_add_mul_mean",
        [DEVICES],
        {"x": (lambda k: [8, 4 * k], "[Shard(1)]")},
        ["a = tanh(x)", "b = add(a, 1)", "c = mul(b, b)", "m = mean(c, dim=0)"],
    ),
    Template(
        "transpose_exp_softmax",
        [DEVICES],
        {"x": (lambda k: [4 * k, 8], "[Shard(0)]")},
        [
            "t = transpose(x, 0, 1)",
            "e = exp(t)",
            "p = softmax(e, dim=1)",
            "s = sum(p, dim=0)",
            "q = mul(s, 0.5)",
        ],
    ),
    Template(
        "two_inputs",
        [DEVICES],
        {
            "x": (lambda k: [4 * k, 8], "[Shard(0)]"),
            "w": (lambda k: [4 * k, 8], "[Shard(0)]"),
        },
        ["a = add(x, w)", "b = mul(a, x)", "c = relu(b)", "d = sum(c, dim=0)"],
    ),
    Template(
        "mesh2d_sigmoid_sub",
        [2, 2],
        {"x": (lambda k: [4 * k, 8], "[Shard(0), Shard(1)]")},
        ["a = sigmoid(x)", "b = sub(a, 0.5)", "c = div(b, 3)", "d = sum(c, dim=1)"],
    ),
    Template(
        "mark_2d_add_exp",
        [2, 2],
        {"t": (lambda k: [4 * k, 8], None)},
        ["a = mark_sharding(t, [0, 1])", "b = add(a, 1)", "c = exp(b)"],
    ),
    Template(
        "mark_1d_neg_softmax",
        [DEVICES],
        {"t": (lambda k: [4 * k, 12], None)},
        [
            "a = mark_sharding(t, [0, null])",
            "b = neg(a)",
            "c = softmax(b, dim=1)",
            "d = mean(c, dim=1)",
            "e = add(d, 2)",
        ],
    ),
]


def programs(count: int) -> list[dict]:
    """The cases: id, template name, size k. Deterministic; templates and sizes interleave."""
    out = []
    for i in range(count):
        template = TEMPLATES[i % len(TEMPLATES)]
        k = SIZES[(i // len(TEMPLATES)) % len(SIZES)]
        out.append({"id": f"p{i + 1:04d}", "template": template.name, "k": k})
    return out


def _case_yaml(prog: dict) -> str:
    template = next(t for t in TEMPLATES if t.name == prog["template"])
    lines = [f"  - id: {prog['id']}"]
    lines.append(f"    mesh: [{', '.join(str(s) if s != DEVICES else 'n' for s in template.mesh)}]")
    if template.two_d:
        lines.append(f"    requires: {{min_devices: {DEVICES}, max_devices: {DEVICES}}}")
    lines.append("    tensors:")
    for name, (shape, placements) in template.tensors.items():
        dims = ", ".join(str(d) for d in shape(prog["k"]))
        extra = f", placements: {placements}" if placements else ""
        lines.append(f"      {name}: {{shape: [{dims}]{extra}}}")
    lines.append("    steps:")
    lines.extend(f"      - {step}" for step in template.steps)
    return "\n".join(lines)


def spec_files(count: int) -> dict[str, str]:
    """File name -> YAML text, at most CASES_PER_FILE cases (and under 1 MiB) each."""
    progs = programs(count)
    files = {}
    for start in range(0, len(progs), CASES_PER_FILE):
        chunk = progs[start : start + CASES_PER_FILE]
        body = "\n".join(_case_yaml(p) for p in chunk)
        text = (
            "# yaml-language-server: $schema=../schema/spec.schema.json\n"
            "version: 1\n"
            f"description: bench/steps.py, generated step cases {chunk[0]['id']}..{chunk[-1]['id']}\n"
            f"cases:\n{body}\n"
        )
        assert len(text.encode()) < MAX_FILE_BYTES
        files[f"steps_{start // CASES_PER_FILE + 1:02d}.yaml"] = text
    return files


# --- The anchor: the same programs, hand-written ------------------------------------------
# Each template is a plain Python function over its inputs; it runs unchanged on the XLA
# values and on CPU tensors (the reference). `mark` is mark_sharding on XLA, identity on CPU.

ANCHOR = '''\
"""The hand-written anchor of bench/steps.py: one parametrized test, one process."""
import json
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_xla
import torch_xla.distributed.spmd as xs
import torch_xla.runtime as xr
from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor
from torch_xla.distributed.spmd import XLAShardedTensor

warnings.filterwarnings("ignore", message=".*XLA_USE_SPMD is being deprecated")
xr.use_spmd()
N = xr.global_runtime_device_count()
assert N == __DEVICES__, N
DEVICE = torch_xla.device()
MESHES = {}


def mesh_of(shape):
    if shape not in MESHES:
        MESHES[shape] = (
            DeviceMesh("xla", np.arange(N).reshape(shape)),
            xs.Mesh(np.arange(N), shape),
        )
    return MESHES[shape]


def on_cpu(t, mesh, spec):
    return t


def relu_mul_sum(x, mark):
    y = torch.relu(x)
    z = torch.mul(y, 2)
    s = torch.sum(z, dim=1)
    return {"y": y, "z": z, "s": s}


def tanh_add_mul_mean(x, mark):
    a = torch.tanh(x)
    b = torch.add(a, 1)
    c = torch.mul(b, b)
    m = torch.mean(c, dim=0)
    return {"a": a, "b": b, "c": c, "m": m}


def transpose_exp_softmax(x, mark):
    t = torch.transpose(x, 0, 1)
    e = torch.exp(t)
    p = F.softmax(e, dim=1)
    s = torch.sum(p, dim=0)
    q = torch.mul(s, 0.5)
    return {"t": t, "e": e, "p": p, "s": s, "q": q}


def two_inputs(x, w, mark):
    a = torch.add(x, w)
    b = torch.mul(a, x)
    c = torch.relu(b)
    d = torch.sum(c, dim=0)
    return {"a": a, "b": b, "c": c, "d": d}


def mesh2d_sigmoid_sub(x, mark):
    a = torch.sigmoid(x)
    b = torch.sub(a, 0.5)
    c = torch.div(b, 3)
    d = torch.sum(c, dim=1)
    return {"a": a, "b": b, "c": c, "d": d}


def mark_2d_add_exp(t, mark):
    a = mark(t, (2, 2), (0, 1))
    b = torch.add(a, 1)
    c = torch.exp(b)
    return {"a": a, "b": b, "c": c}


def mark_1d_neg_softmax(t, mark):
    a = mark(t, (N,), (0, None))
    b = torch.neg(a)
    c = F.softmax(b, dim=1)
    d = torch.mean(c, dim=1)
    e = torch.add(d, 2)
    return {"a": a, "b": b, "c": c, "d": d, "e": e}


def on_xla(t, shape, spec):
    return xs.mark_sharding(t, mesh_of(shape)[1], spec)


# template -> (function, mesh shape, inputs: name -> (shape of k, placements or None))
TEMPLATES = {
    "relu_mul_sum": (relu_mul_sum, (N,), {"x": (lambda k: [4 * k, 16], [Shard(0)])}),
    "tanh_add_mul_mean": (tanh_add_mul_mean, (N,), {"x": (lambda k: [8, 4 * k], [Shard(1)])}),
    "transpose_exp_softmax": (
        transpose_exp_softmax, (N,), {"x": (lambda k: [4 * k, 8], [Shard(0)])}
    ),
    "two_inputs": (
        two_inputs,
        (N,),
        {"x": (lambda k: [4 * k, 8], [Shard(0)]), "w": (lambda k: [4 * k, 8], [Shard(0)])},
    ),
    "mesh2d_sigmoid_sub": (
        mesh2d_sigmoid_sub, (2, 2), {"x": (lambda k: [4 * k, 8], [Shard(0), Shard(1)])}
    ),
    "mark_2d_add_exp": (mark_2d_add_exp, (2, 2), {"t": (lambda k: [4 * k, 8], None)}),
    "mark_1d_neg_softmax": (mark_1d_neg_softmax, (N,), {"t": (lambda k: [4 * k, 12], None)}),
}

PROGRAMS = json.loads(__PROGRAMS__)


def check_value(name, value, want):
    glob = value.global_tensor if isinstance(value, XLAShardedTensor) else value
    spec = torch_xla._XLAC._get_xla_sharding_spec(glob)
    assert spec, f"{name}: no sharding after sync"
    full = glob.detach().cpu()
    holder = value if isinstance(value, XLAShardedTensor) else XLAShardedTensor(glob.detach())
    shards = holder.local_shards
    assert len(shards) == N, name
    for shard in shards:
        piece = shard.unpadded_data.cpu()
        claimed = full if shard.indices is Ellipsis else full[tuple(shard.indices)]
        assert torch.equal(piece, claimed), f"{name}: piece on {shard.shard_device}"
    torch.testing.assert_close(full, want, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("prog", PROGRAMS, ids=[p["id"] for p in PROGRAMS])
def test_program(prog):
    fn, shape, inputs = TEMPLATES[prog["template"]]
    dmesh = mesh_of(shape)[0]
    cpu, xla = {}, {}
    for name, (size, placements) in inputs.items():
        gen = torch.Generator().manual_seed(zlib.crc32(f"{prog['id']}::{name}".encode()))
        data = torch.randn(size(prog["k"]), generator=gen)
        cpu[name] = data
        if placements is None:
            xla[name] = data.to(DEVICE)
        else:
            xla[name] = distribute_tensor(data, dmesh, placements)
    got = dict(xla, **fn(**xla, mark=on_xla))
    want = dict(cpu, **fn(**cpu, mark=on_cpu))
    torch_xla.sync(wait=True)
    for name, value in got.items():
        check_value(name, value, want[name])
'''


def anchor_module(count: int) -> str:
    progs = json.dumps(json.dumps(programs(count)))
    return ANCHOR.replace("__PROGRAMS__", progs).replace("__DEVICES__", str(DEVICES))


def write(directory: Path, count: int) -> tuple[Path, Path]:
    """Write <dir>/specs/*.yaml (shardspec) and <dir>/anchor/test_anchor.py, each with a
    pytest.ini so each side is a project of its own."""
    specs = directory / "specs"
    anchor = directory / "anchor"
    specs.mkdir(parents=True, exist_ok=True)
    anchor.mkdir(parents=True, exist_ok=True)
    for name, text in spec_files(count).items():
        (specs / name).write_text(text)
    (directory / "pytest.ini").write_text("[pytest]\nshardspec_paths = specs\n")
    # As a hand-written suite would: torch_xla's per-call warnings filtered in the ini (a
    # module-level filter does not survive pytest's per-test warning capture).
    (anchor / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings =\n"
        "    ignore:XLA_USE_SPMD is being deprecated\n"
        "    ignore:Using a non-tuple sequence for multidimensional indexing\n"
        "    ignore:__array__ implementation doesn't accept a copy keyword\n"
    )
    (anchor / "test_anchor.py").write_text(anchor_module(count))
    return specs, anchor


# --- The measurement ---------------------------------------------------------------------


def run_side(side: str, directory: Path) -> dict:
    env = clean_env()
    if side == "shardspec":
        # The plugin starts its own worker with PJRT_DEVICE=CPU CPU_NUM_DEVICES=4 (--devices 4).
        env.pop("PJRT_DEVICE", None)
        env.pop("CPU_NUM_DEVICES", None)
        cmd = ["-m", "pytest", "specs", "--devices", str(DEVICES)]
        cwd = directory
    else:
        env.update(PJRT_DEVICE="CPU", CPU_NUM_DEVICES=str(DEVICES))
        cmd = ["-m", "pytest", "test_anchor.py", "-p", "no:shardspec"]
        cwd = directory / "anchor"
    done = run([sys.executable, *cmd, "-q", "-p", "no:cacheprovider"], cwd, env)
    return {
        "side": side,
        "seconds": round(done.seconds, 2),
        "exit_code": done.exit_code,
        "summary": summary_line(done.stdout),
        "tail": "" if done.exit_code == 0 else (done.stdout + done.stderr)[-3000:],
    }


def measure(count: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="shardspec-bench-steps-") as tmp:
        directory = Path(tmp)
        write(directory, count)
        runs: list[dict] = []
        for _ in range(repeat):
            for side in ("shardspec", "anchor"):
                runs.append(run_side(side, directory))
                print(
                    json.dumps({k: v for k, v in runs[-1].items() if k != "tail"}),
                    file=sys.stderr,
                    flush=True,
                )
    times = {
        side: [r["seconds"] for r in runs if r["side"] == side] for side in ("shardspec", "anchor")
    }
    medians = {side: median(t) for side, t in times.items()}
    speed = ratio(times["shardspec"], times["anchor"])
    passed_all = all(
        r["exit_code"] == 0 and counts(r["summary"]).get("passed") == count for r in runs
    )
    result = {
        "benchmark": "steps",
        "cases": count,
        "repeat": repeat,
        "shardspec_seconds": times["shardspec"],
        "anchor_seconds": times["anchor"],
        "shardspec_median": medians["shardspec"],
        "anchor_median": medians["anchor"],
        "ratio": speed,
        "target_ratio": TARGET_RATIO,
        "summaries": {
            side: [r["summary"] for r in runs if r["side"] == side]
            for side in ("shardspec", "anchor")
        },
        "all_passed": passed_all,
        "ok": passed_all and speed <= TARGET_RATIO,
    }
    failed = [r for r in runs if r["tail"]]
    if failed:
        result["first_failure_tail"] = failed[0]["tail"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000, help="step cases (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument(
        "--write",
        metavar="DIR",
        type=Path,
        help="only write DIR/specs/*.yaml and DIR/anchor/test_anchor.py, then stop",
    )
    args = parser.parse_args(argv)
    if args.write:
        specs, anchor = write(args.write, args.cases)
        print(json.dumps({"specs": str(specs), "anchor": str(anchor / "test_anchor.py")}))
        return 0
    result = measure(args.cases, args.repeat)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
