"""The checker for v1.1 cases: every value an engine observed, against the spec, DTensor's
layout and the reference engine.

Per value (DESIGN.md settled points 13 and 14): ``placements`` (those asked for, where the
case asked), ``shards`` (each piece's shape and offset for those placements, or for the
reported ones of an op result), ``values`` (each piece holds its slice), ``reference`` (the
value equals the reference engine's), and every declared expectation as ``expect.KEY``.
A step that raises without ``error:`` fails ``step_error``; what it would have made is
"not made".
"""

from __future__ import annotations

import re
from typing import Any

from . import oracle, xla_sharding
from .check import XLA_ONLY, Failure, _check_shards, _spec_matches, _spec_wanted
from .expand import Variant
from .placements import Placement
from .placements import parse as parse_placement
from .program import ValuePlan
from .protocol import ErrorInfo, StepsObservation, ValueObservation

REFERENCE_ERROR = "reference_error"  # never an expected failure: the spec is wrong


def _placement_of(raw: list | str) -> Placement:
    if isinstance(raw, str):
        return parse_placement(raw)
    return Placement.from_json(raw)


def _shown(places: list | tuple | None) -> str:
    if places is None:
        return "(none)"
    return (
        "[" + ", ".join(str(_placement_of(p) if isinstance(p, list) else p) for p in places) + "]"
    )


def sharding_type(spec: str) -> str:
    """XLA's sharding type read off its string (settled point 9)."""
    if not spec:
        return "none"
    if spec == xla_sharding.REPLICATED:
        return "replicated"
    if spec.startswith("{maximal"):
        return "maximal"
    if spec.startswith("{manual"):
        return "manual"
    if "last_tile_dim_replicate" in spec:
        return "partial"
    return "tiled"


def reported_placements(
    obs: ValueObservation, mesh: tuple[int, ...], asked: tuple[Placement, ...] | None = None
) -> tuple[Placement, ...] | None:
    """The placements an engine reports: the object's own, else derived from XLA's string
    (where several fit the string, the ones asked for)."""
    if "placements" in obs:
        return tuple(_placement_of(p) for p in obs["placements"])
    spec = obs.get("sharding_spec")
    if spec and "shape" in obs:
        return xla_sharding.placements_from_spec(spec, mesh, len(obs["shape"]), prefer=asked)
    return None


def _error_text(err: ErrorInfo) -> str:
    return f"{err['type']}: {err['message'][:300]}"


def check_steps(variant: Variant, obs: StepsObservation) -> list[Failure]:
    plan = variant.program
    assert plan is not None
    failures: list[Failure] = []
    if "reference_error" in obs:
        raised = obs["reference_error"]
        step = next(s for s in plan.steps if s.index == raised["index"])
        return [
            Failure(
                REFERENCE_ERROR,
                f"step {step.index} raises on the reference engine (plain tensors on the CPU), "
                "so the spec itself is wrong",
                step.mark,
                "the step runs",
                _error_text(raised["error"]),
                note="fix the step, or give it error: if raising is the point",
            )
        ]
    outcomes = {o["index"]: o for o in obs.get("steps", [])}
    failed_step = None
    for step in plan.steps:
        outcome = outcomes.get(step.index)
        if outcome is None:
            break
        raised = outcome.get("error")
        if step.error is not None:
            failures.extend(_step_error(step, raised))
        elif raised is not None:
            failed_step = step
            failures.append(
                Failure(
                    "step_error",
                    f"step {step.index} raised: {step.text}",
                    step.mark,
                    "no error",
                    _error_text(raised),
                    note="the values it and later steps make were not checked; add "
                    "error: {type: ...} to the step if this error is what should happen",
                )
            )
    mesh = tuple(plan.request["mesh"])
    values = obs.get("values", {})
    before = len(variant.unchecked)
    for key, value in plan.values.items():
        seen = values.get(key)
        if seen is None:
            if value.expects or failed_step is None:
                why = f"step {failed_step.index} raised" if failed_step else "it was not made"
                variant.unchecked.append(f"{value.label}: not checked ({why})")
            continue
        # The reference ran every step; this engine stopped at the failed one. A value read
        # at the end (a parameter sgd_step would have changed, a gradient) is not the one
        # the reference computed: its reference checks are not made (settled point 14).
        stale = f"step {failed_step.index} raised" if failed_step and value.step is None else ""
        failures.extend(_check_value(variant, value, seen, mesh, values, stale))
    variant.unchecked[before:] = _grouped(variant.unchecked[before:])
    return failures


def _grouped(notes: list[str]) -> list[str]:
    """``y: shards (...)``, ``z: shards (...)`` -> ``y, z: shards (...)``: one line per reason."""
    by_reason: dict[str, list[str]] = {}
    for note in notes:
        label, _, reason = note.partition(": ")
        by_reason.setdefault(reason, []).append(label)
    return [f"{', '.join(labels)}: {reason}" for reason, labels in by_reason.items()]


def _step_error(step: Any, raised: ErrorInfo | None) -> list[Failure]:
    want = step.error.value
    want_text = want["type"] + (f" matching /{want['match']}/" if want.get("match") else "")
    if raised is None:
        return [
            Failure(
                "expect.error",
                f"step {step.index} should raise: {step.text}",
                step.error.mark,
                want_text,
                "it ran without an error",
            )
        ]
    if want["type"] not in raised["bases"]:
        return [
            Failure(
                "expect.error",
                f"step {step.index} raised another error: {step.text}",
                step.error.mark,
                want_text,
                _error_text(raised),
            )
        ]
    if want.get("match") and not re.search(want["match"], raised["message"]):
        return [
            Failure(
                "expect.error",
                f"step {step.index}'s error says something else: {step.text}",
                step.error.mark,
                want_text,
                _error_text(raised),
            )
        ]
    return []


def _check_value(
    variant: Variant,
    plan: ValuePlan,
    obs: ValueObservation,
    mesh: tuple[int, ...],
    values: dict[str, ValueObservation],
    stale: str = "",
) -> list[Failure]:
    on = variant.checks
    label = plan.label
    out: list[Failure] = []
    if "missing" in obs:
        declared = plan.expects[0] if plan.expects else None
        if declared is not None:
            out.append(
                Failure(
                    f"expect.{declared.name}",
                    f"{label} does not exist",
                    declared.mark,
                    "a value",
                    obs["missing"],
                )
            )
        elif on.get("reference", True):
            variant.unchecked.append(f"{label}: {obs['missing']}")
        return out
    declared = plan.expect("placements")
    wanted = plan.asked
    if wanted is None and declared is not None:
        wanted = tuple(_placement_of(p) for p in declared.value)
    reported = reported_placements(obs, mesh, wanted)
    shape = obs.get("shape")
    # Which placements the pieces are checked against (settled point 13).
    against = plan.asked if plan.asked is not None else reported
    if on.get("placements", True) and plan.asked is not None:
        if "placements_error" in obs:
            out.append(
                Failure(
                    "placements",
                    f"{label}.placements raised",
                    plan.mark,
                    _shown(plan.asked),
                    _error_text(obs["placements_error"]),
                )
            )
        elif reported is not None and tuple(reported) != tuple(plan.asked):
            out.append(
                Failure(
                    "placements",
                    f"{label}'s placements",
                    plan.mark,
                    _shown(plan.asked),
                    _shown(reported),
                    note="DTensor keeps the placements it was asked for",
                )
            )
    if "placements_error" in obs and plan.asked is None:
        variant.unchecked.append(f"{label}: shards (.placements raised)")
    shards = sorted(obs.get("shards") or [], key=lambda s: s["device"])
    if on.get("shards", True) and shards and against is not None and shape is not None:
        layout = oracle.layout(shape, mesh, against)
        out.extend(_check_shards(layout, shards, plan.mark, f"{label}'s pieces"))
    if on.get("values", True) and shards:
        bad = [str(s["device"]) for s in shards if not s["values_equal"]]
        if bad:
            out.append(
                Failure(
                    "values",
                    f"{label}'s piece values",
                    plan.mark,
                    "each piece equals the slice of the value it claims",
                    f"devices {', '.join(bad)} hold other values",
                )
            )
    ref = obs.get("reference")
    declared_values = plan.expect("values")
    if stale and ref is not None:
        variant.unchecked.append(
            f"{label}: reference ({stale}, so the value is not the one the reference computed)"
        )
    elif on.get("reference", True) and ref is not None and declared_values is None:
        out.extend(_reference(plan, ref, "reference", plan.mark))
    elif on.get("reference", True) and ref is None and declared_values is None:
        variant.unchecked.append(
            f"{label}: reference (the reference engine has no value for it: a to_local of "
            "untracked placements, or a gradient through to_local/from_local, which every "
            "device adds its own share to)"
        )
    for declared in plan.expects:
        if stale and declared.name == "values" and ref is not None:
            continue  # listed above: compared with a reference that ran further
        if variant.engine != "xla" and declared.name in XLA_ONLY:
            variant.unchecked.append(
                f"{label}: expect.{declared.name} (XLA only; not made on {variant.engine})"
            )
            continue
        out.extend(_declared(plan, declared, obs, reported, ref))
    return out


def _reference(plan: ValuePlan, ref: dict, check: str, mark: Any) -> list[Failure]:
    if not ref["same_shape"]:
        return [
            Failure(
                check, f"{plan.label} against the reference", mark, ref["shape"], "another shape"
            )
        ]
    if not ref["finite"] or ref["max_excess"] > plan.atol:
        return [
            Failure(
                check,
                f"{plan.label} against the reference (the same steps on CPU tensors)",
                mark,
                f"|value - reference| <= atol + rtol*|reference| (atol={plan.atol:g}, "
                f"rtol={plan.rtol:g})",
                f"max |value - reference| = {ref['max_abs_error']:.3g}"
                + ("" if ref["finite"] else " (non-finite values)"),
            )
        ]
    return []


def _declared(
    plan: ValuePlan,
    declared: Any,
    obs: ValueObservation,
    reported: tuple[Placement, ...] | None,
    ref: dict | None,
) -> list[Failure]:
    name, want, mark = declared.name, declared.value, declared.mark
    check = f"expect.{name}"
    title = f"{plan.label}: expect.{name}"
    shards = sorted(obs.get("shards") or [], key=lambda s: s["device"])
    if name == "values":
        if isinstance(want, dict) and "equals" in want:
            same = (obs.get("equals") or {}).get(want["equals"])
            if same:
                return []
            return [Failure(check, title, mark, f"exactly equal to {want['equals']}", "different")]
        if ref is None:
            return [Failure(check, title, mark, "a reference value", "the reference has none")]
        return _reference(plan, ref, check, mark)
    if name == "instance_of":
        ok = want in obs.get("mro", [])
        return [] if ok else [Failure(check, title, mark, f"a {want}", obs.get("type"))]
    if name == "placements":
        want_p = tuple(_placement_of(p) for p in want)
        if "placements_error" in obs:
            return [
                Failure(check, title, mark, _shown(want_p), _error_text(obs["placements_error"]))
            ]
        if reported is None or tuple(reported) != want_p:
            return [Failure(check, title, mark, _shown(want_p), _shown(reported))]
        return []
    if name == "sharding_spec":
        actual = obs.get("sharding_spec")
        if actual is None:
            return [Failure(check, title, mark, _spec_wanted(want), "(no XLA sharding here)")]
        return (
            []
            if _spec_matches(actual, want)
            else [Failure(check, title, mark, _spec_wanted(want), actual or "(none)")]
        )
    if name == "sharding_type":
        actual = sharding_type(obs.get("sharding_spec") or "")
        return [] if actual == want else [Failure(check, title, mark, want, actual)]
    actual: Any
    if name == "local_shape":
        actual = shards[0]["shape"] if shards else obs.get("shape")
    elif name == "local_shapes":
        actual = [s["shape"] for s in shards] if shards else None
    elif name == "padded_local_shape":
        actual = shards[0]["padded_shape"] if shards else None
    else:  # shape, dtype, type, requires_grad, is_leaf
        actual = obs.get(name)
    if actual != want:
        table = []
        if name in ("local_shape", "local_shapes") and shards:
            table = [
                ["device", "piece shape", "offset"],
                *[[str(s["device"]), str(s["shape"]), str(s["offset"])] for s in shards],
            ]
        return [Failure(check, title, mark, want, actual, table=table)]
    return []
