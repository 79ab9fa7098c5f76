"""The pytest plugin, through pytester: collection, outcomes, messages, on real XLA."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _files import assert_lines, write

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "specs" / "distribute_tensor.yaml"


GOOD = """
version: 1
cases:
  - id: rows
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [2*n, 3]}
"""


def test_collects_only_specs_and_named_files(pytester: pytest.Pytester) -> None:
    write(pytester, "specs/a.yaml", GOOD)
    write(pytester, "specs/sub/b.yml", GOOD)
    write(pytester, "config/other.yaml", "not: a spec\n")
    write(pytester, "extra/named.yaml", GOOD)
    result = pytester.runpytest("--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert ids == ["specs/a.yaml::rows[xla-n4-nograd]", "specs/sub/b.yml::rows[xla-n4-nograd]"]
    result = pytester.runpytest("--collect-only", "-q", "extra/named.yaml", "--devices", "1,2")
    assert [line for line in result.outlines if "::" in line] == [
        "extra/named.yaml::rows[xla-n1-nograd]",
        "extra/named.yaml::rows[xla-n2-nograd]",
    ]


def test_ini_paths_and_k_selection(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nshardspec_paths =\n    cases\n")
    write(pytester, "specs/ignored.yaml", GOOD)
    write(pytester, "cases/seed.yaml", SEED.read_text())
    result = pytester.runpytest("--collect-only", "-q", "-k", "shard_1d and grad and not nograd")
    assert [line for line in result.outlines if "::" in line] == [
        "cases/seed.yaml::shard_1d[xla-n4-grad]"
    ]


def test_reportinfo_points_at_the_case_line(pytester: pytest.Pytester) -> None:
    write(pytester, "specs/seed.yaml", SEED.read_text())
    items, _ = pytester.inline_genitems()
    lines = {item.name: item.location[1] + 1 for item in items}
    source = SEED.read_text().splitlines()
    assert source[lines["shard_2d_mesh[xla-n4-grad]"] - 1].strip() == "- id: shard_2d_mesh"
    assert source[lines["shard_1d[xla-n4-nograd]"] - 1].strip() == "- id: shard_1d"


def test_bad_devices_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    write(pytester, "specs/a.yaml", GOOD)
    result = pytester.runpytest("--devices", "four")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--devices 'four' is not a list of device counts*1,2,4,8*"])


def test_contradictions_with_dtensor_fail_before_running(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        "specs/wrong.yaml",
        """
        version: 1
        cases:
          - id: wrong_local
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [3*n, 3]}
            expect:
              global_shape: [3*n, 3]
              local_shape: [4, 3]
          - id: wrong_global
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [3*n, 3]}
            expect:
              global_shape: [3*n, 4]
        """,
    )
    result = pytester.runpytest("--devices", "4")
    result.assert_outcomes(failed=2)
    assert_lines(
        result,
        "specs/wrong.yaml:9:20: expect.local_shape is [4, 3], but DTensor's rules give [3, 3]",
        "the spec, not XLA, disagrees with DTensor semantics",
        "specs/wrong.yaml:15:21: expect.global_shape is [12, 4], but DTensor's rules give [12, 3]",
    )
    assert "Traceback" not in result.stdout.str()


def test_seed_cases_run_on_xla_and_bad_files_fail_alone(pytester: pytest.Pytester) -> None:
    shutil.copy(SEED, pytester.path / "seed.yaml")
    (pytester.path / "specs").mkdir()
    shutil.copy(SEED, pytester.path / "specs" / "distribute_tensor.yaml")
    write(pytester, "specs/broken.yaml", "version: 1\ncases:\n  - id: x\n    mesh: [n\n")
    write(
        pytester,
        "specs/one_bad_case.yaml",
        """
        version: 1
        cases:
          - id: fine
            mesh: [n]
            placements: [Replicate()]
            input: {shape: [2, 2]}
          - id: typo
            mesh: [n]
            placments: [Shard(0)]
            input: {shape: [2, 2]}
        """,
    )
    result = pytester.runpytest("--devices", "1,4", "-rs")
    result.assert_outcomes(passed=8 + 2, skipped=4, failed=1 + 2)
    assert_lines(
        result,
        "specs/broken.yaml:4:11: this is not valid YAML",
        "specs/one_bad_case.yaml:9:5: unknown key 'placments'; did you mean 'placements'?",
        "SKIPPED [2] specs/distribute_tensor.yaml: shard_1d: requires min_devices: 2, but this run has n=1",
        "SKIPPED [2] specs/distribute_tensor.yaml: shard_2d_mesh: requires min_devices: 2, but this run has n=1",
        "specs/broken.yaml: 0 case(s) found; tests: 1 failed",
        "specs/distribute_tensor.yaml: 3 case(s) found; tests: 8 passed, 4 skipped",
        "specs/one_bad_case.yaml: 2 case(s) found; tests: 2 failed, 2 passed",
    )
    assert "Traceback" not in result.stdout.str()


def test_xla_observations_are_judged_with_located_messages(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        "specs/judged.yaml",
        """
        version: 1
        cases:
          - id: wrong_spec
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [n, 2]}
            expect:
              sharding_spec: "{devices=[1,4]0,1,2,3}"
          - id: partial_rejected
            mesh: [n]
            placements: [Partial()]
            input: {shape: [n, 2]}
            expect: {error: {type: ValueError, match: "Unsupported placement"}}
          - id: partial_unexpected
            mesh: [n]
            placements: [Partial()]
            input: {shape: [n, 2]}
          - id: two_axes_one_dim
            requires: {min_devices: 4, devices_divisible_by: 2}
            mesh: [2, n/2]
            placements: [Shard(0), Shard(0)]
            input: {shape: [2*n, 3]}
            xfail: {reason: "torch_xla keeps only the last mesh axis"}
          - id: fewer_rows_than_devices
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [3, 5]}
            expect: {local_shapes: [[1, 5], [1, 5], [1, 5], [0, 5]]}
          - id: spec_by_count
            mesh: [n]
            placements: [Shard(1)]
            input: {shape: [2, 2*n], dtype: int32}
            expect:
              sharding_spec: {8: "{devices=[1,8]0,1,2,3,4,5,6,7}"}
        """,
    )
    result = pytester.runpytest("--devices", "4", "-rx")
    result.assert_outcomes(passed=3, failed=2, xfailed=1)
    out = result.stdout.str()
    assert_lines(
        result,
        "specs/judged.yaml:8:22: expect.sharding_spec\n"
        "  expected: {devices=[1,4]0,1,2,3}\n"
        "  actual:   {devices=[4,1]0,1,2,3}",
        "specs/judged.yaml:14:5: distribute_tensor raised an error\n"
        "  expected: no error\n"
        "  actual:   ValueError: Unsupported placement type: Partial",
        "specs/judged.yaml::spec_by_count[xla-n4-nograd]: expect.sharding_spec (no entry for n=4)",
    )
    assert "Traceback" not in out
    # Without the xfail mark, the divergence shows as a per-device table.
    result = pytester.runpytest("--devices", "4", "--runxfail", "-k", "two_axes_one_dim")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines(
        [
            r"specs/judged.yaml:21:\d+: shards differ from DTensor's layout",
            r" *device +mesh coord +expected shape +offset +actual shape +offset",
            r" *0 +\(0, 0\) +\[2, 3\] +\[0, 0\] +\[4, 3\] +\[0, 0\] +<-- differs",
        ]
    )


def test_runtime_device_count_is_used_when_pjrt_device_is_set(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    monkeypatch.setenv("CPU_NUM_DEVICES", "2")
    write(pytester, "specs/a.yaml", GOOD)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*specs/a.yaml::rows[[]xla-n2-nograd[]] PASSED*"])


def test_collect_only_with_pjrt_device_starts_no_worker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No TPU here: a worker started for this would fail (or hang) instead of listing items.
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    write(pytester, "specs/a.yaml", GOOD)
    result = pytester.runpytest_subprocess("--collect-only", "-q", timeout=120)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["specs/a.yaml::rows[[]xla-n4-nograd[]]"])
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    monkeypatch.setenv("CPU_NUM_DEVICES", "2")
    result = pytester.runpytest_subprocess("--collect-only", "-q", timeout=120)
    result.stdout.fnmatch_lines(["specs/a.yaml::rows[[]xla-n2-nograd[]]"])


def test_coverage_report_in_markdown_and_html(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        "specs/cov.yaml",
        """
        version: 1
        defaults: {skip: "report only"}
        cases:
          - id: uneven_rows
            mesh: [n]
            placements: [Shard(0)]
            input: {shape: [5, 3], dtype: int64}
          - id: grid
            requires: {devices_divisible_by: 2}
            mesh: [2, -1]
            placements: [Shard(0), Shard(1)]
            input: {shape: [4, 4], dtype: bfloat16}
        """,
    )
    result = pytester.runpytest("--devices", "1,4", "--shardspec-report", "out/cov.md")
    result.assert_outcomes(skipped=4)
    text = (pytester.path / "out" / "cov.md").read_text()
    assert "| placements | mesh rank | shards | dtype | n=1 | n=4 |" in text
    # Evenness is per device count: 5 rows split evenly over 1 device, not over 4.
    assert "| Shard(0) | 1 | even | int64 | skip 1 | - |" in text
    assert "| Shard(0) | 1 | uneven | int64 | - | skip 1 |" in text
    assert "| Shard(0), Shard(1) | 2 | even | bfloat16 | skip 1 | skip 1 |" in text
    assert "| 3-D mesh, even | GAP |" in text
    pytester.runpytest("--devices", "4", "--shardspec-report", "cov.html")
    assert "<td class='gap'>GAP</td>" in (pytester.path / "cov.html").read_text()
    result = pytester.runpytest("--shardspec-report", "cov.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_runs_under_xdist_with_the_ledger_on_the_controller(pytester: pytest.Pytester) -> None:
    write(pytester, "specs/a.yaml", GOOD)
    shutil.copy(SEED, pytester.path / "specs" / "seed.yaml")
    shutil.copy(SEED.with_name("distribute_module.yaml"), pytester.path / "specs" / "module.yaml")
    result = pytester.runpytest("-n", "2", "--devices", "2", "--shardspec-report", "cov.md")
    result.assert_outcomes(passed=8)
    report = (pytester.path / "cov.md").read_text()
    assert "| Shard(0) | 1 | even | float32 | pass 3 |" in report  # rows + shard_1d x 2
    assert "| module | 1 | - | float32 | pass 1 |" in report
    assert_lines(
        result,
        "specs/a.yaml: 1 case(s) found; tests: 1 passed",
        "specs/seed.yaml: 3 case(s) found; tests: 6 passed",
    )
