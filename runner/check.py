"""The checker: judges an engine's observation against the spec and the oracle.

Every failure names its check (DESIGN.md settled point 14): a default check such as
``shards`` or ``sharding_spec``, ``expect.KEY`` for a declared expectation, or
``step_error`` for a call that raised when no error was expected. ``xfail.checks``
names these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .expand import Variant
from .oracle import ShardLayout
from .placements import Placement
from .problems import Mark
from .protocol import ErrorInfo, ModuleObservation, Observation, TensorObservation
from .xla_sharding import REPLICATED


@dataclass
class Failure:
    """One expectation that did not hold, with where it was written."""

    check: str  # the check's name, as xfail.checks and checks: name it
    title: str
    mark: Mark
    expected: Any = None
    actual: Any = None
    note: str = ""
    table: list[list[str]] = field(default_factory=list)


def check(variant: Variant, obs: Observation) -> list[Failure]:
    if variant.program is not None:
        from .check_steps import check_steps  # it builds on this module's helpers

        return check_steps(variant, obs)  # type: ignore[arg-type]
    if variant.case.kind == "module":
        return _check_module(variant, obs)  # type: ignore[arg-type]
    return _check_tensor(variant, obs)  # type: ignore[arg-type]


def failed_checks(failures: list[Failure]) -> list[str]:
    """The names of the checks that failed, each once, in order."""
    return list(dict.fromkeys(f.check for f in failures))


def _error_text(err: ErrorInfo) -> str:
    return f"{err['type']}: {err['message']}"


def _check_error(variant: Variant, obs: Observation, call: str) -> list[Failure] | None:
    """Failures about errors, or None when neither raised nor expected."""
    expected = variant.expect("error")
    raised = obs.get("error")
    if expected is None and raised is None:
        return None
    if expected is None:
        return [
            Failure(
                "step_error",
                f"{call} raised an error",
                variant.case.mark,
                "no error",
                _error_text(raised),
                note="add expect.error if this error is what should happen",
            )
        ]
    want = expected.value
    want_text = want["type"] + (f" matching /{want['match']}/" if want.get("match") else "")
    if raised is None:
        return [
            Failure(
                "expect.error",
                "expect.error",
                expected.mark,
                want_text,
                f"{call} succeeded without an error",
            )
        ]
    failures = []
    if want["type"] not in raised["bases"] and want["type"] != raised["type"]:
        failures.append(
            Failure(
                "expect.error",
                "expect.error.type",
                expected.mark,
                want["type"],
                _error_text(raised),
            )
        )
    elif want.get("match") and not re.search(want["match"], raised["message"]):
        failures.append(
            Failure(
                "expect.error",
                "expect.error.match",
                expected.mark,
                f"/{want['match']}/",
                _error_text(raised),
            )
        )
    return failures


def _spec_matches(actual: str, want: Any) -> bool:
    if isinstance(want, dict):
        return all(text in actual for text in want["contains"])
    return actual == want


def _spec_wanted(want: Any) -> str:
    if isinstance(want, dict):
        return "a spec containing " + " and ".join(repr(t) for t in want["contains"])
    return want


def _check_tensor(variant: Variant, obs: TensorObservation) -> list[Failure]:
    errors = _check_error(variant, obs, "distribute_tensor")
    if errors is not None:
        return errors
    req = variant.request or {}
    case = variant.case
    on = variant.checks
    failures: list[Failure] = []

    def expect_mark(name: str, fallback: tuple) -> Mark:
        declared = variant.expect(name)
        return declared.mark if declared else case.locate(fallback)

    want_type = RESULT_TYPE.get(variant.engine, "DTensor")
    if on["type"] and obs["type"] != want_type:
        failures.append(Failure("type", "result type", case.mark, want_type, obs["type"]))
    if on["global_shape"] and obs["global_shape"] != req["shape"]:
        failures.append(
            Failure(
                "global_shape",
                "global shape",
                expect_mark("global_shape", ("input", "shape")),
                req["shape"],
                obs["global_shape"],
            )
        )
    shards = sorted(obs["shards"], key=lambda s: s["device"])
    if on["shards"]:
        failures.extend(
            _check_shards(variant.layout, shards, case.locate(("placements",)), "shards")
        )
    if on["values"]:
        bad = [str(s["device"]) for s in shards if not s["values_equal"]]
        if bad:
            failures.append(
                Failure(
                    "values",
                    "shard values",
                    case.locate(("input",)),
                    "each shard equals the input slice it claims",
                    f"devices {', '.join(bad)} hold other values",
                )
            )
    if on["requires_grad"] and obs["requires_grad"] != req["requires_grad"]:
        failures.append(
            Failure(
                "requires_grad",
                # v1 reads the seed's global_tensor on xla, the DTensor itself on native
                "global_tensor.requires_grad" if variant.engine == "xla" else "requires_grad",
                case.locate(("input", "requires_grad")),
                req["requires_grad"],
                obs["requires_grad"],
            )
        )
    if on["is_leaf"] and not obs["is_leaf"]:
        failures.append(Failure("is_leaf", "is_leaf", case.mark, True, obs["is_leaf"]))
    predicted = variant.predicted_spec
    if on["sharding_spec"] and predicted is not None and obs["sharding_spec"] != predicted:
        failures.append(
            Failure(
                "sharding_spec",
                "sharding spec",
                case.locate(("placements",)),
                variant.predicted_spec,
                obs["sharding_spec"],
                note="expected: the string torch_xla would give for DTensor's layout of "
                "these placements (predicted by shardspec)",
            )
        )
    by_device = {s["device"]: s for s in shards}
    for declared in variant.expects:
        if variant.engine != "xla" and declared.name in XLA_ONLY:
            variant.unchecked.append(
                f"expect.{declared.name} (XLA only; not made on {variant.engine})"
            )
            continue
        if declared.name == "local_shape" and 0 in by_device:
            actual = by_device[0]["shape"]
        elif declared.name == "padded_local_shape" and 0 in by_device:
            actual = by_device[0]["padded_shape"]
        elif declared.name == "local_shapes":
            actual = [s["shape"] for s in shards]
        elif declared.name == "global_shape":
            actual = obs["global_shape"]
        elif declared.name == "sharding_spec":
            if not _spec_matches(obs["sharding_spec"], declared.value):
                failures.append(
                    Failure(
                        "expect.sharding_spec",
                        "expect.sharding_spec",
                        declared.mark,
                        _spec_wanted(declared.value),
                        obs["sharding_spec"],
                    )
                )
            continue
        else:
            continue
        if actual != declared.value:
            failures.append(
                Failure(
                    f"expect.{declared.name}",
                    f"expect.{declared.name}",
                    declared.mark,
                    declared.value,
                    actual,
                )
            )
    return failures


RESULT_TYPE = {"xla": "XLAShardedTensor", "native": "DTensor"}
# What only XLA has (settled point 12): not made on other engines, and listed as such.
# What only torch_xla has (settled point 12): not checked on other engines, and listed.
XLA_ONLY = ("padded_local_shape", "sharding_spec", "sharding_type")


def _check_shards(
    layout: list[ShardLayout], shards: list[dict[str, Any]], mark: Mark, what: str
) -> list[Failure]:
    observed = {s["device"]: s for s in shards}
    rows, wrong = [], False
    for expected in layout:
        got = observed.get(expected.device)
        if got is None:
            actual_shape, actual_offset, ok = "missing", "", False
        else:
            ok = list(expected.shape) == got["shape"] and (
                0 in expected.shape or list(expected.offset) == got["offset"]
            )
            actual_shape, actual_offset = str(got["shape"]), str(got["offset"])
        wrong |= not ok
        rows.append(
            [
                str(expected.device),
                str(expected.coord),
                str(list(expected.shape)),
                str(list(expected.offset)),
                actual_shape,
                actual_offset,
                "" if ok else "<-- differs",
            ]
        )
    extra = sorted(set(observed) - {s.device for s in layout})
    if not wrong and not extra:
        return []
    header = ["device", "mesh coord", "expected shape", "offset", "actual shape", "offset", ""]
    note = "DTensor's rules (expected) against what XLA produced (actual)"
    if extra:
        note += f"; XLA also reported devices {extra}"
    return [
        Failure(
            "shards",
            f"{what} differ from DTensor's layout",
            mark,
            note=note,
            table=[header, *rows],
        )
    ]


def _check_module(variant: Variant, obs: ModuleObservation) -> list[Failure]:
    errors = _check_error(variant, obs, "distribute_module")
    if errors is not None:
        return errors
    params = obs["params"]
    failures: list[Failure] = []
    for name, expected in variant.param_layouts.items():
        shards = sorted(params.get(name, {}).get("shards", []), key=lambda s: s["device"])
        mark = variant.case.locate(("shard", expected.rule, "placements"))
        if variant.checks["shards"]:
            failures.extend(_check_shards(expected.layout, shards, mark, f"{name}'s shards"))
        bad = [str(s["device"]) for s in shards if not s["values_equal"]]
        if variant.checks["values"] and bad:
            failures.append(
                Failure(
                    "values",
                    f"{name}'s shard values",
                    mark,
                    "each shard equals the slice it claims",
                    f"devices {', '.join(bad)} hold other values",
                )
            )

    def spec(param: str) -> str:
        return params.get(param, {}).get("sharding_spec") or ""

    for declared in variant.expects:
        if variant.engine != "xla" and declared.name != "forward":
            failures.extend(_native_params(variant, declared, params))
            continue
        if declared.name == "sharded_params":
            bare = [p for p in declared.value if not spec(p)]
            if bare:
                failures.append(
                    Failure(
                        "expect.sharded_params",
                        "expect.sharded_params",
                        declared.mark,
                        "a sharding annotation on each",
                        f"no annotation on {', '.join(bare)}",
                    )
                )
        elif declared.name == "unsharded_params":
            marked = {p: spec(p) for p in declared.value if spec(p)}
            if marked:
                failures.append(
                    Failure(
                        "expect.unsharded_params",
                        "expect.unsharded_params",
                        declared.mark,
                        "no sharding annotation",
                        "; ".join(f"{p} has {s}" for p, s in marked.items()),
                        note=_replicated_note(marked),
                    )
                )
        elif declared.name == "replicated_params":
            other = {p: spec(p) or "no annotation" for p in declared.value}
            other = {p: s for p, s in other.items() if s != REPLICATED}
            if other:
                failures.append(
                    Failure(
                        "expect.replicated_params",
                        "expect.replicated_params",
                        declared.mark,
                        f"the annotation {REPLICATED} on each",
                        "; ".join(f"{p} has {s}" for p, s in other.items()),
                    )
                )
        elif declared.name.startswith("sharding_spec["):
            param = declared.name[len("sharding_spec[") : -1]
            if not _spec_matches(spec(param), declared.value):
                failures.append(
                    Failure(
                        "expect.sharding_spec",
                        f"expect.{declared.name}",
                        declared.mark,
                        _spec_wanted(declared.value),
                        spec(param) or "(none)",
                    )
                )
        elif declared.name == "forward":
            failures.extend(_check_forward(declared.value, declared.mark, obs.get("forward")))
    return failures


def _native_params(variant: Variant, declared: Any, params: dict) -> list[Failure]:
    """Module expectations read through the rules, on DTensor itself (settled point 15):
    sharded = placed as its rule says; unsharded = matched by no rule, which DTensor makes
    a Replicate DTensor; replicated = all Replicate()."""
    if declared.name.startswith("sharding_spec["):
        variant.unchecked.append(f"expect.{declared.name} (XLA only; not made on {variant.engine})")
        return []

    def placements(param: str) -> list[str] | None:
        raw = params.get(param, {}).get("placements")
        if raw is None:
            return None
        return [str(Placement.from_json(p)) for p in raw]

    wrong: dict[str, str] = {}
    for param in declared.value:
        have = placements(param)
        if declared.name == "sharded_params":
            want = [str(p) for p in variant.param_layouts[param].placements]
        else:  # unsharded_params, replicated_params: a Replicate DTensor on every mesh axis
            want = ["Replicate()"] * len(variant.request["mesh"])
        if have != want:
            wrong[param] = f"{param} has {'[' + ', '.join(have) + ']' if have else 'no placements'}"
    if not wrong:
        return []
    wanted = {
        "sharded_params": "the placements its shard rule gives",
        "unsharded_params": "a Replicate DTensor (DTensor replicates what no rule places)",
        "replicated_params": "[Replicate()] on every mesh axis",
    }[declared.name]
    return [
        Failure(
            f"expect.{declared.name}",
            f"expect.{declared.name}",
            declared.mark,
            wanted,
            "; ".join(wrong.values()),
        )
    ]


def _replicated_note(marked: dict[str, str]) -> str:
    copies = [p for p, s in marked.items() if s == REPLICATED]
    if not copies:
        return ""
    return (
        f"{', '.join(copies)}: {REPLICATED} means a shard rule placed it with Replicate() "
        "(every device holds all of it); list it under replicated_params instead"
    )


def _check_forward(tolerance: dict[str, float], mark: Mark, fwd: Any) -> list[Failure]:
    fwd = fwd or {}
    if "error" in fwd:
        return [
            Failure(
                "step_error",
                "the forward raised",
                mark,
                "no error",
                _error_text(fwd["error"]),
            )
        ]
    atol = tolerance["atol"]
    if fwd.get("shape") != fwd.get("expected_shape"):
        return [
            Failure(
                "expect.forward",
                "expect.forward output shape",
                mark,
                fwd.get("expected_shape"),
                fwd.get("shape"),
            )
        ]
    if not fwd.get("finite", False) or fwd["max_excess"] > atol:
        return [
            Failure(
                "expect.forward",
                "expect.forward",
                mark,
                f"|xla - cpu| <= atol + rtol*|cpu| (atol={atol:g}, rtol={tolerance['rtol']:g})",
                f"max |xla - cpu| = {fwd.get('max_abs_error', float('nan')):.3g}"
                + ("" if fwd.get("finite", False) else " (non-finite outputs)"),
            )
        ]
    return []
