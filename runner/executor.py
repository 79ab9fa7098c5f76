"""Worker subprocesses, one per (engine, device count): started lazily, reused, isolated.

A case that hangs past its timeout or kills its worker fails alone, with the
worker's last stderr lines; the worker is started again for the next case.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

STARTUP_TIMEOUT = 600.0
TAIL_LINES = 30


class WorkerFault(Exception):
    """The worker died, hung, or could not start; ``tail`` holds its last stderr lines."""

    def __init__(self, message: str, tail: list[str], *, fatal: bool = True):
        super().__init__(message)
        self.tail = tail
        self.fatal = fatal  # False when the worker is still healthy


@dataclass
class Reply:
    observation: dict[str, Any]
    seconds: float


def worker_env() -> dict[str, str]:
    """The engine worker's environment: ours, and under pytest-xdist a share of the cores
    for torch's threads (OMP_NUM_THREADS, unless set), so that the xdist workers' engines
    don't oversubscribe the machine (measured on 2 cores, the library at 1,2,4,8 with
    -n 2: 45.4 s without, 42.7 s with; -n 0 unchanged)."""
    env = dict(os.environ)
    workers = env.get("PYTEST_XDIST_WORKER_COUNT", "")
    if workers.isdigit() and int(workers) > 1 and "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // int(workers)))
    return env


class Worker:
    """One worker process and the pipes to it."""

    def __init__(self, engine: str, devices: int):
        self.engine, self.devices = engine, devices
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.info: dict[str, Any] = {}
        self.proc: subprocess.Popen | None = None
        self._buffer = b""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        cmd = [
            sys.executable,
            "-m",
            "runner.worker",
            "--engine",
            self.engine,
            "--devices",
            str(self.devices),
        ]
        self.proc = subprocess.Popen(
            cmd,
            env=worker_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C goes to pytest, which then stops us cleanly
        )
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()
        ready = self._read(timeout, what="start")
        if "ready" not in ready:
            raise WorkerFault(f"the worker sent {ready!r} instead of starting", list(self.tail))
        self.info = ready["ready"]

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.tail.append(line)

    def _read(self, timeout: float, what: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise WorkerFault(
                        f"timed out after {timeout:g} s ({what}); the worker was stopped",
                        list(self.tail),
                    )
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self.proc.wait()
                    time.sleep(0.05)  # let the stderr thread catch the last lines
                    raise WorkerFault(_death(code, what), list(self.tail))
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that aren't text
            reply = None
        if not isinstance(reply, dict):
            # Something else printed to the worker's stdout (a library's print, say): the
            # pipe can no longer be trusted, so the worker is stopped and started afresh.
            self.stop()
            text = short_line(line.decode("utf-8", "replace"))
            raise WorkerFault(
                f"the worker broke its protocol ({what}): it printed {text!r} where a JSON "
                "reply was expected; the worker was stopped",
                list(self.tail),
            )
        return reply

    def call(self, request: dict[str, Any], timeout: float) -> Reply:
        assert self.proc is not None and self.proc.stdin is not None
        began = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            code = self.proc.wait()
            raise WorkerFault(_death(code, "before the case"), list(self.tail)) from None
        reply = self._read(timeout, what="case")
        if "fault" in reply:
            raise WorkerFault(
                f"the engine failed: {reply['fault']}",
                reply.get("traceback", "").splitlines(),
                fatal=False,
            )
        return Reply(reply["observation"], time.monotonic() - began)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                pipe.close()
        self.proc = None
        self._buffer = b""


def short_line(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters for a one-line message."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _death(code: int, what: str) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the worker was killed by {name} ({what})" + (
            "; out of memory?" if name == "SIGKILL" else ""
        )
    return f"the worker exited with code {code} ({what})"


class Pool:
    """The session's workers, by (engine, device count)."""

    def __init__(self) -> None:
        self.workers: dict[tuple[str, int], Worker] = {}
        self.starts = 0

    def worker(self, engine: str, devices: int) -> Worker:
        worker = self.workers.get((engine, devices))
        if worker is None or not worker.alive:
            if worker is not None:
                worker.stop()
            worker = Worker(engine, devices)
            self.workers[(engine, devices)] = worker
            self.starts += 1
            try:
                worker.start()
            except WorkerFault:
                worker.stop()
                raise
        return worker

    def run(self, engine: str, devices: int, request: dict[str, Any], timeout: float) -> Reply:
        worker = self.worker(engine, devices)
        try:
            return worker.call(request, timeout)
        except WorkerFault as fault:
            if fault.fatal:
                worker.stop()
            raise

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.workers.clear()
