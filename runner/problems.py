"""Located problems: every message the user sees points at a file, line and column."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Mark:
    """A 1-based position in a spec file."""

    line: int
    col: int


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, in plain words, at a place in a file."""

    path: str
    mark: Mark
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.mark.line}:{self.mark.col}: {self.message}"

    def as_json(self) -> dict:
        return {
            "path": self.path,
            "line": self.mark.line,
            "col": self.mark.col,
            "message": self.message,
        }


class SpecError(Exception):
    """Raised for problems that stop a whole file (or case) from being used."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
