"""Steps (format v1.1) through the public surface: `shardspec validate` and `explain`
in-process (no torch), and the plugin through pytester on real XLA."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from _files import cli, write

REPO = Path(__file__).resolve().parent.parent
DESIGN = REPO.parent / "shared" / "DESIGN.md"


def design_examples() -> list[str]:
    """The YAML examples of DESIGN.md's v1.1 section, each as a spec file."""
    text = DESIGN.read_text(encoding="utf-8")
    section = text[text.index("## Format v1.1") :]
    section = section[: section.index("\n## ", 5)]
    out = []
    for block in re.findall(r"```yaml\n(.*?)```", section, re.S):
        data = yaml.safe_load(block)
        cases = data if isinstance(data, list) else data.get("cases", [data])
        out.append(yaml.safe_dump({"version": 1, "cases": cases}, sort_keys=False))
    return out


@pytest.mark.skipif(not DESIGN.is_file(), reason="../shared/DESIGN.md is not beside the repo")
def test_design_examples_validate_and_run_as_written(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = design_examples()
    assert examples, "DESIGN.md's v1.1 section has no YAML example"
    for i, text in enumerate(examples):
        (pytester.path / "specs").mkdir(exist_ok=True)
        (pytester.path / "specs" / f"design_{i}.yaml").write_text(text)
    monkeypatch.chdir(pytester.path)
    code, out = cli(capsys, "validate", "specs", "--devices", "4")
    assert code == 0, out
    result = pytester.runpytest("--devices", "4")
    out = result.stdout.str()
    # torch_xla 2.9's XLAShardedTensor.redistribute wants an xs.Mesh: the engine calls it
    # with the case's DeviceMesh, as a DTensor user does, and reports what torch_xla did.
    assert "AttributeError: 'DeviceMesh' object has no attribute 'mesh_shape'" in out
    assert "step 1 raised: y = redistribute(x, [Replicate()])" in out


STEPS = """
version: 1
cases:
  - id: ops_on_rows
    mesh: [n]
    tensors:
      x: {shape: [2*n, 8], placements: [Shard(0)]}
    steps:
      - y = relu(x)
      - do: z = mul(y, 2)
        expect: {shape: [2*n, 8], values: reference}
      - s = sum(z, dim=1)
    expect:
      x: {placements: [Shard(0)], local_shape: [2, 8]}
      s: {shape: [2*n], values: reference}
  - id: annotated
    requires: {devices_divisible_by: 2, min_devices: 4}
    mesh: [2, n/2]
    tensors:
      t: {shape: [8, 2*n]}
    steps:
      - a = mark_sharding(t, [0, 1])
      - b = add(a, 1)
    expect:
      t: {sharding_type: tiled, placements: [Shard(0), Shard(1)]}
      b: {values: reference}
  - id: wrong_piece
    requires: {devices_divisible_by: 2, min_devices: 4}
    mesh: [2, n/2]
    tensors:
      t: {shape: [8, 2*n]}
    steps:
      - a = mark_sharding(t, [0, null])
    expect:
      t: {local_shape: [8, 2], placements: [Shard(0), Replicate()]}
  - id: wrong_expectations
    mesh: [n]
    tensors:
      x: {shape: [2*n, 8], placements: [Shard(0)]}
    steps:
      - y = relu(x)
      - z = clone(y)
    expect:
      x: {placements: [Shard(0)], local_shape: [2, 8], sharding_spec: {contains: "[1,"}}
      z: {values: {equals: x}}
"""


def test_steps_run_on_xla_and_wrong_expectations_fail_with_their_lines(
    pytester: pytest.Pytester,
) -> None:
    write(pytester.path, "specs/steps.yaml", STEPS)
    result = pytester.runpytest("--devices", "4", "-rf")
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    # A piece that is not what the spec says: the value, the line, and every device's piece.
    assert "specs/steps.yaml:34:24: t: expect.local_shape" in out
    result.stdout.re_match_lines(
        [
            r"specs/steps.yaml:34:24: t: expect.local_shape",
            r"  expected: \[8, 2\]",
            r"  actual:   \[4, 8\]",
            r" *device +piece shape +offset",
            r" *0 +\[4, 8\] +\[0, 0\]",
            r" *3 +\[4, 8\] +\[4, 0\]",
        ]
    )
    assert "specs/steps.yaml:43:71: x: expect.sharding_spec" in out
    assert "expected: a spec containing '[1,'" in out
    assert "actual:   {devices=[4,1]0,1,2,3}" in out
    assert "specs/steps.yaml:44:19: z: expect.values" in out
    assert "expected: exactly equal to x" in out
    assert "Traceback" not in out


def test_a_wrong_local_shape_is_a_spec_problem_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        "specs/s.yaml",
        """
        version: 1
        cases:
          - id: gather
            mesh: [n]
            tensors:
              x: {shape: [4*n, 8], placements: [Shard(0)]}
            steps:
              - y = redistribute(x, [Replicate()])
            expect:
              y: {local_shape: [4, 8], placements: [Shard(0)]}
        """,
    )
    code, out = cli(capsys, "validate", "specs", "--devices", "4")
    assert code == 1
    assert (
        "specs/s.yaml:10:24: local_shape is [4, 8], but DTensor's layout gives [16, 8] for y at n=4"
    ) in out


@pytest.mark.parametrize(
    ("step", "where", "fragment"),
    [
        ("y = redistribte(x, [Replicate()])", "8:9", "did you mean 'redistribute'?"),
        ("y = relu(w)", "8:9", "'w' is made later, at step 2"),
        ("y = matmul(x, x)", "8:9", "matmul"),
        ("y = redistribute(x, [Replicate(), Replicate()])", "8:9", "mesh"),
        ("y = relu(x", "8:9", "step 1"),
        ("x = relu(x)", "8:9", "'x' already names an input tensor; each step makes one new"),
        ("w = relu(x)", "9:9", "step 2: 'w' already names the value of step 1"),
    ],
)
def test_validate_locates_step_mistakes_without_torch(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    where: str,
    fragment: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        "specs/s.yaml",
        f"""
        version: 1
        cases:
          - id: c
            mesh: [n]
            tensors:
              x: {{shape: [4*n, 8], placements: [Shard(0)]}}
            steps:
              - "{step}"
              - w = relu(x)
        """,
    )
    code, out = cli(capsys, "validate", "specs", "--devices", "4")
    assert code == 1, out
    line = next(line for line in out.splitlines() if line.startswith("specs/s.yaml:"))
    assert line.startswith(f"specs/s.yaml:{where}:"), line
    assert fragment in line, line


def test_explain_shows_steps_and_layouts(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "specs/steps.yaml", STEPS)
    code, out = cli(capsys, "explain", "specs/steps.yaml::ops_on_rows", "--devices", "4")
    assert code == 0, out
    assert "x: DTensor [8, 8] float32, placements [Shard(0)]" in out
    assert "pieces: [2, 8] on every device" in out
    assert "XLA sharding (predicted): {devices=[4,1]0,1,2,3}" in out
    assert "2. z = mul(y, 2)" in out
    assert "s: DTensor [8] float32" in out
