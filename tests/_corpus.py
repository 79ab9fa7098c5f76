"""Shared by the malformed-corpus and fuzz tests: the pure spec pipeline (no torch, no plugin).

read/load -> validate and split -> expand at a device count, collecting every problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from runner.expand import expand
from runner.problems import Problem, SpecError
from runner.spec import SpecFile, read, split
from runner.yamlload import load_text

CORPUS = Path(__file__).with_name("malformed")

# "path:line:col: message", one line, both numbers 1-based.
PROBLEM_SHAPE = re.compile(r"^(?P<path>.+?):(?P<line>[1-9][0-9]*):(?P<col>[1-9][0-9]*): \S")
# What leaks when the runner's own failure reaches the user instead of a plain message.
TRACEBACK_SIGNS = ("Traceback (most recent call last)", 'File "', "runner/", ".py:", "<module>")

_EXPECT = re.compile(rb"^# expect: (?P<line>[0-9]+): (?P<fragment>.+?)\r?$", re.M)
_DEVICES = re.compile(rb"^# devices: (?P<n>[0-9]+)\r?$", re.M)


@dataclass(frozen=True)
class Expected:
    """What a corpus file's header promises: a message fragment at a line, at n devices."""

    line: int
    fragment: str
    devices: int


def expected(path: Path) -> Expected:
    head = path.read_bytes()
    match = _EXPECT.search(head)
    assert match, f"{path.name} has no '# expect: LINE: fragment' header"
    devices = _DEVICES.search(head)
    return Expected(
        int(match["line"]),
        match["fragment"].decode("utf-8"),
        int(devices["n"]) if devices else 4,
    )


def corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.yaml"))


def expand_all(spec: SpecFile, devices: list[int]) -> list[Problem]:
    """Problems of the file and of every case at every device count, in order."""
    found = list(spec.problems)
    for case in spec.cases:
        for n in devices:
            for variant in expand(case, "xla", n):
                found += [p for p in variant.problems if p not in found]
    return found


def problems_of_file(path: Path, display: str, devices: int) -> list[Problem]:
    return expand_all(read(path, display), [devices])


def problems_of_text(
    text: str | bytes, devices: list[int], path: str = "fuzz.yaml"
) -> list[Problem]:
    """The whole pipeline on text; SpecError (the documented way to refuse a file) included."""
    try:
        doc = load_text(text, path)
    except SpecError as exc:
        return list(exc.problems)
    return expand_all(split(doc), devices)


def assert_plain(problem: Problem, path: str) -> None:
    """A problem reads as ``path:line:col: message`` on one line, with no traceback in it."""
    text = str(problem)
    assert problem.path == path
    assert PROBLEM_SHAPE.match(text), text
    assert "\n" not in text, text
    assert not any(sign in problem.message for sign in TRACEBACK_SIGNS), text
