"""Faults at run time: a worker that dies or hangs fails only its case; none outlives pytest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.executor import Pool, Worker, WorkerFault

SPECS = """
version: 1
cases:
  - id: before
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [n, 2]}
  - id: crashes
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [n, 2]}
  - id: between
    mesh: [n]
    placements: [Replicate()]
    input: {shape: [n, 2]}
  - id: hangs
    timeout: 2
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [n, 2]}
  - id: after
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [2*n, 2]}
"""


def test_dead_or_hung_worker_fails_only_its_case(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fault hook is reachable only through this environment variable, never from YAML.
    monkeypatch.setenv("SHARDSPEC_TEST_FAULT", "crashes=crash,hangs=hang")
    (pytester.path / "specs").mkdir()
    (pytester.path / "specs" / "faults.yaml").write_text(textwrap.dedent(SPECS).lstrip())
    result = pytester.runpytest("--devices", "2")
    result.assert_outcomes(passed=3, failed=2)
    out = result.stdout.str()
    assert "case 'crashes' (n=2," in out and "the worker exited with code 139 (case)" in out
    assert "| injected fault: crash" in out  # the worker's last stderr lines
    assert (
        "case 'hangs' (n=2," in out and "timed out after 2 s (case); the worker was stopped" in out
    )
    assert "| injected fault: hang" in out
    assert "Traceback" not in out


def wait_until(condition: Callable[[], bool], limit: float, never: str) -> None:
    """Wait for ``condition``; fail with ``never`` only if it has not happened after ``limit`` s.

    The limit only ends an endless wait: how long it takes is not what is tested.
    """
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(never)
        time.sleep(0.2)


def _workers_tagged(tag: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            tagged = f"SHARDSPEC_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes()
            if tagged and b"runner.worker" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_no_worker_outlives_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "faults.yaml").write_text(textwrap.dedent(SPECS).lstrip())
    tag = uuid.uuid4().hex
    env = dict(os.environ, SHARDSPEC_TEST_FAULT="before=hang", SHARDSPEC_TEST_TAG=tag)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--devices", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def started() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()
            return bool(_workers_tagged(tag))

        wait_until(started, 600, "the worker never started")
        time.sleep(1)  # let the case begin to hang
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("pytest never stopped after Ctrl-C")
        assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
        left = []

        def gone() -> bool:
            left[:] = _workers_tagged(tag)
            return not left

        wait_until(gone, 60, f"workers outlived pytest: {left}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- a worker that breaks the protocol ---------------------------------------------------------


def _fake_worker(script: str) -> Worker:
    """A Worker whose process is a small script instead of runner.worker (no torch needed)."""
    worker = Worker("xla", 2)
    worker.proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return worker


@pytest.mark.parametrize(
    ("printed", "shown"),
    [
        ("loading weights... done", "'loading weights... done'"),
        ("42", "'42'"),  # JSON, but not a reply
        ("{broken json", "'{broken json'"),
        ("x" * 5000, "'" + "x" * 117 + "...'"),  # a long line is shortened
    ],
)
def test_a_stray_line_on_stdout_is_a_fatal_worker_fault(printed: str, shown: str) -> None:
    worker = _fake_worker(
        f"""
        import sys, time
        print({printed!r}, flush=True)
        time.sleep(600)
        """
    )
    try:
        with pytest.raises(WorkerFault) as info:
            worker._read(600, what="case")  # the limit only ends an endless wait
        fault = info.value
        assert fault.fatal
        assert str(fault) == (
            f"the worker broke its protocol (case): it printed {shown} where a JSON reply "
            "was expected; the worker was stopped"
        )
        assert worker.proc is None  # stopped: its pipe can't be trusted any more
    finally:
        worker.stop()


def test_a_stray_line_after_a_good_reply_faults_on_the_next_read() -> None:
    worker = _fake_worker(
        """
        import json, sys, time
        print(json.dumps({"ready": {"devices": 2}}), flush=True)
        sys.stdout.buffer.write(b"caf\\xe9 \\x00 noise\\n")
        sys.stdout.flush()
        time.sleep(600)
        """
    )
    try:
        assert worker._read(600, what="start") == {"ready": {"devices": 2}}
        with pytest.raises(WorkerFault, match=r"broke its protocol \(case\): it printed 'caf"):
            worker._read(600, what="case")
    finally:
        worker.stop()


def test_the_pool_restarts_a_worker_that_broke_the_protocol(monkeypatch: pytest.MonkeyPatch):
    started: list[Worker] = []

    def start(self: Worker, timeout: float = 0) -> None:
        fake = _fake_worker(
            """
            import json, sys, time
            print(json.dumps({"ready": {}}), flush=True)
            sys.stdin.readline()
            print("oops, a print from a library", flush=True)
            time.sleep(600)
            """
        )
        self.proc = fake.proc
        self.info = self._read(600, what="start")["ready"]
        started.append(self)

    monkeypatch.setattr(Worker, "start", start)
    pool = Pool()
    try:
        for _ in range(2):
            with pytest.raises(WorkerFault, match="broke its protocol") as info:
                pool.run("xla", 2, {"case": "c"}, 600)
            assert info.value.fatal
        assert pool.starts == 2 and len(started) == 2
        assert all(worker.proc is None for worker in started)
    finally:
        pool.close()
