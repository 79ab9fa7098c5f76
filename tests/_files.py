"""Shared by the tests: writing spec files, reading output, calling the CLI in-process."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.cli import main


def write(root: Path | pytest.Pytester, relpath: str, text: str) -> Path:
    """``text`` (dedented) as ``root/relpath``; ``root`` may be a pytester."""
    base = root.path if isinstance(root, pytest.Pytester) else root
    path = base / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def assert_lines(result: pytest.RunResult, *fragments: str) -> None:
    """Each fragment appears in the output (plain text: no glob brackets to escape)."""
    out = result.stdout.str()
    missing = [f for f in fragments if f not in out]
    assert not missing, f"missing {missing} in:\n{out}"


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """``shardspec ARGV`` in this process: its exit code and what it printed."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err
