"""(c) Running 1,000 generated cases at n=4 against the seed's style and a bare loop;
(d) the peak memory of those runs.

The same 1,000 tensor cases (bench/generate.py), three ways, each checking what shardspec
checks unasked (type, global shape, every device's piece: shape, offset and values;
requires_grad, is_leaf, the sharding string; device 0's declared local shape):

- **shardspec**: ``python -m pytest specs --devices 4`` (the plugin, one XLA worker);
- **seed style**: the cases hand-written as the seed does (one ``TestCase`` method per
  case on torch's ``common_utils.TestCase``), run by pytest in one process;
- **bare loop**: ``distribute_tensor`` and the same checks in a plain ``for`` loop, no pytest.

Whole processes, alternately, ``--repeat`` times; wall-time medians and ratios, and the
peak memory of each side (the largest sum of RSS over the process and its children:
shardspec's pytest process and its worker). Targets (issue 12): <= 0.9x the seed style,
<= 1.2x the bare loop.

    .venv/bin/python bench/run_ratio.py                    # 1,000 cases, 3 rounds
    .venv/bin/python bench/run_ratio.py --cases 200 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate
from _timing import clean_env, counts, median, ratio, run, summary_line

TARGETS = {"seed": 0.9, "bare": 1.2}
DEVICES = 4


def side_cmd(side: str, root: Path) -> tuple[list[str], Path, dict[str, str]]:
    if side == "shardspec":
        # The plugin sets PJRT_DEVICE=CPU CPU_NUM_DEVICES=4 in its worker (--devices 4).
        env = clean_env()
        env.pop("PJRT_DEVICE", None)
        env.pop("CPU_NUM_DEVICES", None)
        cmd = ["-m", "pytest", "specs", "--devices", str(DEVICES), "-q", "-p", "no:cacheprovider"]
        return [sys.executable, *cmd], root, env
    env = clean_env(PJRT_DEVICE="CPU", CPU_NUM_DEVICES=str(DEVICES))
    if side == "seed":
        cmd = ["-m", "pytest", "test_seed_style.py", "-q", "-p", "no:shardspec"]
        return [sys.executable, *cmd, "-p", "no:cacheprovider"], root / "seed", env
    return [sys.executable, "loop.py"], root / "bare", env


def measure(cases: int, repeat: int) -> dict:
    runs = []
    with tempfile.TemporaryDirectory(prefix="shardspec-bench-run-") as tmp:
        root = Path(tmp)
        generate.write(root, cases)
        for _ in range(repeat):
            for side in ("shardspec", "seed", "bare"):
                cmd, cwd, env = side_cmd(side, root)
                done = run(cmd, cwd, env, tree=True)
                summary = summary_line(done.stdout)
                runs.append(
                    {
                        "side": side,
                        "seconds": round(done.seconds, 2),
                        "peak_mib": round(done.peak_mib),
                        "exit_code": done.exit_code,
                        "passed": counts(summary).get("passed", 0),
                        "summary": summary,
                        "tail": "" if done.exit_code == 0 else (done.stdout + done.stderr)[-2000:],
                    }
                )
                print(
                    json.dumps({k: v for k, v in runs[-1].items() if k != "tail"}),
                    file=sys.stderr,
                    flush=True,
                )

    def series(side: str, key: str) -> list[float]:
        return [r[key] for r in runs if r["side"] == side]

    ours = series("shardspec", "seconds")
    result: dict = {"benchmark": "run", "cases": cases, "devices": DEVICES, "repeat": repeat}
    result["shardspec_median_s"] = median(ours)
    for anchor in ("seed", "bare"):
        result[f"{anchor}_median_s"] = median(series(anchor, "seconds"))
        result[f"ratio_to_{anchor}"] = ratio(ours, series(anchor, "seconds"))
        result[f"target_{anchor}"] = TARGETS[anchor]
    result["peak_mib"] = {
        side: median(series(side, "peak_mib")) for side in ("shardspec", "seed", "bare")
    }
    result["samples_s"] = {side: series(side, "seconds") for side in ("shardspec", "seed", "bare")}
    all_passed = all(r["exit_code"] == 0 and r["passed"] == cases for r in runs)
    result["all_passed"] = all_passed
    result["ok"] = all_passed and all(
        result[f"ratio_to_{a}"] <= TARGETS[a] for a in ("seed", "bare")
    )
    failed = [r for r in runs if r["tail"] or r["passed"] != cases]
    if failed:
        result["first_failure"] = {k: failed[0][k] for k in ("side", "summary", "tail")}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    result = measure(args.cases, args.repeat)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
