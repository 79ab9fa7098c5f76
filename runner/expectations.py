"""Declared expectations of a case at one n, checked against DTensor's rules before anything runs.

Each builder reads ``expect:`` of the merged case, resolves maps by device count, and
raises :class:`~runner.resolve.Invalid` where the spec contradicts DTensor's layout (the
spec, not XLA, is wrong then). What it accepts becomes :class:`Expect` records that the
checker compares with an engine's observation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import oracle
from .oracle import ShardLayout
from .placements import Placement
from .problems import Mark
from .resolve import Resolver
from .words import did_you_mean
from .yamlload import JsonPath, short

PARAM_LISTS = ("sharded_params", "unsharded_params", "replicated_params")
TENSOR_ONLY = ("global_shape", "local_shape", "local_shapes", "padded_local_shape")
MODULE_ONLY = (*PARAM_LISTS, "forward")
_CONTRADICTION = "; the spec, not XLA, disagrees with DTensor semantics: fix the expectation"


@dataclass(frozen=True)
class Expect:
    """One declared expectation, resolved for this n, with its YAML line."""

    name: str
    value: Any
    mark: Mark


@dataclass(frozen=True)
class ParamLayout:
    """A module parameter's shard rule (by index), its placements and DTensor's layout."""

    rule: int
    placements: tuple[Placement, ...]
    layout: list[ShardLayout]

    @property
    def replicated(self) -> bool:
        return all(p.kind == "replicate" for p in self.placements)


class Collected:
    """What the builders found: accepted expectations, and the ones not made at this n."""

    def __init__(self, resolver: Resolver):
        self.r = resolver
        self.case = resolver.case
        self.expects: list[Expect] = []
        self.unchecked: list[str] = []

    def add(self, name: str, value: Any, path: JsonPath) -> None:
        self.expects.append(Expect(name, value, self.case.locate(path)))

    def at_n(self, expect: dict, key: str, label: str | None = None) -> tuple[Any, JsonPath] | None:
        """The value of ``expect[key]`` for this n; a map without this n is noted as not made."""
        path: JsonPath = ("expect", key)
        found = self.r.by_n(expect[key], path)
        if found is None:
            self.unchecked.append(f"expect.{label or key} (no entry for n={self.r.n})")
        return found

    def error(self, expect: dict) -> None:
        if "error" not in expect:
            return
        err = expect["error"]
        pattern = err.get("match")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.r.fail(
                    ("expect", "error", "match"),
                    f"expect.error.match is not a valid regular expression: {exc}",
                ) from None
        self.add("error", dict(err), ("expect", "error"))

    def spec_string(self, value: Any, path: JsonPath, label: str) -> None:
        """``sharding_spec``: a string, ``{contains: TEXT or [TEXT]}``, or a map by n of those."""
        found = self.r.by_n(value, path)
        if found is None:
            self.unchecked.append(f"expect.{label} (no entry for n={self.r.n})")
            return
        value, path = found
        if isinstance(value, dict):
            wanted = value.get("contains")
            value = {"contains": [wanted] if isinstance(wanted, str) else list(wanted or [])}
        self.add(label, value, path)

    def rejected(self, expect: dict, names: tuple[str, ...], why: str) -> None:
        for name in names:
            if name in expect:
                raise self.r.fail(("expect", name), f"expect.{name} is {why}")


def tensor(
    found: Collected,
    shape: tuple[int, ...],
    mesh: tuple[int, ...],
    places: tuple[Placement, ...],
    layout: list[ShardLayout],
) -> None:
    """A tensor case's expectations, each against DTensor's layout for this n."""
    r, n = found.r, found.r.n
    expect = found.case.data.get("expect") or {}
    found.rejected(
        expect, MODULE_ONLY, "for module cases (kind: module); a tensor case can't use it"
    )
    found.error(expect)
    where = f"(input {list(shape)}, mesh {list(mesh)}, placements [{', '.join(map(str, places))}], n={n})"
    truths = {
        "global_shape": list(shape),
        "local_shape": list(layout[0].shape),
        "padded_local_shape": list(oracle.padded_shape(shape, mesh, places)),
    }
    for name, truth in truths.items():
        if name not in expect or (at := found.at_n(expect, name)) is None:
            continue
        raw, path = at
        # The global shape is never empty; a shard may be (fewer rows than devices).
        value = list(r.shape(raw, path, minimum=1 if name == "global_shape" else 0))
        if value != truth:
            what = "the global shape" if name == "global_shape" else "device 0's shard"
            raise r.fail(
                path,
                f"expect.{name} is {value}, but DTensor's rules give {truth} for {what} {where}{_CONTRADICTION}",
            )
        found.add(name, value, path)
    if "local_shapes" in expect and (at := found.at_n(expect, "local_shapes")) is not None:
        raw, path = at
        if not isinstance(raw, list) or len(raw) != len(layout):
            count = len(raw) if isinstance(raw, list) else 0
            raise r.fail(
                path,
                f"expect.local_shapes lists {count} shapes, but n={n} devices hold one each; list one shape per device (or use local_shape for device 0)",
            )
        values = [list(r.shape(s, (*path, i), minimum=0)) for i, s in enumerate(raw)]
        for i, (value, shard) in enumerate(zip(values, layout, strict=True)):
            if value != list(shard.shape):
                raise r.fail(
                    (*path, i),
                    f"expect.local_shapes[{i}] is {value}, but DTensor's rules give {list(shard.shape)} for device {i} {where}{_CONTRADICTION}",
                )
        found.add("local_shapes", values, path)
    if "sharding_spec" in expect:
        spec = expect["sharding_spec"]
        if isinstance(spec, dict) and "contains" not in spec and not all(k.isdigit() for k in spec):
            raise r.fail(
                ("expect", "sharding_spec"),
                "a tensor case's expect.sharding_spec is a spec string, {contains: TEXT}, or a map from device count to those (parameter names are for module cases)",
            )
        found.spec_string(spec, ("expect", "sharding_spec"), "sharding_spec")


def module(found: Collected, params: dict[str, tuple[int, ...]], placed: dict[str, ParamLayout]):
    """A module case's expectations (forward excepted), each against the shard rules."""
    r = found.r
    expect = found.case.data.get("expect") or {}
    found.rejected(expect, TENSOR_ONLY, "for tensor cases; a module case can't use it")
    found.error(expect)
    names = list(params)
    for key in PARAM_LISTS:
        for i, param in enumerate(expect.get(key, [])):
            path = ("expect", key, i)
            if param not in params:
                raise r.fail(
                    path,
                    f"'{short(param)}' is not a parameter of this module"
                    + (did_you_mean(param, names) or f"; its parameters are: {', '.join(names)}"),
                )
            problem = _param_list_problem(key, param, placed.get(param))
            if problem:
                raise r.fail(path, problem)
        if key in expect:
            found.add(key, list(expect[key]), ("expect", key))
    specs = expect.get("sharding_spec")
    if specs is not None:
        if not isinstance(specs, dict) or "contains" in specs or any(k.isdigit() for k in specs):
            raise r.fail(
                ("expect", "sharding_spec"),
                "a module case's expect.sharding_spec maps parameter names to spec strings, such as {fc1.weight: '{devices=[4,1]0,1,2,3}'}",
            )
        for param, value in specs.items():
            if param not in params:
                raise r.fail(
                    ("expect", "sharding_spec", param),
                    f"'{short(param)}' is not a parameter of this module"
                    + did_you_mean(param, names),
                )
            found.spec_string(
                value, ("expect", "sharding_spec", param), f"sharding_spec[{short(param)}]"
            )


def _param_list_problem(key: str, param: str, placed: ParamLayout | None) -> str | None:
    """Why listing ``param`` under ``key`` contradicts the shard rules, if it does."""
    if placed is None:
        if key == "unsharded_params":
            return None
        extra = (
            ", or add a rule with placements [Replicate()]" if key == "replicated_params" else ""
        )
        return (
            f"'{param}' is in {key}, but no shard rule matches it, so it stays a plain tensor "
            f"without a sharding annotation; list it under unsharded_params{extra}"
        )
    shown = f"[{', '.join(map(str, placed.placements))}]"
    rule = f"shard rule [{placed.rule}] places it with {shown}"
    if key == "unsharded_params":
        if placed.replicated:
            return (
                f"'{param}' is in unsharded_params, but {rule}, which gives it the annotation "
                "{replicated}; list it under replicated_params instead (or change the rule)"
            )
        return f"'{param}' is in unsharded_params, but {rule}; list it under sharded_params instead"
    if key == "replicated_params" and not placed.replicated:
        return (
            f"'{param}' is in replicated_params, but {rule}, which is not all Replicate(); "
            "list it under sharded_params instead"
        )
    return None
