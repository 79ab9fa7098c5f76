"""The pytest process never imports torch or torch_xla: only workers do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imported_modules(*pytest_args: str) -> set[str]:
    # -s: pytest's fd capture would otherwise swallow what -X importtime prints meanwhile.
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "pytest",
            "-s",
            "-p",
            "no:cacheprovider",
            *pytest_args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "runner.spec" in names  # the plugin really was loaded and read specs
    return names


def test_collecting_specs_imports_no_torch() -> None:
    names = imported_modules("--collect-only", "-q", "specs/")
    assert not {n for n in names if n.split(".")[0] in ("torch", "torch_xla", "numpy")}


def test_running_specs_imports_no_torch_in_the_pytest_process() -> None:
    names = imported_modules("specs/distribute_tensor.yaml", "-k", "replicate_1d", "--devices", "2")
    assert not {n for n in names if n.split(".")[0] in ("torch", "torch_xla", "numpy")}
