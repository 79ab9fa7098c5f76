"""``shardspec fill``: write the oracle's global_shape and local_shape into tensor cases.

The file is edited as text, a few inserted lines (or keys inside an ``expect: {...}``)
at places found from the loader's line marks; everything else stays byte for byte,
comments and layout included. The result is loaded again and must equal the old data
plus the new keys, or the file is left alone.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .expand import Variant, expand
from .placements import Placement
from .problems import SpecError
from .program import is_steps_case
from .spec import Case, read
from .yamlload import Document, load_text

_PLAIN = re.compile(r"[A-Za-z0-9(][A-Za-z0-9+\-*/%() ]*")


@dataclass
class FillResult:
    """What fill did (or would do) to one file."""

    lines: list[str] = field(default_factory=list)
    changed: int = 0
    errors: int = 0


def flow(values: Any) -> str:
    """A value in YAML flow style: ``[3*n, 3]``, ``{4: "{replicated}"}``, nested maps."""
    if isinstance(values, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in values.items()) + "}"
    if isinstance(values, list):
        return "[" + ", ".join(flow(v) for v in values) + "]"
    if isinstance(values, bool):
        return "true" if values else "false"
    return (
        str(values)
        if not isinstance(values, str) or _PLAIN.fullmatch(values)
        else json.dumps(values)
    )


class Broken(Exception):
    """A case that can't be filled until its problems are fixed."""


def shapes_for(
    case: Case, counts: tuple[int, ...], sharding_spec: bool = False
) -> tuple[dict[str, Any], str | None]:
    """The keys to add (in order) and, when one can't be added, why; raises Broken.

    With ``sharding_spec``, also torch_xla's sharding string as predicted for DTensor's
    layout, as a map by n (the device ids are in the string, so it changes with n).
    """
    expect = case.data.get("expect") or {}
    if case.problems:
        raise Broken("not filled: it has problems; run `shardspec validate` first")
    if case.kind != "tensor" or "error" in expect or is_steps_case(case.data):
        return {}, None  # module and step cases (v1.1) are filled from an engine's run
    keys = (
        ("global_shape", "local_shape", "sharding_spec")
        if sharding_spec
        else ("global_shape", "local_shape")
    )
    wanted = [k for k in keys if k not in expect]
    if "local_shapes" in expect and "local_shape" in wanted:
        wanted.remove("local_shape")
    if not wanted:
        return {}, None
    runs: list[tuple[int, list[int], list[int]]] = []  # (n, input shape, device 0's piece)
    specs: dict[str, str | None] = {}  # n -> torch_xla's predicted sharding string
    for n in counts:
        try:
            variant = expand(case, "xla", n)[0]
        except Exception as exc:
            raise Broken(
                f"not filled: shardspec could not expand it ({exc}); please report it"
            ) from exc
        if variant.problems:
            raise Broken(f"not filled: it has problems at n={n}; run `shardspec validate` first")
        if not variant.skip:
            runs.append((n, variant.description["shape"], list(variant.layout[0].shape)))
            specs[str(n)] = variant.predicted_spec
    if not runs:
        return {}, f"not filled: it runs at none of n={', '.join(map(str, counts))}"
    raw = list(case.data["input"]["shape"])
    out: dict[str, Any] = {}
    note = None
    if "global_shape" in wanted:
        out["global_shape"] = raw  # the input's shape, as written: right at every n
    if "local_shape" in wanted:
        local: list[Any] = []
        for d, written in enumerate(raw):
            sizes = {piece[d] for _, _, piece in runs}
            if len(sizes) == 1:
                local.append(sizes.pop())
            elif all(piece[d] == shape[d] for _, shape, piece in runs):
                local.append(written)  # this dim is not split: the input's own size
            else:
                local = []
                break
        if local:
            out["local_shape"] = local
        else:
            seen = "; ".join(f"n={n}: {piece}" for n, _, piece in runs)
            note = (
                f"local_shape left out: device 0's piece is not the same at every n ({seen}); "
                "every device's piece is checked against DTensor's rules anyway"
            )
    if "sharding_spec" in wanted and all(specs.values()):
        out["sharding_spec"] = specs  # a map by n: the string names the devices
    return out, note


def _insertion(
    doc: Document, text_lines: list[str], case: Case, keys: dict[str, Any], nl: str
) -> tuple[int, int, str] | None:
    """(line index, column, text) to insert, or None when the case's layout is unusual."""
    own = ("cases", case.index)
    entries = [f"{k}: {flow(v)}" for k, v in keys.items()]
    mark = doc.mark(own)
    if doc.has((*own, "expect")):
        at = doc.mark((*own, "expect"))
        line = text_lines[at.line - 1]
        if line[at.col - 1 : at.col] == "{":  # expect: {...}
            raw = doc.data["cases"][case.index]["expect"]
            tail = ", " if raw else ""
            return at.line - 1, at.col, ", ".join(entries) + tail
        indent = " " * (at.col - 1)
        return at.line - 1, 0, "".join(f"{indent}{e}{nl}" for e in entries)
    if text_lines[mark.line - 1][mark.col - 1 : mark.col] == "{":
        return None  # the whole case is one flow map
    # No expect yet: a new block after the case's last line of content.
    after = [doc.mark(("cases", j)).line for j in range(case.index + 1, len(doc.data["cases"]))] + [
        doc.key_mark((k,)).line for k in doc.data
    ]
    end = min([line for line in after if line > mark.line], default=len(text_lines) + 1) - 1
    last = end - 1
    while last >= mark.line and (
        text_lines[last].strip() in ("", "-") or text_lines[last].lstrip().startswith("#")
    ):
        last -= 1
    indent = " " * (mark.col - 1)
    block = f"{indent}expect:{nl}" + "".join(f"{indent}  {e}{nl}" for e in entries)
    lead = "" if text_lines[last].endswith(("\n", "\r")) else nl
    return last + 1, 0, lead + block


Observe = Callable[[Variant], dict[str, Any]]


def values_for(
    case: Case, counts: tuple[int, ...], engine: str, observe: Observe
) -> tuple[dict[str, Any], str | None]:
    """For a step case: each value the case does not expect yet, with the ``shape``,
    ``placements`` and ``local_shape`` an engine observed (a map by n where they change
    with n). Raises Broken for a case with problems."""
    if case.problems:
        raise Broken("not filled: it has problems; run `shardspec validate` first")
    expect = case.data.get("expect") or {}
    seen: dict[str, dict[str, dict[str, Any]]] = {}  # value -> key -> n -> observed
    ran = []
    for n in counts:
        variant = expand(case, engine, n)[0]
        if variant.problems:
            raise Broken(f"not filled: it has problems at n={n}; run `shardspec validate` first")
        if variant.skip or variant.program is None:
            continue
        obs = observe(variant)
        ran.append(n)
        for key, view in (obs.get("values") or {}).items():
            plan = variant.program.values.get(key)
            if plan is None or plan.name is None or plan.name in expect or "shape" not in view:
                continue
            found = seen.setdefault(plan.name, {})
            found.setdefault("shape", {})[str(n)] = view["shape"]
            if "placements" in view:
                shown = [str(Placement.from_json(p)) for p in view["placements"]]
                found.setdefault("placements", {})[str(n)] = shown
            if view.get("shards"):
                piece = min(view["shards"], key=lambda s: s["device"])["shape"]
                found.setdefault("local_shape", {})[str(n)] = piece
    if not ran:
        return (
            {},
            f"not filled: it runs on engine {engine} at none of n={', '.join(map(str, counts))}",
        )
    out: dict[str, Any] = {}
    notes = []
    for name, found in seen.items():
        entry: dict[str, Any] = {}
        for key, by_n in found.items():
            if len(by_n) != len(ran):
                continue  # not observed at every n (a step raised somewhere): left out
            values = list(by_n.values())
            if all(v == values[0] for v in values):
                entry[key] = values[0]
            elif key == "placements":
                notes.append(f"{name}'s placements change with n, left out")
            else:
                entry[key] = by_n
        if entry:
            out[name] = entry
    return out, "; ".join(notes) or None


def fill_file(
    path: Path,
    shown: str,
    counts: tuple[int, ...],
    *,
    write: bool,
    sharding_spec: bool = False,
    engine: str | None = None,
    observe: Observe | None = None,
) -> FillResult:
    """Fill one file (or, with ``write=False``, say what would change)."""
    result = FillResult()
    spec = read(path, shown)
    if spec.problems or spec.doc is None:
        result.lines += [str(p) for p in spec.problems]
        result.lines.append(
            f"{shown}: not filled: the file has problems; run `shardspec validate {shown}`"
        )
        result.errors += 1
        return result
    doc = spec.doc
    text = path.read_bytes().decode("utf-8")
    nl = "\r\n" if "\r\n" in text else "\n"
    text_lines = text.splitlines(keepends=True)
    inserts: list[tuple[int, int, str]] = []
    expected = copy.deepcopy(doc.data)
    verb = "added" if write else "would add"
    for case in spec.cases:
        where = f"{shown}:{case.mark.line}:{case.mark.col}: {case.id}"
        try:
            if observe is not None and engine is not None and is_steps_case(case.data):
                keys, note = values_for(case, counts, engine, observe)
            else:
                keys, note = shapes_for(case, counts, sharding_spec)
        except Broken as exc:
            result.lines.append(f"{where}: {exc}")
            result.errors += 1
            continue
        if note and write:  # --check only says what would change
            result.lines.append(f"{where}: {note}")
        if not keys:
            continue
        insert = _insertion(doc, text_lines, case, keys, nl)
        added = ", ".join(f"{k}: {flow(v)}" for k, v in keys.items())
        if insert is None:
            result.lines.append(
                f"{where}: the case is written on one line; add by hand: expect: {{{added}}}"
            )
            continue
        inserts.append(insert)
        raw = expected["cases"][case.index]
        raw["expect"] = {**keys, **(raw.get("expect") or {})}
        result.lines.append(f"{where}: {verb} {added}")
        result.changed += 1
    if not inserts:
        return result
    starts = [0]
    for line in text_lines:
        starts.append(starts[-1] + len(line))
    new = text
    for line, col, piece in sorted(inserts, reverse=True):
        offset = starts[line] + col
        new = new[:offset] + piece + new[offset:]
    try:
        ok = load_text(new, shown).data == expected
    except SpecError:
        ok = False
    if not ok:
        result.lines.append(
            f"{shown}: not changed: the edit could not be made safely in this file's layout; "
            "add the shapes above by hand"
        )
        result.errors += 1
        result.changed = 0
        return result
    if write:
        path.write_bytes(new.encode("utf-8"))
    return result
