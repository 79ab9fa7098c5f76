"""Wall time and peak worker memory of the whole spec library at --devices 1,2,4,8.

Target: under 180 s on the 2-core CI machine. Prints one JSON line; exits 1 when missed.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 180.0


def main() -> int:
    began = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "specs/",
            "--devices",
            "1,2,4,8",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - began
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    # ru_maxrss of children: the largest worker (or pytest itself), in MiB.
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "benchmark": "library",
        "seconds": round(seconds, 1),
        "target_seconds": TARGET_SECONDS,
        "peak_process_rss_mib": round(peak_mib),
        "tests": dict((w, int(n)) for n, w in re.findall(r"(\d+) (\w+)", summary)),
        "exit_code": done.returncode,
        "ok": done.returncode == 0 and seconds < TARGET_SECONDS,
    }
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
