"""Faults at run time: a worker that dies or hangs fails only its case; none outlives pytest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

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
    began = time.monotonic()
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
    assert time.monotonic() - began < 90


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
    deadline = time.monotonic() + 120
    while not _workers_tagged(tag):
        assert time.monotonic() < deadline, "the worker never started"
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
    time.sleep(0.5)
    assert _workers_tagged(tag) == []
