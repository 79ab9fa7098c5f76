"""A case's verdict at one engine and device count: run, skip (and why), xfail, or error.

One function decides it, and everyone asks it: the plugin (which marks an item gets),
``shardspec list``, ``validate`` and ``explain``. So ``list`` never says "skip" for a
case that pytest fails: a broken case is an error whatever else it says.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from .expand import Variant
from .problems import Problem
from .words import close_match

Kind = Literal["run", "skip", "xfail", "error"]


@dataclass(frozen=True)
class Xfail:
    """A case's ``xfail:`` as it applies to one engine."""

    reason: str
    strict: bool = True
    checks: tuple[str, ...] | None = None  # None: any failed check is expected (v1's meaning)
    engines: tuple[str, ...] | None = None  # None: every engine

    def holds_for(self, failed: Collection[str]) -> bool:
        """Is a failure of these checks the expected one? (a non-empty subset of ``checks``)"""
        if not failed:
            return False
        return self.checks is None or set(failed) <= set(self.checks)


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reason: str = ""
    problems: list[Problem] = field(default_factory=list)
    xfail: Xfail | None = None
    file_broken: bool = False  # the problems are the file's, not the case's own


def xfail_of(variant: Variant) -> Xfail | None:
    """The case's xfail if it applies to the variant's engine."""
    raw = variant.case.data.get("xfail")
    if not isinstance(raw, dict) or not isinstance(raw.get("reason"), str):
        return None
    engines = tuple(raw["engines"]) if isinstance(raw.get("engines"), list) else None
    if engines is not None and variant.engine not in engines:
        return None
    checks = tuple(raw["checks"]) if isinstance(raw.get("checks"), list) else None
    return Xfail(raw["reason"], raw.get("strict", True) is not False, checks, engines)


def marker_problems(variant: Variant, registered: Collection[str] | None) -> list[Problem]:
    """Marks a case names that pytest does not know, when pytest runs with --strict-markers."""
    marks = variant.case.data.get("marks")
    if registered is None or not isinstance(marks, list):
        return []
    out = []
    for i, name in enumerate(marks):
        if isinstance(name, str) and name not in registered:
            close = close_match(name, sorted(registered))
            fix = (
                f"did you mean '{close}'? If not, register it"
                if close
                else "fix the name, or register it"
            )
            out.append(
                variant.case.problem(
                    ("marks", i),
                    f"the marker '{name}' is not registered, and pytest runs with "
                    f"--strict-markers; {fix} under markers in the pytest configuration "
                    "(pyproject.toml's [tool.pytest.ini_options])",
                )
            )
    return out


def verdict(
    variant: Variant,
    file_problems: list[Problem] | None = None,
    registered_marks: Collection[str] | None = None,
) -> Verdict:
    """What happens to this variant. Problems win over everything: no mark may hide them."""
    if file_problems:
        return Verdict("error", "its spec file has errors", list(file_problems), file_broken=True)
    problems = variant.problems or marker_problems(variant, registered_marks)
    if problems:
        return Verdict("error", problems[0].message, list(problems))
    if variant.skip:
        return Verdict("skip", variant.skip)
    skip = variant.case.data.get("skip")
    if isinstance(skip, str):
        return Verdict("skip", skip)
    xfail = xfail_of(variant)
    if xfail is not None:
        return Verdict("xfail", xfail.reason, xfail=xfail)
    return Verdict("run")
