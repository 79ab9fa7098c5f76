"""(a) Collecting 10,000 generated cases, cold and warm, against the hand-written anchor;
(d) the peak memory of those collections.

shardspec collects ``specs/gen_*.yaml`` (bench/generate.py: 10 files of 1,000 tensor cases);
the anchor is the same cases hand-written as one parametrized pytest test
(``param/test_cases.py``), collected by pytest without shardspec's plugin. Both as
``python -m pytest --collect-only -q``, whole processes, wall time:

- **cold**: shardspec with no cache (``.pytest_cache`` removed: every file is read,
  validated and expanded); the anchor with no ``__pycache__`` (its module is compiled and
  its asserts rewritten);
- **warm**: the run after, shardspec's expanded files from the cache, the anchor's from
  its ``.pyc``.

The four runs go round-robin, ``--repeat`` times; the medians and their ratios are printed
as one JSON line. Targets (issue 12): cold <= 1.5x, warm <= 1.05x, memory <= 1.2x.

    .venv/bin/python bench/collection.py                 # 10,000 cases, 5 rounds
    .venv/bin/python bench/collection.py --cases 2000 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate
from _timing import clean_env, counts, median, ratio, run, summary_line

TARGETS = {"cold": 1.5, "warm": 1.05, "memory": 1.2}


def collect(side: str, state: str, root: Path) -> dict:
    if side == "shardspec":
        if state == "cold":
            shutil.rmtree(root / ".pytest_cache", ignore_errors=True)
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "specs"]
        cwd = root
    else:
        cwd = root / "param"
        if state == "cold":
            shutil.rmtree(cwd / "__pycache__", ignore_errors=True)
            shutil.rmtree(cwd / ".pytest_cache", ignore_errors=True)
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "test_cases.py"]
        cmd += ["-p", "no:shardspec"]
    # tree: shardspec reads cold files ahead in forked processes; their memory counts too.
    done = run(cmd, cwd, clean_env(), tree=True)
    summary = summary_line(done.stdout)
    return {
        "side": side,
        "state": state,
        "seconds": round(done.seconds, 3),
        "peak_mib": round(done.peak_mib, 1),
        "collected": counts(summary).get("collected", counts(summary).get("tests", 0)),
        "exit_code": done.exit_code,
        "summary": summary,
    }


def measure(cases: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="shardspec-bench-collect-") as tmp:
        root = Path(tmp)
        generate.write(root, cases)
        runs = []
        for _ in range(repeat):
            for state in ("cold", "warm"):
                for side in ("shardspec", "anchor"):
                    runs.append(collect(side, state, root))
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    def series(side: str, state: str, key: str) -> list[float]:
        return [r[key] for r in runs if r["side"] == side and r["state"] == state]

    result: dict = {"benchmark": "collection", "cases": cases, "repeat": repeat}
    for state in ("cold", "warm"):
        ours, anchor = series("shardspec", state, "seconds"), series("anchor", state, "seconds")
        result[state] = {
            "shardspec_median_s": median(ours),
            "anchor_median_s": median(anchor),
            "ratio": ratio(ours, anchor),
            "target": TARGETS[state],
            "shardspec_s": ours,
            "anchor_s": anchor,
        }
        mem_ours = series("shardspec", state, "peak_mib")
        mem_anchor = series("anchor", state, "peak_mib")
        result[f"memory_{state}"] = {
            "shardspec_median_mib": median(mem_ours),
            "anchor_median_mib": median(mem_anchor),
            "ratio": ratio(mem_ours, mem_anchor),
            "target": TARGETS["memory"],
        }
    same = all(r["exit_code"] == 0 and r["collected"] == cases for r in runs)
    result["all_collected"] = same
    result["ok"] = same and all(
        result[k]["ratio"] <= result[k]["target"]
        for k in ("cold", "warm", "memory_cold", "memory_warm")
    )
    if not same:
        result["summaries"] = sorted({(r["side"], r["summary"]) for r in runs})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    result = measure(args.cases, args.repeat)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
