"""Time to load, validate and expand every spec in specs/ at n=1,2,4,8, in a fresh process.

Target: under 1 s, with no torch import. Prints one JSON line; exits 1 when missed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 1.0
CHILD = """
import json, sys, time
began = time.perf_counter()
from pathlib import Path
from runner.expand import expand
from runner.spec import read
files = sorted(Path("specs").rglob("*.y*ml"))
variants = problems = 0
for path in files:
    spec = read(path, str(path))
    problems += len(spec.problems)
    for case in spec.cases:
        for n in (1, 2, 4, 8):
            for v in expand(case, "xla", n):
                variants += 1
                problems += len(v.problems)
print(json.dumps({"files": len(files), "variants": variants, "problems": problems,
                  "in_process_seconds": time.perf_counter() - began,
                  "torch_imported": "torch" in sys.modules}))
"""


def main() -> int:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, check=True
    )
    seconds = time.monotonic() - began
    result = {
        "benchmark": "validate",
        **json.loads(done.stdout),
        "process_seconds": round(seconds, 3),
        "target_seconds": TARGET_SECONDS,
    }
    result["ok"] = seconds < TARGET_SECONDS and not result["torch_imported"]
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
