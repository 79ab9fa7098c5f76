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
    return "[" + ", ".join(":".join(str(x) for x in p) for p in raw) + "]"


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
            out[label] = {
                "placements": _placements(view.get("placements")),
                "pieces": _pieces(view.get("shards") or []),
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
    ("error", "error type"),
    ("placements", "placements"),
    ("pieces", "piece shapes and offsets"),
    ("values", "values"),
)


def _show(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if field == "pieces":
        return "; ".join(f"{d}:{s}@{o}" for d, s, o in value) or "-"
    if field == "values":
        return "hold" if value else "differ"
    return str(value)


def disagreements(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per case, n and value where the engines' observations differ."""
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
        engines = sorted(by_engine)
        values = sorted({v for d in by_engine.values() for v in d})
        for value in values:
            for field, words in FIELDS:
                seen = {e: (by_engine[e].get(value) or {}).get(field) for e in engines}
                if field == "error" and not any(seen.values()):
                    continue
                if len({repr(v) for v in seen.values()}) > 1:
                    shown = "; ".join(f"{e}: {_show(field, seen[e])}" for e in engines)
                    lines.append(f"{file}::{case}[{variant}] {value}: {words} differ ({shown})")
    return lines
