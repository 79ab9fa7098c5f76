"""(b) ``shardspec validate`` against ``check-jsonschema`` on the same 10,000 cases.

Both check ``specs/gen_*.yaml`` (bench/generate.py: 10 files of 1,000 tensor cases) against
``schema/spec.schema.json``. check-jsonschema only validates against the schema;
``shardspec validate`` also loads every file with its line marks, expands every case at
n=1,2,4,8 and checks each declared shape against DTensor's rules (the oracle checks),
and says where each problem is. Sides, as whole processes, alternately:

- ``check-jsonschema --schemafile schema/spec.schema.json specs/*.yaml``, installed into a
  throwaway venv for this benchmark (never into the project's);
- ``shardspec validate specs --no-cache``: every file read, validated and expanded (cold);
- ``shardspec validate specs``: the second run, served from the cache it shares with pytest
  (warm; shown, not the target).

Prints the medians and the speed-up (check-jsonschema's time over shardspec's). Target
(issue 12): >= 5x, cold.

    .venv/bin/python bench/validate_ratio.py                  # a fresh venv for check-jsonschema
    .venv/bin/python bench/validate_ratio.py --venv DIR       # keep (and reuse) it in DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate
from _timing import REPO, clean_env, median, run

TARGET_SPEEDUP = 5.0


def check_jsonschema(venv: Path) -> Path:
    """check-jsonschema in ``venv`` (made and installed into if it is not there yet)."""
    exe = venv / "bin" / "check-jsonschema"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "check-jsonschema"],
            check=True,
        )
    return exe


def measure(cases: int, repeat: int, venv: Path) -> dict:
    exe = check_jsonschema(venv)
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout
    shardspec = Path(sys.executable).with_name("shardspec")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="shardspec-bench-validate-") as tmp:
        root = Path(tmp)
        generate.write(root, cases)
        files = sorted(str(p.relative_to(root)) for p in (root / "specs").glob("*.yaml"))
        schema = str(REPO / "schema" / "spec.schema.json")
        sides = {
            "check-jsonschema": [str(exe), "--schemafile", schema, *files],
            "shardspec-cold": [str(shardspec), "validate", "specs", "--no-cache"],
            "shardspec-warm": [str(shardspec), "validate", "specs"],
        }
        for _ in range(repeat):
            for side, cmd in sides.items():
                done = run(cmd, root, clean_env())
                runs.append(
                    {
                        "side": side,
                        "seconds": round(done.seconds, 3),
                        "peak_mib": round(done.peak_mib, 1),
                        "exit_code": done.exit_code,
                        "last_line": (done.stdout.strip().splitlines() or [""])[-1],
                    }
                )
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    def seconds(side: str) -> list[float]:
        return [r["seconds"] for r in runs if r["side"] == side]

    anchor = median(seconds("check-jsonschema"))
    result: dict = {
        "benchmark": "validate",
        "cases": cases,
        "repeat": repeat,
        "check_jsonschema": version.strip(),
        "check_jsonschema_median_s": anchor,
        "target_speedup": TARGET_SPEEDUP,
    }
    for side in ("shardspec-cold", "shardspec-warm"):
        key = side.replace("shardspec-", "")
        result[f"shardspec_{key}_median_s"] = median(seconds(side))
        result[f"speedup_{key}"] = round(anchor / median(seconds(side)), 2)
    result["samples"] = {side: seconds(side) for side in sides}
    result["all_valid"] = all(r["exit_code"] == 0 for r in runs)
    result["shardspec_says"] = next(r["last_line"] for r in runs if r["side"] != "check-jsonschema")
    result["ok"] = result["all_valid"] and result["speedup_cold"] >= TARGET_SPEEDUP
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--venv", type=Path, help="where check-jsonschema lives (kept)")
    args = parser.parse_args(argv)
    if args.venv:
        result = measure(args.cases, args.repeat, args.venv)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="shardspec-check-jsonschema-"))
        try:
            result = measure(args.cases, args.repeat, tmp / "venv")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
