"""A spec file, loaded and validated, split into cases with defaults merged under them."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema
from .problems import Mark, Problem, SpecError
from .yamlload import Document, JsonPath, load_file, short

SUFFIXES = (".yaml", ".yml")  # what a spec file's name ends in
ENGINES = ("xla", "native")  # xla: torch_xla SPMD; native: DTensor itself on the CPU
DEFAULT_ENGINES = ("xla",)


def parse_engines(text: str) -> tuple[str, ...]:
    """``"xla,native"`` -> ("xla", "native"); ValueError in plain words."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in ENGINES]
    if not names or unknown:
        raise ValueError(
            f"'{text}' is not a list of engines; write them separated by commas, from: "
            f"{', '.join(ENGINES)} (such as xla,native)"
        )
    return names


@dataclass
class Case:
    """One case of a spec file, with ``defaults`` merged under it."""

    doc: Document
    index: int
    id: str
    data: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.data.get("kind", "tensor")

    @property
    def mark(self) -> Mark:
        return self.doc.mark(("cases", self.index))

    def locate(self, path: JsonPath) -> Mark:
        """Line of a value in the merged case: the case's own line, else the defaults'."""

        def depth(prefix: tuple) -> int:
            return max(k for k in range(len(path) + 1) if self.doc.has((*prefix, *path[:k])))

        own = ("cases", self.index)
        in_case = depth(own)
        in_defaults = depth(("defaults",)) if self.doc.has(("defaults",)) else -1
        if in_defaults > in_case:
            return self.doc.mark(("defaults", *path[:in_defaults]))
        return self.doc.mark((*own, *path[:in_case]))

    def problem(self, path: JsonPath, message: str) -> Problem:
        return Problem(self.doc.path, self.locate(path), message)


@dataclass
class SpecFile:
    """What a spec file yields: its cases, and problems that concern the whole file."""

    path: str
    doc: Document | None
    cases: list[Case]
    problems: list[Problem]


def merge(base: Any, over: Any) -> Any:
    """Deep-merge maps (``over`` wins); anything else is replaced by ``over``."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return over


def read(path: str | Path, display: str | None = None) -> SpecFile:
    """Load, validate and split a spec file. Never raises for bad input."""
    shown = display or str(path)
    try:
        doc = load_file(path, shown)
    except SpecError as exc:
        return SpecFile(shown, None, [], exc.problems)
    return split(doc)


def split(doc: Document) -> SpecFile:
    """Validate a loaded document and build its cases."""
    file_problems, case_problems = schema.validate(doc)
    data = doc.data if isinstance(doc.data, dict) else {}
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list):
        return SpecFile(doc.path, doc, [], file_problems)
    defaults = data.get("defaults")
    defaults = defaults if isinstance(defaults, dict) else {}
    cases: list[Case] = []
    first_seen: dict[str, Case] = {}
    for index, raw in enumerate(raw_cases):
        raw = raw if isinstance(raw, dict) else {}
        case_id = raw.get("id")
        if not isinstance(case_id, str) or not case_id:
            case_id = f"cases[{index}]"
        merged = merge(copy.deepcopy(defaults), raw)
        case = Case(doc, index, case_id, merged, list(case_problems.get(index, [])))
        if case_id in first_seen:
            first = first_seen[case_id]
            again = doc.mark(("cases", index, "id"))
            before = doc.mark(("cases", first.index, "id"))
            case.problems.append(
                Problem(
                    doc.path,
                    again,
                    f"duplicate case id '{short(case_id)}' (first at line {before.line}, again "
                    f"at line {again.line}); every case id must be unique in its file: rename one",
                )
            )
            case.id = f"{case_id}@{index}"
        else:
            first_seen[case_id] = case
        cases.append(case)
    return SpecFile(doc.path, doc, cases, file_problems)
