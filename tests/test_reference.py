"""The reference engine against plain torch on random programs (run in a subprocess: torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_reference_engine_matches_torch_on_random_programs() -> None:
    done = subprocess.run(
        [sys.executable, str(HERE / "_reference_programs.py"), "7", "200"],
        capture_output=True,
        text=True,
        check=False,
        cwd=HERE.parent,
        env={"PYTHONPATH": str(HERE.parent), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == 200
    for result in results:
        assert result["raised"] is None, result
        assert not result["missing"], result
        # The same float64 ops in the same order: the values are the same bits.
        assert all(d == 0.0 for d in result["diffs"].values()), result


FORWARD_REPORT = """
import json, torch
from runner.interpreter import forward_report
print(json.dumps([
    forward_report(torch.ones(2, 3), torch.ones(4), 0.0),
    forward_report(torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]), 0.1),
]))
"""


def test_a_forward_output_of_another_shape_is_reported_not_broadcast() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORWARD_REPORT],
        capture_output=True,
        text=True,
        check=False,
        cwd=HERE.parent,
        env={"PYTHONPATH": str(HERE.parent), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    other, close = json.loads(done.stdout)
    assert (other["shape"], other["expected_shape"]) == ([2, 3], [4])
    assert other["max_abs_error"] == float("inf")
    assert close["shape"] == close["expected_shape"] == [2]
    assert close["max_abs_error"] == 0.5
    assert abs(close["max_excess"] - 0.3) < 1e-9  # 0.5 - 0.1 * 2.0
