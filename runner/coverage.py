"""The coverage matrix: which layouts the specs exercise, and how they fared per device count.

Rows are placement combination x mesh rank x even/uneven x dtype, columns are device
counts; a grid of mesh rank x evenness against dtype shows the gaps at a glance.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .expand import Variant

DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "bool")
MESH_RANKS = (1, 2, 3)
SHORT = {
    "passed": "pass",
    "failed": "FAIL",
    "skipped": "skip",
    "xfailed": "xfail",
    "xpassed": "XPASS",
}


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
    dtype = d.get("dtype") or (variant.case.data.get("input") or {}).get("dtype", "float32")
    return Row(
        ", ".join(map(str, places)) if isinstance(places, list) else "?", rank, even, str(dtype)
    )


class Matrix:
    """Outcomes gathered per row and device count."""

    def __init__(self) -> None:
        self.cells: dict[Row, dict[int, Counter]] = defaultdict(lambda: defaultdict(Counter))
        self.counts: set[int] = set()
        self._unplaced: list[tuple[Variant, str]] = []
        self._case_rows: dict[tuple[str, str], Counter] = defaultdict(Counter)

    def add(self, variant: Variant, outcome: str) -> None:
        self.counts.add(variant.n)
        row = row_of(variant)
        if row.evenness == "?":  # skipped or broken at this n: filed under the case's usual row
            self._unplaced.append((variant, outcome))
            return
        self._case_rows[(variant.case.doc.path, variant.case.id)][row] += 1
        self.cells[row][variant.n][SHORT.get(outcome, outcome)] += 1

    def _place_rest(self) -> None:
        for variant, outcome in self._unplaced:
            usual = self._case_rows.get((variant.case.doc.path, variant.case.id))
            row = usual.most_common(1)[0][0] if usual else row_of(variant)
            self.cells[row][variant.n][SHORT.get(outcome, outcome)] += 1
        self._unplaced.clear()

    def _cell(self, row: Row, n: int) -> str:
        found = self.cells[row].get(n)
        return " ".join(f"{k} {v}" for k, v in sorted(found.items())) if found else "-"

    def tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        self._place_rest()
        counts = sorted(self.counts)
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
            [r.placements, r.mesh_rank, r.evenness, r.dtype, *(self._cell(r, n) for n in counts)]
            for r in rows
        ]
        grid_rows = []
        for rank in MESH_RANKS:
            for evenness in ("even", "uneven"):
                line = [f"{rank}-D mesh, {evenness}"]
                for dtype in DTYPES:
                    hits = sum(
                        sum(sum(c.values()) for c in self.cells[r].values())
                        for r in self.cells
                        if r.mesh_rank == str(rank) and r.evenness == evenness and r.dtype == dtype
                    )
                    line.append(str(hits) if hits else "GAP")
                grid_rows.append(line)
        return [
            (
                "Cases by layout",
                ["placements", "mesh rank", "shards", "dtype", *(f"n={n}" for n in counts)],
                main,
            ),
            ("Gaps: tests per mesh rank and evenness, by dtype", ["layout", *DTYPES], grid_rows),
        ]

    def markdown(self) -> str:
        out = ["# shardspec coverage", ""]
        for title, header, rows in self.tables():
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
        ]
        for title, header, rows in self.tables():
            out.append(
                f"<h2>{html.escape(title)}</h2><table><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                + "</tr>"
            )
            for row in rows:
                cells = []
                for cell in row:
                    cls = (
                        " class='gap'"
                        if cell == "GAP"
                        else (" class='fail'" if "FAIL" in cell or "XPASS" in cell else "")
                    )
                    cells.append(f"<td{cls}>{html.escape(cell)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</table>")
        return "\n".join(out) + "\n"

    def write(self, path: Path) -> None:
        text = self.html() if path.suffix.lower() in (".html", ".htm") else self.markdown()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
