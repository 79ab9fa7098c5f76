"""A worker process: one engine (XLA's runtime, or n ranks of DTensor on the CPU) with a
fixed device count, serving requests.

Protocol: one JSON request per line on stdin, one JSON reply per line on a private
copy of the original stdout. Everything libraries print goes to stderr, which the
parent keeps the tail of for crash reports.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
import traceback
import warnings

# Test-only fault injection: tests set this variable; nothing in a spec can.
FAULT_ENV = "SHARDSPEC_TEST_FAULT"
NOISY_WARNINGS = (
    "XLA_USE_SPMD is being deprecated",
    "Using a non-tuple sequence for multidimensional indexing",
)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the pytest process goes away."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(1)


def fault_actions(req: dict) -> list[str]:
    """The faults ``SHARDSPEC_TEST_FAULT=<case id>=<action>[,...]`` asks of this case."""
    actions = []
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        case_id, _, action = item.partition("=")
        if req.get("case", "").endswith(f"::{case_id}"):
            actions.append(action)
    return actions


def _inject_fault(req: dict) -> None:
    """``crash`` and ``hang`` make the case fail hard (the native engine's rank faults are
    its own: engine_native._fault)."""
    for action in fault_actions(req):
        print(f"injected fault: {action}", file=sys.stderr, flush=True)
        if action == "crash":
            os._exit(139)
        if action == "hang":
            time.sleep(3600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--devices", type=int, default=0, help="virtual CPU devices (0: runtime's own)"
    )
    parser.add_argument("--engine", choices=("xla", "native"), default="xla")
    args = parser.parse_args()
    _die_with_parent()
    reply = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # library prints must never corrupt the protocol
    if args.engine == "xla" and args.devices and "PJRT_DEVICE" not in os.environ:
        os.environ["PJRT_DEVICE"] = "CPU"
        os.environ["CPU_NUM_DEVICES"] = str(args.devices)
    for text in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{text}")
    began = time.perf_counter()
    if args.engine == "native":
        from . import engine_native as engine
    else:
        from . import engine_xla as engine  # type: ignore[no-redef]

    info = engine.start(args.devices) if args.engine == "native" else engine.start()
    info["startup_seconds"] = time.perf_counter() - began
    reply.write(json.dumps({"ready": info}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        _inject_fault(req)
        try:
            result = {"observation": engine.run(req)}
        except Exception as exc:
            result = {"fault": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        reply.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
