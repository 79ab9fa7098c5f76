"""The coverage matrix: which layouts the specs exercise, and how they fared per device count.

Rows are placement combination x mesh rank x even/uneven x dtype, columns are device
counts, and each row names its cases; a grid of mesh rank x evenness against dtype shows
the gaps at a glance (only tests that ran on a device count as coverage, never skips).

The matrix is built from plain records, one per test item, made from the item's variant
at collection time (:func:`record`). They travel with the item's reports in
``user_properties``, so the matrix is built the same way with and without pytest-xdist.
Nothing here imports torch: its version is read from the installed package's metadata.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .disagree import disagreements
from .expand import Variant

PROPERTY = "shardspec"  # the user_properties name of an item's record
DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "bool")
MESH_RANKS = (1, 2, 3)
EXPECTED_ERROR = "error (expected)"
SHORT = {
    "passed": "pass",
    "failed": "FAIL",
    "error": "ERROR",
    "skipped": "skip",
    "xfailed": "xfail",
    "xpassed": "XPASS",
    "xpassed strict": "XPASS",
}
# The outcomes that mean the layout ran on a device and was checked (a broken spec's FAIL
# does not, nor does an expected error: the layout was refused, not exercised).
RAN = {"passed", "failed", "xfailed", "xpassed", "xpassed strict"}
LEGEND = (
    ("pass", "ran on the device and every check held"),
    (
        EXPECTED_ERROR,
        "raised the error the case expects (expect: error): the layout was refused, as the "
        "case says; not counted as coverage",
    ),
    ("xfail", "a known divergence (xfail:): failed as the case says it does"),
    ("FAIL", "failed: a check did not hold, the spec has errors, or the worker died"),
    ("XPASS", "marked xfail but passed (with strict: true, that fails the run)"),
    ("ERROR", "an error outside the test itself (setup or teardown)"),
    ("skip", "not run at this device count (requires:, skip:); never counted as coverage"),
    ("not run", "selected, but the run ended without an outcome for it"),
    ("-", "no test of this row at this device count"),
    ("GAP", "(gaps grid) no test of this layout ran on a device and was checked"),
)


@dataclass(frozen=True)
class Row:
    placements: str
    mesh_rank: str
    evenness: str
    dtype: str


def row_of(variant: Variant) -> Row:
    d = variant.description
    mesh = d.get("mesh") or variant.case.data.get("mesh") or []
    rank = str(len(mesh)) if isinstance(mesh, list) and mesh else "?"
    if variant.case.kind == "module":
        return Row("module", rank, "-", "float32")
    places = d.get("placements") or variant.case.data.get("placements") or []
    if variant.layout:
        even = "even" if len({s.shape for s in variant.layout}) == 1 else "uneven"
    else:
        even = "?"
    inp = variant.case.data.get("input")
    dtype = d.get("dtype") or (inp.get("dtype") if isinstance(inp, dict) else None) or "float32"
    return Row(
        ", ".join(map(str, places)) if isinstance(places, list) else "?", rank, even, str(dtype)
    )


def record(
    variant: Variant,
    nodeid: str,
    *,
    broken: bool = False,
    digest: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """The item's ``user_properties`` entry: a JSON record of what the reports need.

    ``broken``: the case can't run (its spec file has errors); so can't a variant with
    problems. A broken case is never coverage and has no checks to list.
    """
    broken = broken or bool(variant.problems)
    notes = [] if broken else list(variant.unchecked)
    if not broken:
        notes += [
            f"{name} (turned off with checks:)" for name, on in variant.checks.items() if not on
        ]
    data = {
        "file": nodeid.split("::")[0],
        "case": variant.case.id,
        "engine": variant.engine,
        "n": variant.n,
        "variant": variant.name,
        "row": list(astuple(row_of(variant))),
        "expects_error": variant.expect("error") is not None,
        "broken": broken,
        "unchecked": notes,
        "digest": digest,  # what the engine observed, for "engines disagree"
    }
    return PROPERTY, json.dumps(data, sort_keys=True)


def record_in(user_properties: Any) -> dict[str, Any] | None:
    """The record among a report's user_properties (None for items that have none)."""
    for entry in user_properties or ():
        if isinstance(entry, list | tuple) and len(entry) == 2 and entry[0] == PROPERTY:
            try:
                found = json.loads(entry[1])
            except (TypeError, ValueError):
                return None
            return found if isinstance(found, dict) else None
    return None


def case_name(rec: dict[str, Any]) -> str:
    return f"{rec['file']}::{rec['case']}"


def word(rec: dict[str, Any], outcome: str) -> str:
    """What a cell says for one test: an expected error is never a plain pass."""
    if outcome == "passed" and rec.get("expects_error"):
        return EXPECTED_ERROR
    return SHORT.get(outcome, outcome)


def covers(rec: dict[str, Any], outcome: str) -> bool:
    """Whether the test exercised its layout on a device: skips, broken specs and expected
    errors don't."""
    if outcome == "passed" and rec.get("expects_error"):
        return False
    return outcome in RAN and not rec.get("broken")


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


class Matrix:
    """Outcomes gathered per row and device count, from the items' records."""

    def __init__(self) -> None:
        self.cells: dict[Row, dict[tuple[str, int], Counter]] = defaultdict(
            lambda: defaultdict(Counter)
        )
        self.records: list[dict[str, Any]] = []
        self.covered: dict[Row, int] = Counter()
        self.cases: dict[Row, set[str]] = defaultdict(set)
        self.counts: set[int] = set()
        self.engines: set[str] = set()
        self.files: set[str] = set()
        self.tests = 0
        self._unplaced: list[tuple[dict[str, Any], str]] = []
        self._case_rows: dict[str, Counter] = defaultdict(Counter)

    def add(self, rec: dict[str, Any], outcome: str) -> None:
        self.tests += 1
        self.records.append(rec)
        self.counts.add(int(rec["n"]))
        self.engines.add(str(rec["engine"]))
        self.files.add(str(rec["file"]))
        row = Row(*map(str, rec["row"]))
        if row.evenness == "?":  # skipped or broken at this n: filed under the case's usual row
            self._unplaced.append((rec, outcome))
            return
        self._case_rows[case_name(rec)][row] += 1
        self._put(row, rec, outcome)

    def _put(self, row: Row, rec: dict[str, Any], outcome: str) -> None:
        self.cells[row][(str(rec["engine"]), int(rec["n"]))][word(rec, outcome)] += 1
        self.cases[row].add(case_name(rec))
        if covers(rec, outcome):
            self.covered[row] += 1

    def _place_rest(self) -> None:
        for rec, outcome in self._unplaced:
            usual = self._case_rows.get(case_name(rec))
            row = usual.most_common(1)[0][0] if usual else Row(*map(str, rec["row"]))
            self._put(row, rec, outcome)
        self._unplaced.clear()

    def _cell(self, row: Row, column: tuple[str, int]) -> str:
        found = self.cells[row].get(column)
        return " ".join(f"{k} {v}" for k, v in sorted(found.items())) if found else "-"

    def header(self) -> list[tuple[str, str]]:
        return [
            ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
            ("torch", version("torch")),
            ("torch_xla", version("torch_xla")),
            ("device counts", ", ".join(map(str, sorted(self.counts))) or "none"),
            ("engines", ", ".join(sorted(self.engines)) or "none"),
            (
                "tests",
                f"{self.tests} from {sum(len(c) for c in self._all_cases().values())} case(s) "
                f"in {len(self.files)} file(s)",
            ),
        ]

    def _all_cases(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = defaultdict(set)
        for names in self.cases.values():
            for name in names:
                file, _, case = name.partition("::")
                found[file].add(case)
        for rec, _ in self._unplaced:
            found[rec["file"]].add(rec["case"])
        return found

    def tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        self._place_rest()
        # A column per engine and device count (one engine: per device count, as before).
        columns = [(e, n) for e in sorted(self.engines) for n in sorted(self.counts)]
        several = len(self.engines) > 1

        def head(column: tuple[str, int]) -> str:
            return f"{column[0]} n={column[1]}" if several else f"n={column[1]}"

        rows = sorted(
            self.cells,
            key=lambda r: (
                r.placements == "module",
                r.mesh_rank,
                r.placements,
                r.evenness,
                r.dtype,
            ),
        )
        main = [
            [
                r.placements,
                r.mesh_rank,
                r.evenness,
                r.dtype,
                *(self._cell(r, c) for c in columns),
                ", ".join(sorted(self.cases[r])),
            ]
            for r in rows
        ]
        grid_rows = []
        for rank in MESH_RANKS:
            for evenness in ("even", "uneven"):
                line = [f"{rank}-D mesh, {evenness}"]
                for dtype in DTYPES:
                    hits = sum(
                        self.covered[r]
                        for r in self.cells
                        if r.mesh_rank == str(rank) and r.evenness == evenness and r.dtype == dtype
                    )
                    line.append(str(hits) if hits else "GAP")
                grid_rows.append(line)
        return [
            (
                "Cases by layout",
                [
                    "placements",
                    "mesh rank",
                    "shards",
                    "dtype",
                    *(head(c) for c in columns),
                    "cases",
                ],
                main,
            ),
            (
                "Gaps: tests that ran on a device, per mesh rank and evenness, by dtype "
                "(skips and expected errors don't count)",
                ["layout", *DTYPES],
                grid_rows,
            ),
            *(
                [
                    (
                        "Engines disagree: where the engines' observations of a case differ",
                        ["case [variant] and value: what differs"],
                        [[line] for line in disagreements(self.records)]
                        or [["(the engines agree on every case that ran on several)"]],
                    )
                ]
                if several
                else []
            ),
        ]

    def markdown(self) -> str:
        out = ["# shardspec coverage", ""]
        out += [f"- {name}: {value}" for name, value in self.header()]
        out.append("")
        tables = self.tables()
        legend = ("Legend: what a cell says (followed by its number of tests)", ["word", "meaning"])
        for title, header, rows in [*tables, (*legend, [list(pair) for pair in LEGEND])]:
            out += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += [
                "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows
            ]
            out.append("")
        return "\n".join(out)

    def html(self) -> str:
        out = [
            "<!doctype html><meta charset='utf-8'><title>shardspec coverage</title>",
            "<style>td,th{border:1px solid #999;padding:2px 6px}table{border-collapse:collapse}"
            ".gap{background:#fdd}.fail{background:#f88}</style>",
            "<h1>shardspec coverage</h1>",
            "<ul>",
            *(
                f"<li>{html.escape(name)}: {html.escape(value)}</li>"
                for name, value in self.header()
            ),
            "</ul>",
        ]
        tables = self.tables()
        legend = ("Legend: what a cell says (followed by its number of tests)", ["word", "meaning"])
        for title, header, rows in [*tables, (*legend, [list(pair) for pair in LEGEND])]:
            out.append(
                f"<h2>{html.escape(title)}</h2><table><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                + "</tr>"
            )
            for row in rows:
                cells = []
                for cell in row:
                    failing = any(w in cell.split() for w in ("FAIL", "XPASS", "ERROR"))
                    cls = " class='gap'" if cell == "GAP" else (" class='fail'" if failing else "")
                    cells.append(f"<td{cls}>{html.escape(cell)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</table>")
        return "\n".join(out) + "\n"

    def write(self, path: Path) -> None:
        text = self.html() if path.suffix.lower() in (".html", ".htm") else self.markdown()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
