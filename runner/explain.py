"""``shardspec explain``: one case's layout by DTensor's rules, as text and a block picture."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from . import oracle, xla_sharding
from . import placements as placement_parser
from .expand import Variant
from .layers import Layer
from .oracle import ShardLayout
from .placements import Placement
from .program import ValuePlan
from .report import table
from .requires import runs_at
from .spec import Case, SpecFile
from .verdict import verdict

MAX_GRID_COLUMNS = 16
MAX_GRID_ROWS = 32
DIM_NAMES = {1: ("elements",), 2: ("rows", "cols")}


def devices_label(devices: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 6]`` -> ``devices 0-3, 6``."""
    parts: list[str] = []
    run: list[int] = []
    for d in [*sorted(devices), None]:
        if run and (d is None or d != run[-1] + 1):
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
            run = []
        if d is not None:
            run.append(d)
    return ("device " if len(devices) == 1 else "devices ") + ", ".join(parts)


def span(start: int, size: int) -> str:
    return str(start) if size == 1 else f"{start}-{start + size - 1}"


def holds(shard: ShardLayout) -> str:
    """The part of the tensor a shard holds, in words: ``rows 3-5, cols 0-2``."""
    if 0 in shard.shape:
        return "nothing (an empty piece)"
    rank = len(shard.shape)
    names = DIM_NAMES.get(rank) or tuple(f"dim {i}" for i in range(rank))
    return ", ".join(
        f"{named(name, s)} {span(o, s)}"
        for name, o, s in zip(names, shard.offset, shard.shape, strict=True)
    )


def named(name: str, size: int) -> str:
    """``rows`` for several, ``row`` for one."""
    return name[:-1] if size == 1 and name.endswith("s") else name


def grid(shape: Sequence[int], layout: list[ShardLayout]) -> list[str]:
    """A box per distinct block of a 1-D or 2-D tensor, labelled with the devices holding it."""
    rank = len(shape)
    if rank not in (1, 2):
        return []
    blocks: dict[tuple, list[int]] = defaultdict(list)
    for shard in layout:
        if 0 not in shard.shape:
            rows = (shard.offset[0], shard.shape[0]) if rank == 2 else (0, 1)
            cols = (shard.offset[-1], shard.shape[-1])
            blocks[(rows, cols)].append(shard.device)
    row_spans = sorted({r for r, _ in blocks})
    col_spans = sorted({c for _, c in blocks})
    if len(col_spans) > MAX_GRID_COLUMNS or len(row_spans) > MAX_GRID_ROWS:
        return [f"({len(blocks)} blocks: too many to draw; see the table above)"]
    labels = {key: devices_label(devs) for key, devs in blocks.items()}
    col_heads = [(f"{named('cols', c[1])} " if rank == 2 else "") + span(*c) for c in col_spans]
    row_heads = [f"{named('rows', r[1])} {span(*r)}" if rank == 2 else "" for r in row_spans]
    widths = [
        max([len(head)] + [len(labels.get((r, c), "?")) for r in row_spans])
        for c, head in zip(col_spans, col_heads, strict=True)
    ]
    left = max(len(h) for h in row_heads)
    border = " " * left + " +" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [
        " " * left
        + "  "
        + " ".join(h.center(w + 2) for h, w in zip(col_heads, widths, strict=True)).rstrip()
    ]
    for r, head in zip(row_spans, row_heads, strict=True):
        lines.append(border)
        cells = [
            labels.get((r, c), "?").center(w + 2) for c, w in zip(col_spans, widths, strict=True)
        ]
        lines.append(head.rjust(left) + " |" + "|".join(cells) + "|")
    lines.append(border)
    return lines


def placement_words(p: Placement, axis_size: int, rank: int) -> str:
    if p.kind == "shard":
        names = DIM_NAMES.get(rank)
        dim = f"dim {p.dim}" + (f" ({names[p.dim]})" if names else "")
        return f"splits tensor {dim} over this axis's {axis_size} device(s)"
    if p.kind == "replicate":
        return "every device along this axis holds the same data"
    return "partial values, to be summed (torch_xla refuses this placement)"


def pieces(layout: list[ShardLayout]) -> str:
    """``[2, 3] on devices 0-2, [1, 3] on device 3``."""
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for shard in layout:
        by_shape[shard.shape].append(shard.device)
    if len(by_shape) == 1:
        return f"{list(next(iter(by_shape)))} on every device"
    return ", ".join(f"{list(s)} on {devices_label(d)}" for s, d in by_shape.items())


def show(value: object) -> str:
    """A value as it would be written in YAML flow style: ``[fc1.weight, fc1.bias]``."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(show, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def expectations(variant: Variant) -> list[str]:
    out = []
    for e in variant.expects:
        if e.name == "error":
            match = f" matching '{e.value['match']}'" if e.value.get("match") else ""
            out.append(f"  expects torch_xla to raise {e.value.get('type')}{match}")
        else:
            out.append(f"  expect.{e.name}: {show(e.value)}  (line {e.mark.line})")
    return out


def tensor_lines(variant: Variant) -> list[str]:
    d = variant.description
    shape, mesh = d["shape"], d["mesh"]
    places = [placement_parser.parse(p) for p in d["placements"]]
    lines = [f"  input       {shape} {d['dtype']}"]
    axes = ", ".join(f"axis {i} has {size}" for i, size in enumerate(mesh))
    lines.append(f"  mesh        {mesh}: {variant.n} device(s); {axes}")
    for i, p in enumerate(places):
        head = "  placements" if i == 0 else " " * 12
        lines.append(f"{head}  axis {i}: {p!s:<12} {placement_words(p, mesh[i], len(shape))}")
    lines.append(f"  XLA pads each piece to {list(oracle.padded_shape(shape, mesh, places))}")
    if variant.predicted_spec is not None:
        lines.append(f"  XLA sharding (predicted): {variant.predicted_spec}")
    lines.extend(expectations(variant))
    lines.append("")
    rows = [["device", "mesh coord", "piece shape", "offset", "holds"]]
    for s in variant.layout:
        coord = "(" + ", ".join(map(str, s.coord)) + ")"
        rows.append([str(s.device), coord, show(s.shape), show(s.offset), holds(s)])
    lines.extend(table(rows))
    picture = grid(shape, variant.layout)
    if picture:
        what = "vector" if len(shape) == 1 else "table"
        lines += ["", f"  which device holds which block of the {what} (one box per block):"]
        lines += ["  " + line for line in picture]
        empty = [s.device for s in variant.layout if 0 in s.shape]
        if empty:
            verb = "holds" if len(empty) == 1 else "hold"
            lines.append(f"  {devices_label(empty)} {verb} an empty piece (no box)")
    return lines


def module_lines(case: Case, variant: Variant) -> list[str]:
    """The module's parameters with the placements expand resolved for them (no re-matching)."""
    request = variant.request or {}
    mesh = request["mesh"]
    lines = [f"  mesh        {mesh}: {variant.n} device(s)"]
    layers = [(name, Layer.from_json(j)) for name, j in request["layers"]]
    lines.append("  module      " + ", ".join(f"{name}: {layer}" for name, layer in layers))
    rules = case.data.get("shard") or []
    for i, rule in enumerate(rules):
        head = "  shard rules" if i == 0 else " " * 13
        lines.append(f"{head} [{i}] params '{rule['params']}' -> [{', '.join(rule['placements'])}]")
    lines.extend(expectations(variant))
    lines.append("")
    rows = [["parameter", "shape", "rule", "placements", "pieces", "XLA sharding (predicted)"]]
    for name, layer in layers:
        for pname, shape in layer.params.items():
            param = f"{name}.{pname}"
            placed = variant.param_layouts.get(param)
            if placed is None:
                rows.append(
                    [param, str(list(shape)), "-", "none", "not sharded (no rule matches)", ""]
                )
                continue
            rows.append(
                [
                    param,
                    str(list(shape)),
                    f"[{placed.rule}]",
                    f"[{', '.join(map(str, placed.placements))}]",
                    pieces(placed.layout),
                    xla_sharding.predict_or_none(mesh, placed.placements, len(shape)) or "-",
                ]
            )
    lines.extend(table(rows))
    return lines


def _value_line(name: str, plan: ValuePlan, mesh: list[int], pad: str = "    ") -> list[str]:
    """One value: its inferred shape and dtype, its placements and DTensor's pieces."""
    info = plan.info
    if info is None:
        return [f"{pad}{name}: (no value)"]
    shape = "shape unknown" if info.shape is None else f"{list(info.shape)}"
    kind = "DTensor" if info.dtensor else "tensor"
    line = f"{pad}{name}: {kind} {shape} {info.dtype}"
    if plan.asked is not None:
        line += f", placements [{', '.join(map(str, plan.asked))}]"
    if info.requires_grad:
        line += ", requires grad"
    out = [line]
    if plan.layout is not None:
        out.append(f"{pad}  pieces: {pieces(plan.layout)}")
        spec = xla_sharding.predict_or_none(mesh, plan.asked, len(info.shape or ()))
        if spec:
            out.append(f"{pad}  XLA sharding (predicted): {spec}")
    for e in plan.expects:
        out.append(f"{pad}  expect.{e.name}: {show(e.value)}  (line {e.mark.line})")
    return out


def steps_lines(variant: Variant) -> list[str]:
    """A v1.1 case: its inputs, each step with the value it makes, as worked out here."""
    program = variant.program
    assert program is not None
    mesh = program.request["mesh"]
    names = program.request.get("mesh_names")
    axes = ", ".join(
        f"axis {i}{f' ({names[i]})' if names else ''} has {size}" for i, size in enumerate(mesh)
    )
    lines = [f"  mesh        {mesh}: {variant.n} device(s); {axes}", "", "  inputs:"]
    values = program.values
    for spec in program.request["tensors"]:
        lines += _value_line(spec["name"], values[spec["name"]], mesh)
    params = [k for k, v in values.items() if k.startswith("model.") and v.made_by is None]
    if params:
        lines += ["", "  module parameters (each shard rule's placements; no rule: not placed):"]
        for key in params:
            lines += _value_line(key, values[key], mesh)
    lines += ["", "  steps:"]
    by_step: dict[int, list[str]] = defaultdict(list)
    for key, plan in values.items():
        if plan.made_by is not None:
            by_step[plan.made_by].append(key)
    for step in program.steps:
        lines.append(f"   {step.index}. {step.text}  (line {step.mark.line})")
        if step.error is not None:
            match = (
                f" matching /{step.error.value['match']}/" if step.error.value.get("match") else ""
            )
            lines.append(
                f"      must raise {step.error.value['type']}{match}; the steps after it don't run"
            )
        for key in by_step.get(step.index, []):
            plan = values[key]
            label = (
                "its result, read right after it"
                if key.startswith("@")
                else plan.label
                if plan.name is None
                else key
            )
            lines += _value_line(label, values[key], mesh, pad="       ")
    if program.engines is not None:
        lines += [
            "",
            f"  runs on engine {', '.join(sorted(program.engines))} only ({program.xla_only_call}())",
        ]
    lines += [
        "",
        "  every value is also compared with the reference engine (the same steps on plain CPU",
        "  tensors), and every distributed value's pieces with DTensor's layout",
    ]
    return lines


def explain(spec: SpecFile, case: Case, variants: list[Variant]) -> tuple[str, bool]:
    """The text for one case at one n, and whether a layout could be shown."""
    variant = variants[0]
    n = variant.n
    lines = [f"{spec.path}::{case.id} at n={n}: DTensor's layout (worked out here; nothing runs)"]
    if isinstance(case.data.get("description"), str):
        lines.append("  " + " ".join(case.data["description"].split()))
    found = verdict(variant, spec.problems)
    if found.kind == "error":
        if found.file_broken:
            lines.append(f"  note: the file has problems; see `shardspec validate {spec.path}`")
        lines += ["", "this case has problems; fix them first:"]
        lines += [f"  {p}" for p in dict.fromkeys(found.problems)]
        return "\n".join(lines), False
    if variant.skip:
        others = ", ".join(map(str, runs_at(case))) or "none up to 16"
        lines.append(f"  skipped at n={n}: {variant.skip}; it runs at n={others}")
        return "\n".join(lines), False
    if found.kind == "skip":
        lines.append(f"  note: the case is skipped (skip: {found.reason})")
    if found.xfail is not None:
        checks = f"; checks {', '.join(found.xfail.checks)}" if found.xfail.checks else ""
        lines.append(f"  note: expected to fail on XLA (xfail: {found.xfail.reason}{checks})")
    if variant.program is not None:
        body = steps_lines(variant)
    elif case.kind == "module":
        body = module_lines(case, variant)
    else:
        body = tensor_lines(variant)
    return "\n".join(lines + body), True
