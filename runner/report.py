"""Text for people: failures, problems and worker faults, without the runner's traceback."""

from __future__ import annotations

from .check import Failure
from .expand import Variant
from .problems import Problem


def context(variant: Variant) -> str:
    d = variant.description
    parts = [f"n={variant.n}"]
    if "mesh" in d:
        parts.append(f"mesh {d['mesh']}")
    if "placements" in d:
        parts.append(f"placements [{', '.join(d['placements'])}]")
    if "shape" in d:
        parts.append(f"input {d['shape']} {d.get('dtype', '')}".rstrip())
    if variant.requires_grad is not None:
        parts.append(f"requires_grad={str(variant.requires_grad).lower()}")
    return ", ".join(parts)


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def failures(variant: Variant, found: list[Failure]) -> str:
    path = variant.case.doc.path
    lines = [f"case '{variant.case.id}' ({context(variant)}): {len(found)} check(s) failed"]
    for failure in found:
        lines.append("")
        lines.append(f"{path}:{failure.mark.line}:{failure.mark.col}: {failure.title}")
        if failure.expected is not None or failure.actual is not None:
            lines.append(f"  expected: {failure.expected}")
            lines.append(f"  actual:   {failure.actual}")
        if failure.note:
            lines.append(f"  {failure.note}")
        if failure.table:
            lines.extend(table(failure.table))
    return "\n".join(lines)


def unexpected(named: tuple[str, ...] | list[str], found: list[Failure]) -> str:
    """Why a failure under an xfail is not the expected one."""
    failed = list(dict.fromkeys(f.check for f in found))
    others = [c for c in failed if c not in named]
    return (
        f"not the expected failure: the case's xfail names the checks [{', '.join(named)}], "
        f"but [{', '.join(others)}] failed too (failed: {', '.join(failed)}); fix the case, "
        "or name these checks in xfail.checks if this failure is expected as well"
    )


def problems(found: list[Problem]) -> str:
    return "\n".join(str(p) for p in found)


def fault(variant: Variant, message: str, tail: list[str]) -> str:
    case = variant.case
    lines = [
        f"{case.doc.path}:{case.mark.line}:{case.mark.col}: case '{case.id}' ({context(variant)}): {message}"
    ]
    if tail:
        lines.append("last lines from the worker:")
        lines.extend(f"  | {line}" for line in tail[-15:])
    return "\n".join(lines)
