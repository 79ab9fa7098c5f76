"""The checker: judges an engine's observation against the spec and the oracle."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .expand import Variant
from .oracle import ShardLayout
from .problems import Mark


@dataclass
class Failure:
    """One expectation that did not hold, with where it was written."""

    title: str
    mark: Mark
    expected: Any = None
    actual: Any = None
    note: str = ""
    table: list[list[str]] = field(default_factory=list)


def check(variant: Variant, obs: dict[str, Any]) -> list[Failure]:
    if variant.case.kind == "module":
        return _check_module(variant, obs)
    return _check_tensor(variant, obs)


def _error_text(err: dict[str, Any]) -> str:
    return f"{err['type']}: {err['message']}"


def _check_error(variant: Variant, obs: dict[str, Any], call: str) -> list[Failure] | None:
    """Failures about errors, or None when neither raised nor expected."""
    expected = variant.expect("error")
    raised = obs.get("error")
    if expected is None and raised is None:
        return None
    if expected is None:
        return [
            Failure(
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
            Failure("expect.error", expected.mark, want_text, f"{call} succeeded without an error")
        ]
    failures = []
    if want["type"] not in raised["bases"] and want["type"] != raised["type"]:
        failures.append(
            Failure("expect.error.type", expected.mark, want["type"], _error_text(raised))
        )
    elif want.get("match") and not re.search(want["match"], raised["message"]):
        failures.append(
            Failure("expect.error.match", expected.mark, f"/{want['match']}/", _error_text(raised))
        )
    return failures


def _check_tensor(variant: Variant, obs: dict[str, Any]) -> list[Failure]:
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

    if on["type"] and obs["type"] != "XLAShardedTensor":
        failures.append(Failure("result type", case.mark, "XLAShardedTensor", obs["type"]))
    if on["global_shape"] and obs["global_shape"] != req["shape"]:
        failures.append(
            Failure(
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
                    "shard values",
                    case.locate(("input",)),
                    "each shard equals the input slice it claims",
                    f"devices {', '.join(bad)} hold other values",
                )
            )
    if on["requires_grad"] and obs["requires_grad"] != req["requires_grad"]:
        failures.append(
            Failure(
                "global_tensor.requires_grad",
                case.locate(("input", "requires_grad")),
                req["requires_grad"],
                obs["requires_grad"],
            )
        )
    if on["is_leaf"] and not obs["is_leaf"]:
        failures.append(Failure("is_leaf", case.mark, True, obs["is_leaf"]))
    by_device = {s["device"]: s for s in shards}
    for declared in variant.expects:
        if declared.name == "local_shape" and 0 in by_device:
            actual = by_device[0]["shape"]
        elif declared.name == "padded_local_shape" and 0 in by_device:
            actual = by_device[0]["padded_shape"]
        elif declared.name == "local_shapes":
            actual = [s["shape"] for s in shards]
        elif declared.name == "global_shape":
            actual = obs["global_shape"]
        elif declared.name == "sharding_spec":
            actual = obs["sharding_spec"]
        else:
            continue
        if actual != declared.value:
            failures.append(
                Failure(f"expect.{declared.name}", declared.mark, declared.value, actual)
            )
    return failures


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
    return [Failure(f"{what} differ from DTensor's layout", mark, note=note, table=[header, *rows])]


def _check_module(variant: Variant, obs: dict[str, Any]) -> list[Failure]:
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
                    f"{name}'s shard values",
                    mark,
                    "each shard equals the slice it claims",
                    f"devices {', '.join(bad)} hold other values",
                )
            )
    for declared in variant.expects:
        if declared.name == "sharded_params":
            bare = [p for p in declared.value if not params.get(p, {}).get("sharding_spec")]
            if bare:
                failures.append(
                    Failure(
                        "expect.sharded_params",
                        declared.mark,
                        "a sharding annotation on each",
                        f"no annotation on {', '.join(bare)}",
                    )
                )
        elif declared.name == "unsharded_params":
            marked = {
                p: params[p]["sharding_spec"]
                for p in declared.value
                if params.get(p, {}).get("sharding_spec")
            }
            if marked:
                failures.append(
                    Failure(
                        "expect.unsharded_params",
                        declared.mark,
                        "no sharding annotation",
                        "; ".join(f"{p} has {s}" for p, s in marked.items()),
                    )
                )
        elif declared.name.startswith("sharding_spec["):
            param = declared.name[len("sharding_spec[") : -1]
            actual = params.get(param, {}).get("sharding_spec")
            if actual != declared.value:
                failures.append(
                    Failure(
                        f"expect.{declared.name}", declared.mark, declared.value, actual or "(none)"
                    )
                )
        elif declared.name == "forward":
            fwd = obs.get("forward") or {}
            atol = declared.value["atol"]
            if fwd.get("shape") != fwd.get("expected_shape"):
                failures.append(
                    Failure(
                        "expect.forward output shape",
                        declared.mark,
                        fwd.get("expected_shape"),
                        fwd.get("shape"),
                    )
                )
            elif not fwd.get("finite", False) or fwd["max_excess"] > atol:
                failures.append(
                    Failure(
                        "expect.forward",
                        declared.mark,
                        f"|xla - cpu| <= atol + rtol*|cpu| (atol={atol:g}, rtol={declared.value['rtol']:g})",
                        f"max |xla - cpu| = {fwd.get('max_abs_error', float('nan')):.3g}"
                        + ("" if fwd.get("finite", False) else " (non-finite outputs)"),
                    )
                )
    return failures
