"""Truthful verdicts (issue 8): xfails that name what fails, one verdict for pytest and the
CLI, expectations by device count, predicted sharding strings, strict markers.

The pytest runs go through pytester on real XLA; the CLI runs in-process (no torch).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _files import cli, write

REPO = Path(__file__).resolve().parent.parent


JUDGED = """
version: 1
cases:
  - id: two_axes
    requires: {min_devices: 4, devices_divisible_by: 2}
    mesh: [2, n/2]
    placements: [Shard(0), Shard(0)]
    input: {shape: [4*n, 3]}
    xfail: {reason: "torch_xla keeps the last axis", checks: [shards, sharding_spec]}
  - id: two_axes_and_a_wrong_spec
    requires: {min_devices: 4, devices_divisible_by: 2}
    mesh: [2, n/2]
    placements: [Shard(0), Shard(0)]
    input: {shape: [4*n, 3]}
    expect: {sharding_spec: "{devices=[9,9]0}"}
    xfail: {reason: "torch_xla keeps the last axis", checks: [shards, sharding_spec]}
  - id: two_axes_xfail_elsewhere
    requires: {min_devices: 4, devices_divisible_by: 2}
    mesh: [2, n/2]
    placements: [Shard(0), Shard(0)]
    input: {shape: [4*n, 3]}
    xfail: {reason: "only on native", engines: [native], checks: [shards]}
  - id: by_count
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [4, 3]}
    expect:
      local_shape: {2: [2, 3], 4: [1, 3]}
      local_shapes: {4: [[1, 3], [1, 3], [1, 3], [1, 3]]}
      padded_local_shape: {4: [1, 3]}
      sharding_spec: {contains: [devices=, "0,1"]}
  - id: wrong_contains
    mesh: [n]
    placements: [Shard(1)]
    input: {shape: [2, n]}
    expect: {sharding_spec: {contains: last_tile_dim_replicate}}
"""


def test_xfail_holds_only_for_the_checks_it_names(pytester: pytest.Pytester) -> None:
    write(pytester.path, "specs/judged.yaml", JUDGED)
    result = pytester.runpytest("--devices", "4", "-rfxX")
    result.assert_outcomes(passed=1, failed=3, xfailed=1)
    out = result.stdout.str()
    # The named divergence is the expected failure...
    assert "XFAIL specs/judged.yaml::two_axes[xla-n4-nograd]" in out
    # ...but a failure of a check the xfail does not name is a real one.
    assert (
        "not the expected failure: the case's xfail names the checks [shards, sharding_spec], "
        "but [expect.sharding_spec] failed too"
    ) in out
    assert "specs/judged.yaml:14:29: expect.sharding_spec" in out
    # An xfail for another engine does not apply on xla.
    assert "FAILED specs/judged.yaml::two_axes_xfail_elsewhere[xla-n4-nograd]" in out
    # {contains: ...} on a map by n: a 1-D mesh has nothing to replicate.
    assert "expected: a spec containing 'last_tile_dim_replicate'" in out
    assert "Traceback" not in out


def test_expectations_by_device_count_note_the_counts_they_skip(
    pytester: pytest.Pytester,
) -> None:
    write(pytester.path, "specs/judged.yaml", JUDGED)
    result = pytester.runpytest("--devices", "2,4", "-k", "by_count")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*specs/judged.yaml::by_count[[]xla-n2-nograd[]]: expect.local_shapes "
            "(no entry for n=2)*",
        ]
    )


def test_by_count_expectations_are_checked_against_dtensor_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        "specs/shapes.yaml",
        """
        version: 1
        cases:
          - id: rows
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [4, 3]}
            expect:
              local_shape: {2: [2, 3], 4: [2, 3]}
          - id: empty_global
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [4, 3]}
            expect: {global_shape: [0, 3]}
          - id: empty_piece_is_fine
            requires: {min_devices: 8, max_devices: 8}
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [4, 3]}
            expect: {local_shapes: {8: [[1, 3], [1, 3], [1, 3], [1, 3], [0, 3], [0, 3], [0, 3], [0, 3]]}}
        """,
    )
    code, out = cli(capsys, "validate", "specs", "--devices", "2,4,8")
    assert code == 1
    assert (
        "specs/shapes.yaml:8:35: expect.local_shape is [2, 3], but DTensor's rules give [1, 3] "
        "for device 0's shard (input [4, 3], mesh [4], placements [Shard(0)], n=4)"
    ) in out
    assert "specs/shapes.yaml:13:29: expect.global_shape[0] must be at least 1, not 0" in out
    assert "empty_piece_is_fine" not in out and "shapes.yaml:18" not in out


def test_a_broken_case_is_an_error_for_list_and_pytest_even_when_skipped(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        pytester.path,
        "specs/skipped.yaml",
        """
        version: 1
        cases:
          - id: later
            skip: "not yet"
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [n/3, 3]}
          - id: fine
            skip: "not yet"
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [n, 3]}
        """,
    )
    result = pytester.runpytest("--devices", "4")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*specs/skipped.yaml:7:21: 'n/3' is not a whole number when n=4*"])
    monkeypatch.chdir(pytester.path)
    code, out = cli(capsys, "list", "specs", "--devices", "4")
    assert code == 0
    assert "later  xla     error (line 7)" in out
    assert "fine   xla     skip (not yet)" in out
    assert "1 skip, 1 error" in out


def test_validate_warns_about_xfails_without_checks_and_cases_that_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path,
        "specs/w.yaml",
        """
        version: 1
        cases:
          - id: vague
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [n, 3]}
            xfail: {reason: "something"}
          - id: big_only
            requires: {min_devices: 16}
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [n, 3]}
        """,
    )
    code, out = cli(capsys, "validate", "specs")
    assert code == 0  # warnings don't fail
    assert "specs/w.yaml:7:12: warning: this xfail names no checks" in out
    assert (
        "specs/w.yaml:9:15: warning: the case runs at none of the device counts checked "
        "(n=1, 2, 4, 8): its requires skip them all; it runs at n=16"
    ) in out
    assert out.splitlines()[-1].endswith("no problems; 2 warnings")


def test_every_library_xfail_names_its_checks_and_engine(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    code, out = cli(capsys, "validate", "specs")
    assert code == 0, out
    assert "warning" not in out


def test_explain_shows_the_predicted_sharding_string(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    code, out = cli(capsys, "explain", "specs/distribute_tensor.yaml::shard_2d_mesh")
    assert code == 0
    assert "XLA sharding (predicted): {devices=[2,1,2]0,2,1,3 last_tile_dim_replicate}" in out


MARKED = """
version: 1
cases:
  - id: marked
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [n, 3]}
    marks: [slwo]
"""


def test_marks_are_not_registered_on_the_fly(pytester: pytest.Pytester) -> None:
    write(pytester.path, "specs/m.yaml", MARKED)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow cases\n")
    result = pytester.runpytest("--devices", "1", "--strict-markers")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*specs/m.yaml:7:13: the marker 'slwo' is not registered, and pytest runs with "
            "--strict-markers; did you mean 'slow'? If not, register it under markers*"
        ]
    )
    # Without --strict-markers it runs, with a warning that points at the spec.
    result = pytester.runpytest("--devices", "1", "-m", "slwo")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*specs/m.yaml:7: unknown mark 'slwo' in case 'marked'*"])


def test_the_library_known_divergences_fail_on_a_foreign_check(
    pytester: pytest.Pytester,
) -> None:
    """The issue's acceptance: a wrong expectation added to an xfail case fails it."""
    text = (REPO / "specs" / "known_divergences.yaml").read_text()
    marker = "    input: {shape: [4*n, 3]}\n    xfail:"
    assert marker in text
    broken = text.replace(
        marker, '    input: {shape: [4*n, 3]}\n    expect: {sharding_spec: "{x}"}\n    xfail:', 1
    )
    (pytester.path / "specs").mkdir()
    shutil.copy(REPO / "specs" / "known_divergences.yaml", pytester.path / "specs" / "kd.yaml")
    result = pytester.runpytest("--devices", "4")
    result.assert_outcomes(passed=2, xfailed=5)
    (pytester.path / "specs" / "kd.yaml").write_text(broken)
    result = pytester.runpytest("--devices", "4")
    result.assert_outcomes(passed=2, failed=1, xfailed=4)
    result.stdout.fnmatch_lines(["FAILED specs/kd.yaml::same_dim_two_axes[[]xla-n4-nograd[]]*"])
