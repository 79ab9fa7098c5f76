"""The native engine: DTensor itself on the CPU, n ranks in one worker process.

Through pytester (the plugin) and the worker pool (the engine), never importing torch in
the test process: torch runs in the workers and in helper scripts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _files import write

from runner.executor import Pool
from runner.expand import expand
from runner.spec import read

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


FAULTY = """
version: 1
cases:
  - id: raises
    mesh: [n]
    tensors:
      x: {shape: [2*n, 4], placements: [Shard(0)]}
    steps:
      - y = redistribute(x, [Replicate()])
  - id: after_raise
    mesh: [n]
    tensors:
      x: {shape: [2*n, 4], placements: [Shard(0)]}
    steps:
      - y = redistribute(x, [Replicate()])
    expect:
      y: {placements: [Replicate()], values: reference}
  - id: hangs
    mesh: [n]
    tensors:
      x: {shape: [2*n, 4], placements: [Shard(0)]}
    steps:
      - y = redistribute(x, [Replicate()])
  - id: after_hang
    mesh: [n]
    tensors:
      x: {shape: [2*n, 4], placements: [Shard(0)]}
    steps:
      - y = full_tensor(x)
    expect:
      y: {shape: [2*n, 4], values: reference}
"""


def test_a_rank_that_raises_or_hangs_fails_only_its_case(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARDSPEC_TEST_FAULT", "raises=rank_raise,hangs=rank_hang")
    write(pytester.path, "specs/faulty.yaml", FAULTY)
    result = pytester.runpytest(
        "--engines", "native", "--devices", "4", "--shardspec-timeout", "10", "-v"
    )
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    assert "injected fault on rank 1" in out
    assert "RanksHung" in out
    result.stdout.fnmatch_lines(
        [
            "*after_raise[[]native-n4[]] PASSED*",
            "*after_hang[[]native-n4[]] PASSED*",
        ]
    )


TWO_ENGINES = """
version: 1
cases:
  - id: rows_twice
    requires: {min_devices: 4, devices_divisible_by: 2}
    mesh: [2, n/2]
    placements: [Shard(0), Shard(0)]
    input: {shape: [4*n, 3]}
    xfail:
      reason: torch_xla 2.9 keeps only the last mesh axis
      engines: [xla]
      checks: [shards, sharding_spec]
  - id: annotate
    mesh: [n]
    tensors:
      t: {shape: [n, 4]}
    steps:
      - a = mark_sharding(t, [0, null])
"""


def test_engines_in_ids_xfail_per_engine_and_disagreements(pytester: pytest.Pytester) -> None:
    write(pytester.path, "specs/two.yaml", TWO_ENGINES)
    result = pytester.runpytest(
        "--engines", "xla,native", "--devices", "4", "-v", "-rs", "--shardspec-report", "r.md"
    )
    result.assert_outcomes(passed=2, xfailed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*rows_twice[[]xla-n4-nograd[]] XFAIL*",
            "*rows_twice[[]native-n4-nograd[]] PASSED*",
            "*annotate[[]native-n4[]] SKIPPED*",
            "*shardspec: engines disagree*",
            "specs/two.yaml::rows_twice[[]n4-nograd[]]",
            "  x: placements native [[]Shard(0), Shard(0)[]] / xla [[]Replicate(), Shard(0)[]]*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*1 skipped: mark_sharding() is a call of engine xla only; engine native has none*"]
    )
    report = (pytester.path / "r.md").read_text()
    assert "| xla n=4 | native n=4 |" in report or "| native n=4 | xla n=4 |" in report
    assert "Engines disagree" in report
    assert "rows_twice" in report.split("Engines disagree")[1]
    # -k picks an engine: the engine is the first part of the id.
    result = pytester.runpytest("--engines", "xla,native", "--devices", "4", "-k", "native")
    result.assert_outcomes(passed=1, skipped=1)


def test_native_engine_matches_dtensor_test_base_on_library_cases(tmp_path: Path) -> None:
    """The native engine against torch's own DTensorOpTestBase on a sample of the library."""
    sample = [
        ("specs/redistribute.yaml", None),
        ("specs/shard_dims.yaml", None),
        ("specs/uneven.yaml", None),
    ]
    requests = []
    for file, _ in sample:
        spec = read(REPO / file, file)
        for case in spec.cases[:6]:
            for variant in expand(case, "native", 4):
                if variant.skip or variant.problems or variant.request is None:
                    continue
                if variant.request["op"] not in ("tensor", "steps"):
                    continue
                requests.append(
                    (f"{file}::{case.id}[{variant.name}]", variant, dict(variant.request))
                )
    assert len(requests) >= 10
    pool = Pool()
    try:
        observed = {
            name: pool.run("native", 4, dict(req, case=name), 120.0).observation
            for name, _, req in requests
        }
    finally:
        pool.close()
    plan = tmp_path / "requests.json"
    plan.write_text(json.dumps({name: req for name, _, req in requests}))
    out = tmp_path / "base.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(HERE / "_dtensor_base_sample.py"),
            "-q",
            "-p",
            "no:shardspec",
            "-p",
            "no:cacheprovider",
            "-W",
            "error::pytest.PytestUnhandledThreadExceptionWarning",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={
            "SHARDSPEC_BASE_REQUESTS": str(plan),
            "SHARDSPEC_BASE_OUT": str(out),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
        },
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    base = json.loads(out.read_text())
    compared = 0
    for name, variant, _ in requests:
        mine, theirs = observed[name], base[name]
        if variant.request["op"] == "tensor":
            got = {"x": {"placements": mine.get("placements"), "pieces": _pieces(mine)}}
        else:
            got = {
                key: {"placements": view.get("placements"), "pieces": _pieces(view)}
                for key, view in mine.get("values", {}).items()
                if key in theirs
            }
        for key, want in theirs.items():
            assert got.get(key) == want, (name, key, got.get(key), want)
            compared += 1
    assert compared >= 20


def _pieces(view: dict) -> list | None:
    shards = view.get("shards")
    if not shards:
        return None
    return [
        [s["device"], s["shape"], s["offset"]] for s in sorted(shards, key=lambda s: s["device"])
    ]
