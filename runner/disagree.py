"""Where engines disagree: the same case at the same n, observed by several engines.

Each item's record carries a small digest of what its engine observed, per value:
placements, each piece's shape and offset, whether the values held (pieces hold their
slices, and the value equals the reference), and the type of an error raised. The report
lines up the digests of one case across engines and lists every difference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from .expand import Variant
from .placements import Placement


def _pieces(shards: Iterable[dict]) -> list[list]:
    return [
        [s["device"], s["shape"], s["offset"]] for s in sorted(shards, key=lambda s: s["device"])
    ]


def _values_ok(view: Mapping[str, Any]) -> bool | None:
    shards = view.get("shards") or []
    ok: bool | None = None
    if shards:
        ok = all(s.get("values_equal") is not False for s in shards)
    ref = view.get("reference")
    if ref is not None:
        held = bool(ref.get("same_shape")) and bool(ref.get("finite"))
        ok = held if ok is None else ok and held
    return ok


def _placements(raw: Any) -> str | None:
    if raw is None:
        return None
    return "[" + ", ".join(str(Placement.from_json(p)) for p in raw) + "]"


def reported_placements(view: Mapping[str, Any], mesh: tuple[int, ...]) -> Any:
    from .check_steps import reported_placements as reported  # the checker's own reading

    return reported(view, mesh)  # type: ignore[arg-type]


def digest(variant: Variant, obs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per value, what an engine observed, in a form that compares across engines."""
    out: dict[str, dict[str, Any]] = {}
    if variant.program is not None:
        for step in obs.get("steps", []):
            if "error" in step:
                out[f"step {step['index']}"] = {"error": step["error"]["type"]}
        for key, view in (obs.get("values") or {}).items():
            plan = variant.program.values.get(key)
            label = plan.label if plan else key
            reported = reported_placements(view, tuple(variant.program.request["mesh"]))
            out[label] = {
                "placements": _placements(reported and [p.as_json() for p in reported]),
                "pieces": _pieces(view.get("shards") or []) or None,
                "values": _values_ok(view),
                "error": (view.get("placements_error") or {}).get("type"),
            }
        return out
    if "error" in obs:
        return {"result": {"error": obs["error"]["type"]}}
    if variant.case.kind == "module":
        for name, param in (obs.get("params") or {}).items():
            if "shards" in param:
                out[name] = {"pieces": _pieces(param["shards"]), "values": _values_ok(param)}
        return out
    out["x"] = {
        "placements": _placements(obs.get("placements")),
        "pieces": _pieces(obs.get("shards") or []),
        "values": _values_ok(obs),
    }
    return out


FIELDS = (
    ("error", "error"),
    ("placements", "placements"),
    ("pieces", "pieces"),
    ("values", "values"),
)


def _show(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if field == "pieces":
        return " ".join(f"{d}:{s}@{o}" for d, s, o in value)
    if field == "values":
        return "hold" if value else "differ"
    if field == "error":
        return f"{value} from .placements"
    return str(value)


def _case_lines(by_engine: Mapping[str, Mapping[str, Any]]) -> list[str]:
    engines = sorted(by_engine)
    out = []
    steps = sorted(
        {v for d in by_engine.values() for v in d if v.startswith("step ")},
        key=lambda v: int(v.split()[1]),
    )
    for step in steps:
        said = [
            f"{e} raised {by_engine[e][step]['error']}" if step in by_engine[e] else f"{e} ran it"
            for e in engines
        ]
        out.append(f"  {step}: {'; '.join(said)}")
    values = sorted({v for d in by_engine.values() for v in d if not v.startswith("step ")})
    for engine in engines:
        alone = [v for v in values if all((v in by_engine[e]) == (e == engine) for e in engines)]
        if alone:
            out.append(f"  observed on {engine} only: {', '.join(alone)}")
    for value in values:
        if not all(value in by_engine[e] for e in engines):
            continue
        parts = []
        for field, words in FIELDS:
            seen = {e: by_engine[e][value].get(field) for e in engines}
            if len({repr(v) for v in seen.values()}) > 1:
                parts.append(
                    f"{words} " + " / ".join(f"{e} {_show(field, seen[e])}" for e in engines)
                )
        if parts:
            out.append(f"  {value}: " + "; ".join(parts))
    return out


def disagreements(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Per case and n where the engines' observations differ: a heading line, then one
    line per step that raised on some engines, per value seen by one engine only, and per
    value whose placements, pieces, values or error differ."""
    groups: dict[tuple, dict[str, Mapping]] = defaultdict(dict)
    for rec in records:
        if rec.get("digest") is None:
            continue
        variant = rec["variant"].split("-", 1)[1] if "-" in rec["variant"] else rec["variant"]
        groups[(rec["file"], rec["case"], variant)][rec["engine"]] = rec["digest"]
    lines = []
    for (file, case, variant), by_engine in sorted(groups.items()):
        if len(by_engine) < 2:
            continue
        found = _case_lines(by_engine)
        if found:
            lines.append(f"{file}::{case}[{variant}]")
            lines.extend(found)
    return lines
