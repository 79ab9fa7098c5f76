"""Shared by the ratio benchmarks: run a command, time it, read its peak memory.

Each benchmark runs shardspec and its anchor alternately, several times, and reports the
median of each side and their ratio. No absolute time is a target: the machine (and what
else runs on it) moves both sides alike.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Timed:
    seconds: float
    peak_mib: float  # the process's own peak RSS (ru_maxrss of this one child)
    exit_code: int
    stdout: str
    stderr: str


def _tree_rss_kib(pid: int) -> int:
    """The resident memory of ``pid`` and all its descendants, in KiB (0 once it is gone)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except (OSError, ValueError):
            continue
    return total


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, tree: bool = False) -> Timed:
    """Run ``cmd`` to its end; wall time and peak memory.

    The peak is the process's own peak RSS (``ru_maxrss``); with ``tree``, it is the
    largest sum of RSS over the process and its descendants (shardspec's worker
    subprocesses), sampled every 20 ms.
    """
    peak_tree = [0]
    # Anonymous files, not pipes: nothing is left behind, and the child never blocks on a
    # full pipe while this process waits for it.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak_tree[0] = max(peak_tree[0], _tree_rss_kib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        if tree:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - began
        stop.set()
        if tree:
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    peak = max(peak_tree[0], usage.ru_maxrss) if tree else usage.ru_maxrss
    return Timed(seconds, peak / 1024, proc.returncode, stdout, stderr)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: bytecode caches on (a hand-written suite gets its
    .pyc files), nothing of shardspec's own tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDSPEC_TEST")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def ratio(ours: list[float], anchor: list[float]) -> float:
    return round(statistics.median(ours) / statistics.median(anchor), 3)


def summary_line(stdout: str) -> str:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else ""


def counts(summary: str) -> dict[str, int]:
    """pytest's closing line as {outcome: count} (warnings are not outcomes)."""
    found = re.findall(r"(\d+) (\w+)", summary)
    return {word: int(n) for n, word in found if word not in ("in", "warning", "warnings")}
