"""The reports, through pytester on real XLA: the coverage matrix (--shardspec-report), the
checks not made, and the end-of-run summary per device count, with and without xdist.

Every run that executes cases pays the torch_xla import per device count, so the runs
are few and each checks several things.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _files import assert_lines, write

from runner.coverage import DTYPES

SPEC = """
version: 1
cases:
  - id: partial_rejected
    mesh: [n]
    placements: [Partial()]
    input: {shape: [n, 2]}
    expect: {error: {type: ValueError, match: "Unsupported placement"}}
  - id: rows
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [2*n, 3]}
  - id: rows_no_values
    requires: {min_devices: 2}
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [2*n, 3]}
    checks: {values: false}
  - id: not_today
    skip: "not today"
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [2*n, 3], dtype: int64}
"""


def tables(report: str) -> str:
    """The report without its header (the date changes from run to run)."""
    return report[report.index("## ") :]


def grid_cell(report: str, layout: str, dtype: str) -> str:
    line = next(row for row in report.splitlines() if row.startswith(f"| {layout} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    return cells[1 + DTYPES.index(dtype)]


@pytest.fixture
def spec(pytester: pytest.Pytester) -> Path:
    return write(pytester, "specs/r.yaml", SPEC)


def test_matrix_and_summary(pytester: pytest.Pytester, spec: Path) -> None:
    result = pytester.runpytest("--devices", "1,2", "--shardspec-report", "out/r.md")
    result.assert_outcomes(passed=5, skipped=3)
    path = pytester.path / "out" / "r.md"
    report = path.read_text()
    # An expected error is never a pass, and the row names its cases.
    assert (
        "| Partial() | 1 | even | float32 | error (expected) 1 | error (expected) 1 "
        "| specs/r.yaml::partial_rejected |"
    ) in report
    assert (
        "| Shard(0) | 1 | even | float32 | pass 1 skip 1 | pass 2 "
        "| specs/r.yaml::rows, specs/r.yaml::rows_no_values |"
    ) in report
    assert "| Shard(0) | 1 | even | int64 | skip 1 | skip 1 | specs/r.yaml::not_today |" in report
    assert "| placements | mesh rank | shards | dtype | n=1 | n=2 | cases |" in report
    # Skips (and expected errors) are not coverage: only rows x 2 and rows_no_values x 1.
    assert grid_cell(report, "1-D mesh, even", "float32") == "3"
    assert grid_cell(report, "1-D mesh, even", "int64") == "GAP"
    # Header and legend.
    for line in ("- torch: ", "- torch_xla: ", "- device counts: 1, 2", "- engines: xla"):
        assert line in report
    assert re.search(r"^- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC$", report, re.M)
    assert "torch: unknown" not in report  # read from the installed packages' metadata
    assert "## Legend" in report
    assert "| error (expected) | raised the error the case expects" in report
    assert "| skip | not run at this device count" in report
    # The end of the run: where the report is, checks not made, results per device count
    # and the skip reasons, without -rs.
    assert_lines(
        result,
        f"shardspec: coverage report written to {path}",
        "shardspec: checks not made",
        "specs/r.yaml::rows_no_values[xla-n2-nograd]: values (turned off with checks:)",
        "shardspec: results per device count",
        "specs/r.yaml: 4 case(s) found; tests: 5 passed, 3 skipped",
    )
    out = result.stdout.str()
    assert "rows_no_values[xla-n1-nograd]: values" not in out  # skipped: no checks to list
    assert re.search(
        r"^xla n=1: 2 passed \(1 by raising the expected error\), 2 skipped in \d+\.\d\ds$",
        out,
        re.M,
    ), out
    assert re.search(
        r"^xla n=2: 3 passed \(1 by raising the expected error\), 1 skipped in \d+\.\d\ds$",
        out,
        re.M,
    ), out
    assert re.search(r"^ +2 skipped: not today \[specs/r\.yaml::not_today\]$", out, re.M), out
    assert re.search(
        r"^ +1 skipped: .*min_devices: 2.* \[specs/r\.yaml::rows_no_values\]$", out, re.M
    ), out
    assert "SKIPPED [" not in out  # that is -rs's list, not asked for

    # The same matrix under xdist: the records travel with the reports.
    result = pytester.runpytest("-n", "2", "--devices", "1,2", "--shardspec-report", "xd.md")
    result.assert_outcomes(passed=5, skipped=3)
    assert tables((pytester.path / "xd.md").read_text()) == tables(report)
    assert_lines(
        result,
        "specs/r.yaml::rows_no_values[xla-n2-nograd]: values (turned off with checks:)",
        "specs/r.yaml: 4 case(s) found; tests: 5 passed, 3 skipped",
    )
    assert re.search(
        r"^xla n=2: 3 passed \(1 by raising the expected error\), 1 skipped",
        result.stdout.str(),
        re.M,
    )


def test_html_report_and_every_check_made(pytester: pytest.Pytester, spec: Path) -> None:
    result = pytester.runpytest(
        "--devices", "1", "-k", "partial_rejected", "--shardspec-report", "r.html"
    )
    result.assert_outcomes(passed=1)
    report = (pytester.path / "r.html").read_text()
    assert "<td>error (expected) 1</td>" in report
    assert "<td>specs/r.yaml::partial_rejected</td>" in report
    assert "<li>engines: xla</li>" in report
    assert "<td>pass 1</td>" not in report
    assert_lines(
        result,
        "shardspec: every check was made",
        f"shardspec: coverage report written to {pytester.path / 'r.html'}",
    )
    assert "shardspec: checks not made" not in result.stdout.str()


def test_xdist_ledger_without_xla(pytester: pytest.Pytester) -> None:
    """Under xdist the controller learns the selection from the workers: the per-file
    ledger and the summary hold for cases that never reach a device."""
    write(
        pytester,
        "specs/s.yaml",
        """
        version: 1
        cases:
          - id: later
            skip: "later"
            mesh: [n]
            placements: [Replicate()]
            input: {shape: [2, 2]}
          - id: typo
            mesh: [n]
            placments: [Shard(0)]
            input: {shape: [2, 2]}
        """,
    )
    result = pytester.runpytest("-n", "2", "--devices", "2,4", "--shardspec-report", "s.md")
    result.assert_outcomes(skipped=2, failed=2)
    assert_lines(
        result,
        "specs/s.yaml: 2 case(s) found; tests: 2 failed, 2 skipped",
        "xla n=2: 1 failed, 1 skipped in",
        "2 skipped: later [specs/s.yaml::later]",
    )
    out = result.stdout.str()
    assert "every check was made" not in out  # nothing ran on a device
    report = (pytester.path / "s.md").read_text()
    assert "specs/s.yaml::typo" in report and "specs/s.yaml::later" in report
    # Neither the skips nor the broken case are coverage.
    assert "| 1-D mesh, even | GAP | GAP |" in report
