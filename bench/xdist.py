"""(5) The spec library at --devices 1,2,4,8 with pytest-xdist's -n 2 against -n 0.

    .venv/bin/python -m pytest specs --devices 1,2,4,8 -p no:cacheprovider -q [-n 2]

Both run alternately on a copy of specs/ taken at the start, ``--repeat`` times (default 3); the medians of their wall times and
the ratio are printed as one JSON line. Target (issue 12): -n 2 <= 0.75x of -n 0 on this
2-core machine, with the same outcomes: the same summary counts, the same outcome for
every test (from --junitxml), and the same "cases per spec file" ledger lines.

Under -n, runner.scheduler gives each xdist worker whole engine x device count groups, so
each count's torch_xla worker is started once per run (four starts, not eight).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import REPO, clean_env, counts, median, ratio, run, summary_line

TARGET = 0.75
DEVICES = "1,2,4,8"


def outcomes(junit: Path) -> dict[str, str]:
    """Test id -> passed, failed, error, skipped (xfail shows as skipped in JUnit XML)."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        found[name] = kinds[0] if kinds else "passed"
    return found


def ledger(stdout: str) -> list[str]:
    """The lines of the "cases per spec file" section."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "cases per spec file" in line), None)
    if start is None:
        return []
    out = []
    for line in lines[start + 1 :]:
        if line.startswith(("=", "-")) or re.match(r"^\d+ (passed|failed|skipped|error)", line):
            break  # the next section, or pytest's closing line (with its time)
        out.append(line)
    return out


def one(workers: int, tmp: Path, index: int) -> dict:
    junit = tmp / f"junit-{workers}-{index}.xml"
    cmd = [sys.executable, "-m", "pytest", "specs", "--devices", DEVICES, "-p", "no:cacheprovider"]
    cmd += ["-q", "-n", str(workers), f"--junitxml={junit}"]
    done = run(cmd, tmp / "library", clean_env())
    summary = summary_line(done.stdout)
    return {
        "n": workers,
        "seconds": round(done.seconds, 2),
        "exit_code": done.exit_code,
        "summary": re.sub(r" in [0-9.]+s.*$", "", summary),
        "counts": counts(summary),
        "ledger": ledger(done.stdout),
        "outcomes": outcomes(junit) if junit.exists() else {},
    }


def measure(repeat: int) -> dict:
    runs = []
    with tempfile.TemporaryDirectory(prefix="shardspec-bench-xdist-") as tmp:
        # A copy of the library, so that every run sees the same files while people edit.
        shutil.copytree(REPO / "specs", Path(tmp) / "library" / "specs")
        (Path(tmp) / "library" / "pytest.ini").write_text("[pytest]\nshardspec_paths = specs\n")
        for index in range(repeat):
            for workers in (0, 2):
                runs.append(one(workers, Path(tmp), index))
                shown = {k: v for k, v in runs[-1].items() if k not in ("outcomes", "ledger")}
                print(json.dumps(shown), file=sys.stderr, flush=True)
    serial = [r for r in runs if r["n"] == 0]
    spread = [r for r in runs if r["n"] == 2]
    first = serial[0]
    same_counts = all(r["counts"] == first["counts"] for r in runs)
    same_ledger = all(r["ledger"] == first["ledger"] and r["ledger"] for r in runs)
    same_outcomes = all(r["outcomes"] == first["outcomes"] and r["outcomes"] for r in runs)
    result = {
        "benchmark": "xdist",
        "devices": DEVICES,
        "repeat": repeat,
        "n0_median_s": median([r["seconds"] for r in serial]),
        "n2_median_s": median([r["seconds"] for r in spread]),
        "ratio": ratio([r["seconds"] for r in spread], [r["seconds"] for r in serial]),
        "target": TARGET,
        "n0_s": [r["seconds"] for r in serial],
        "n2_s": [r["seconds"] for r in spread],
        "summary": first["summary"],
        "tests": len(first["outcomes"]),
        "same_counts": same_counts,
        "same_outcomes": same_outcomes,
        "same_ledger": same_ledger,
        "ledger": first["ledger"],
    }
    result["ok"] = same_counts and same_outcomes and same_ledger and result["ratio"] <= TARGET
    if not same_outcomes:
        differ = {
            k: (first["outcomes"].get(k), r["outcomes"].get(k))
            for r in runs
            for k in set(first["outcomes"]) | set(r["outcomes"])
            if first["outcomes"].get(k) != r["outcomes"].get(k)
        }
        result["outcomes_differ"] = dict(list(differ.items())[:20])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    result = measure(args.repeat)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
