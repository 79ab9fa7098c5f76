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
