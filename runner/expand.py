"""Expand a case for one engine and device count into a concrete, checkable plan.

Everything here is pure Python: requirements, expressions in n, the mesh, placements,
the input, expectations (checked against the oracle before anything runs).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from . import expr, oracle
from . import placements as placement_parser
from .layers import Layer, LayerError, chain_problem, parse_layer
from .placements import Placement
from .problems import Mark, Problem
from .spec import Case
from .yamlload import JsonPath, short

DEFAULT_MAX_ELEMENTS = 1 << 26
MAX_DEVICES = 4096
FLOAT_DTYPES = {"float32", "float64", "float16", "bfloat16"}
CHECKS = ("type", "global_shape", "shards", "values", "requires_grad", "is_leaf")


def parse_device_counts(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> (1, 2, 4, 8), in the order given; ValueError in plain words."""
    try:
        counts = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        counts = ()
    if not counts or any(c < 1 or c > MAX_DEVICES for c in counts):
        raise ValueError(
            f"'{text}' is not a list of device counts (each from 1 to {MAX_DEVICES}); "
            "write them separated by commas, such as 1,2,4,8"
        )
    return counts


@dataclass(frozen=True)
class Expect:
    """One declared expectation, resolved for this n, with its YAML line."""

    name: str
    value: Any
    mark: Mark


@dataclass(frozen=True)
class ParamLayout:
    """A module parameter's shard rule (by index) and DTensor's layout for it."""

    rule: int
    layout: list[oracle.ShardLayout]


@dataclass
class Variant:
    """A case at one engine, device count and grad flag: what one pytest item runs."""

    case: Case
    engine: str
    n: int
    requires_grad: bool | None
    skip: str | None = None
    problems: list[Problem] = field(default_factory=list)
    request: dict[str, Any] | None = None
    expects: list[Expect] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    layout: list[oracle.ShardLayout] = field(default_factory=list)
    param_layouts: dict[str, ParamLayout] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        parts = [self.engine, f"n{self.n}"]
        if self.requires_grad is not None:
            parts.append("grad" if self.requires_grad else "nograd")
        return "-".join(parts)

    def expect(self, name: str) -> Expect | None:
        return next((e for e in self.expects if e.name == name), None)


def grad_flags(case: Case) -> list[bool | None]:
    """One entry per test the case's requires_grad asks for (None for modules)."""
    if case.kind != "tensor":
        return [None]
    inp = case.data.get("input")
    # Cases with schema problems get here too, so input may be anything.
    flag = inp.get("requires_grad", False) if isinstance(inp, dict) else False
    if isinstance(flag, bool):
        return [flag]
    if isinstance(flag, list) and flag and all(isinstance(f, bool) for f in flag):
        return list(dict.fromkeys(flag))
    return [False]


def unmet_requirement(case: Case, n: int) -> str | None:
    return _unmet(case.data.get("requires") or {}, n)


def _unmet(req: dict, n: int) -> str | None:
    if "min_devices" in req and n < req["min_devices"]:
        return f"requires min_devices: {req['min_devices']}, but this run has n={n}"
    if "max_devices" in req and n > req["max_devices"]:
        return f"requires max_devices: {req['max_devices']}, but this run has n={n}"
    div = req.get("devices_divisible_by")
    if div and n % div:
        return f"requires devices_divisible_by: {div}, but this run has n={n}"
    return None


class _Invalid(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


def expand(
    case: Case, engine: str, n: int, *, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> list[Variant]:
    """The variants (one per grad flag) of a case at this engine and device count."""
    variants = [Variant(case, engine, n, flag) for flag in grad_flags(case)]
    # A case with schema problems may hold anything (requires: {min_devices: two}): don't
    # read it further.
    skip = None if case.problems else unmet_requirement(case, n)
    for variant in variants:
        if case.problems:
            variant.problems = list(case.problems)
        elif skip:
            variant.skip = skip
        else:
            _plan(variant, max_elements)
    return variants


def _plan(variant: Variant, max_elements: int) -> None:
    builder = _Builder(variant, max_elements)
    try:
        if variant.case.kind == "module":
            builder.module()
        else:
            builder.tensor()
    except _Invalid as exc:
        variant.problems.append(exc.problem)


_HINT_COUNTS = range(1, 65)  # the device counts a suggested requires is checked against


def _mask(counts: Any) -> int:
    return sum(1 << m for m in counts)


@functools.cache
def _candidates() -> list[tuple[str, int, int]]:
    """Every simple requires: (its words, the counts it allows, the count it names or 0)."""
    out: list[tuple[str, int, int]] = []
    divisible = {k: _mask(m for m in _HINT_COUNTS if m % k == 0) for k in range(2, 17)}
    at_least = {low: _mask(range(low, 65)) for low in range(2, 65)}
    for k, mask in divisible.items():
        out.append((f"devices_divisible_by: {k}", mask, 0))
    for low, mask in at_least.items():
        out.append((f"min_devices: {low}", mask, low))
    for high in range(1, 64):
        out.append((f"max_devices: {high}", _mask(range(1, high + 1)), high))
    for k, div_mask in divisible.items():
        for low, low_mask in at_least.items():
            both = f"devices_divisible_by: {k}, min_devices: {low}"
            out.append((both, div_mask & low_mask, low))
    return out


def requires_hint(text: str, n: int, minimum: int = 1, requires: Any = None) -> str:
    """Suggest the ``requires`` that skips n and every other count where ``text`` fails.

    Of the requirements that work (up to 64 devices), the one that keeps the most device
    counts wins, so ``n-4`` at n=4 gets min_devices: 5, not devices_divisible_by: 5.
    """
    parsed = expr.parse(text)

    def ok(m: int) -> bool:
        try:
            return parsed.evaluate(m) >= minimum
        except expr.ExprError:
            return False

    good = _mask(m for m in _HINT_COUNTS if ok(m))
    req = requires if isinstance(requires, dict) else {}
    now = _mask(m for m in _HINT_COUNTS if not _unmet(req, m))  # counts the case runs at today
    if not good & now:
        return "no device count makes it valid, so fix the expression rather than skip it"
    # (words, counts kept) of each requirement that skips n and keeps only good counts
    working = [
        (words, kept)
        for words, allowed, named in _candidates()
        if (kept := allowed & now)
        and not kept & ~good
        and not kept >> n & 1
        # min_devices: 3 with only even counts kept reads as a puzzle: name a kept count
        and (not named or kept >> named & 1)
    ]
    if not working:
        return "add a requires: entry (min_devices, max_devices or devices_divisible_by) to skip it"
    words = max(working, key=lambda item: item[1].bit_count())[0]  # first of the best wins
    return f"add requires: {{{words}}} to skip such device counts"


class _Builder:
    def __init__(self, variant: Variant, max_elements: int):
        self.v = variant
        self.case = variant.case
        self.n = variant.n
        self.max_elements = max_elements

    def fail(self, path: JsonPath, message: str) -> _Invalid:
        return _Invalid(self.case.problem(path, message))

    def size(
        self, value: Any, path: JsonPath, *, allow_minus_one: bool = False, minimum: int = 1
    ) -> int:
        if allow_minus_one and value == -1:
            return -1
        try:
            result = expr.parse(value).evaluate(self.n)
        except expr.ExprError as exc:
            message = str(exc)
            if "n=" in message:
                message += f"; {self.hint(value, minimum)}"
            raise self.fail(path, message) from None
        if result < minimum:
            hint = f"; {self.hint(value, minimum)}" if isinstance(value, str) else ""
            raise self.fail(
                path,
                f"'{short(value, 200)}' is {result} when n={self.n}; a size here must be at least {minimum}{hint}",
            )
        return result

    def hint(self, text: str, minimum: int = 1) -> str:
        return requires_hint(text, self.n, minimum, self.case.data.get("requires"))

    def shape(self, value: Any, path: JsonPath, *, minimum: int = 1) -> tuple[int, ...]:
        if not isinstance(value, list):
            raise self.fail(path, "a shape must be a list of sizes, such as [8, 3]")
        return tuple(self.size(item, (*path, i), minimum=minimum) for i, item in enumerate(value))

    def mesh(self) -> tuple[int, ...]:
        data = self.case.data
        if "mesh" not in data:
            raise self.fail((), "the case needs a mesh, such as mesh: [n]")
        sizes = [
            self.size(s, ("mesh", i), allow_minus_one=True) for i, s in enumerate(data["mesh"])
        ]
        if sizes.count(-1) > 1:
            raise self.fail(
                ("mesh",), "mesh may hold at most one -1 (the size worked out from the rest)"
            )
        known = math.prod(s for s in sizes if s != -1)
        # A mesh written without n fits one device count only: say which requires that is.
        fixed = all(isinstance(s, int) for s in data["mesh"])
        written = f"[{', '.join(map(str, data['mesh']))}]"  # as in the YAML: [2, n/2]
        if -1 in sizes:
            if self.n % known:
                skip = (
                    f"requires: {{devices_divisible_by: {known}}}" if fixed else "a requires: entry"
                )
                raise self.fail(
                    ("mesh",),
                    f"mesh {written}: the other sizes multiply to {known}, which does not "
                    f"divide n={self.n}, so -1 can't be worked out; add {skip} to skip it",
                )
            sizes[sizes.index(-1)] = self.n // known
        elif known != self.n:
            only = (
                f", or add requires: {{min_devices: {known}, max_devices: {known}}} to run it "
                f"only at n={known}"
                if fixed
                else ""
            )
            raise self.fail(
                ("mesh",),
                f"mesh {written} is {' x '.join(map(str, sizes))} = {known} devices, but this "
                f"run has n={self.n}; the mesh must span all devices (use n, n/2 or -1){only}",
            )
        return tuple(sizes)

    def placements(
        self,
        raw: Any,
        path: JsonPath,
        mesh: tuple[int, ...],
        rank: int | None,
        what: str = "the tensor",
    ) -> tuple[Placement, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(path, "placements must be a list with one placement per mesh axis")
        parsed = []
        for i, text in enumerate(raw):
            try:
                parsed.append(placement_parser.parse(text))
            except ValueError as exc:
                raise self.fail((*path, i), str(exc)) from None
        if len(parsed) != len(mesh):
            raise self.fail(
                path,
                f"{len(parsed)} placement(s) for a mesh with {len(mesh)} axis/axes {list(mesh)}; "
                "give exactly one placement per mesh axis",
            )
        if rank is not None:
            for i, p in enumerate(parsed):
                if p.kind == "shard" and not -rank <= p.dim < rank:
                    raise self.fail(
                        (*path, i),
                        f"{p} is outside {what}'s {rank} dim(s); use a dim from "
                        f"{-rank} to {rank - 1}",
                    )
        return tuple(p.normalized(rank) if rank is not None else p for p in parsed)

    def common(self) -> None:
        data = self.case.data
        checks = data.get("checks") or {}
        self.v.checks = {name: bool(checks.get(name, True)) for name in CHECKS}
        if "timeout" in data:
            self.v.description["timeout"] = data["timeout"]

    def spec_strings(self, value: Any, path: JsonPath, label: str) -> Expect | None:
        if isinstance(value, str):
            return Expect(label, value, self.case.locate(path))
        if isinstance(value, dict):
            if str(self.n) in value:
                return Expect(label, value[str(self.n)], self.case.locate((*path, str(self.n))))
            self.v.unchecked.append(f"{label} (no entry for n={self.n})")
        return None

    def tensor(self) -> None:
        data, n = self.case.data, self.n
        self.common()
        mesh = self.mesh()
        inp = data.get("input")
        if not isinstance(inp, dict) or "shape" not in inp:
            raise self.fail(
                ("input",), "the case needs input: {shape: [...]}, such as input: {shape: [8, 3]}"
            )
        shape = self.shape(inp["shape"], ("input", "shape"))
        if "placements" not in data:
            raise self.fail((), "the case needs placements, one per mesh axis, such as [Shard(0)]")
        places = self.placements(data["placements"], ("placements",), mesh, len(shape))
        dtype = inp.get("dtype", "float32")
        if self.v.requires_grad and dtype not in FLOAT_DTYPES:
            raise self.fail(
                ("input", "requires_grad"),
                f"requires_grad: true needs a floating dtype, but dtype is {dtype}; "
                "only float32, float64, float16 and bfloat16 tensors can require grad",
            )
        elements = math.prod(shape)
        if elements > self.max_elements:
            raise self.fail(
                ("input", "shape"),
                f"input.shape {list(shape)} has {elements} elements at n={n}, over the limit of "
                f"{self.max_elements}; make it smaller (or raise --shardspec-max-elements)",
            )
        self.v.layout = oracle.layout(shape, mesh, places)
        self.v.description.update(
            mesh=list(mesh), placements=[str(p) for p in places], shape=list(shape), dtype=dtype
        )
        seed_key = f"{PurePath(self.case.doc.path).name}::{self.case.id}"
        self.v.request = {
            "op": "tensor",
            "mesh": list(mesh),
            "placements": [p.as_json() for p in places],
            "shape": list(shape),
            "dtype": dtype,
            "requires_grad": bool(self.v.requires_grad),
            "seed": zlib.crc32(seed_key.encode()),
        }
        self.tensor_expectations(shape, mesh, places)

    def tensor_expectations(
        self, shape: tuple[int, ...], mesh: tuple[int, ...], places: tuple[Placement, ...]
    ) -> None:
        expect = self.case.data.get("expect") or {}
        layout = self.v.layout
        where = f"(input {list(shape)}, mesh {list(mesh)}, placements [{', '.join(map(str, places))}], n={self.n})"
        contradiction = "; the spec, not XLA, disagrees with DTensor semantics: fix the expectation"
        if "error" in expect:
            err = expect["error"]
            pattern = err.get("match")
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise self.fail(
                        ("expect", "error", "match"),
                        f"expect.error.match is not a valid regular expression: {exc}",
                    ) from None
            self.v.expects.append(Expect("error", dict(err), self.case.locate(("expect", "error"))))
        oracle_values = {
            "global_shape": list(shape),
            "local_shape": list(layout[0].shape),
            "padded_local_shape": list(oracle.padded_shape(shape, mesh, places)),
        }
        for name, truth in oracle_values.items():
            if name not in expect:
                continue
            # A shard may be empty (fewer rows than devices), the global shape never.
            value = list(
                self.shape(expect[name], ("expect", name), minimum=int(name != "global_shape"))
            )
            if value != truth:
                what = "device 0's shard" if name != "global_shape" else "the global shape"
                raise self.fail(
                    ("expect", name),
                    f"expect.{name} is {value}, but DTensor's rules give {truth} for {what} {where}{contradiction}",
                )
            self.v.expects.append(Expect(name, value, self.case.locate(("expect", name))))
        if "local_shapes" in expect:
            raw = expect["local_shapes"]
            if len(raw) != len(layout):
                raise self.fail(
                    ("expect", "local_shapes"),
                    f"expect.local_shapes lists {len(raw)} shapes, but n={self.n} devices hold one each; list one shape per device (or use local_shape for device 0)",
                )
            values = [
                list(self.shape(s, ("expect", "local_shapes", i), minimum=0))
                for i, s in enumerate(raw)
            ]
            for i, (value, shard) in enumerate(zip(values, layout, strict=True)):
                if value != list(shard.shape):
                    raise self.fail(
                        ("expect", "local_shapes", i),
                        f"expect.local_shapes[{i}] is {value}, but DTensor's rules give {list(shard.shape)} for device {i} {where}{contradiction}",
                    )
            self.v.expects.append(
                Expect("local_shapes", values, self.case.locate(("expect", "local_shapes")))
            )
        if "sharding_spec" in expect:
            if isinstance(expect["sharding_spec"], dict) and not all(
                k.isdigit() for k in expect["sharding_spec"]
            ):
                raise self.fail(
                    ("expect", "sharding_spec"),
                    "a tensor case's expect.sharding_spec is a spec string, or a map from device count to spec string (parameter names are for module cases)",
                )
            found = self.spec_strings(
                expect["sharding_spec"], ("expect", "sharding_spec"), "sharding_spec"
            )
            if found:
                self.v.expects.append(found)
        for name in ("sharded_params", "unsharded_params", "forward"):
            if name in expect:
                raise self.fail(
                    ("expect", name),
                    f"expect.{name} is for module cases (kind: module); a tensor case can't use it",
                )

    def module(self) -> None:
        data = self.case.data
        self.common()
        mesh = self.mesh()
        raw_layers = data.get("module")
        if not isinstance(raw_layers, dict) or not raw_layers:
            raise self.fail(
                (),
                "a module case needs module: a map from layer name to layer, such as {fc1: Linear(8, 4)}",
            )
        layers: list[tuple[str, Layer]] = []
        for name, text in raw_layers.items():
            try:
                layers.append((name, parse_layer(text, self.n)))
            except LayerError as exc:
                hint = f"; {self.hint(exc.expression)}" if exc.expression else ""
                raise self.fail(("module", name), f"{exc}{hint}") from None
        broken = chain_problem(layers)
        if broken:
            raise self.fail(("module", broken[0]), broken[1])
        sizes = {name: sum(map(math.prod, layer.params.values())) for name, layer in layers}
        if sum(sizes.values()) > self.max_elements:
            biggest = max(sizes, key=sizes.__getitem__)
            raise self.fail(
                ("module", biggest),
                f"the module's parameters hold {sum(sizes.values())} elements at n={self.n}, over "
                f"the limit of {self.max_elements} ({biggest} alone holds {sizes[biggest]}); make "
                "the layers smaller (or raise --shardspec-max-elements)",
            )
        shapes = {
            f"{name}.{p}": shape for name, layer in layers for p, shape in layer.params.items()
        }
        params = list(shapes)
        rules = []
        for i, rule in enumerate(data.get("shard") or []):
            places = self.placements(rule["placements"], ("shard", i, "placements"), mesh, None)
            rules.append({"params": rule["params"], "placements": [p.as_json() for p in places]})
        for i, rule in enumerate(rules):
            if not any(fnmatch.fnmatchcase(param, rule["params"]) for param in shapes):
                raise self.fail(
                    ("shard", i, "params"),
                    f"shard rule '{short(rule['params'])}' matches no parameter of this module (a typo?); its parameters are: {', '.join(shapes) or 'none'}",
                )
        for param, shape in shapes.items():
            index = next(
                (i for i, r in enumerate(rules) if fnmatch.fnmatchcase(param, r["params"])), None
            )
            if index is None:
                continue
            # Checked against the parameter's real rank: XLA fails obscurely otherwise.
            places = self.placements(
                data["shard"][index]["placements"],
                ("shard", index, "placements"),
                mesh,
                len(shape),
                what=f"parameter {param} {list(shape)}",
            )
            self.v.param_layouts[param] = ParamLayout(index, oracle.layout(shape, mesh, places))
        self.v.description.update(mesh=list(mesh), module={n: str(layer) for n, layer in layers})
        seed_key = f"{PurePath(self.case.doc.path).name}::{self.case.id}"
        self.v.request = {
            "op": "module",
            "mesh": list(mesh),
            "layers": [[name, layer.as_json()] for name, layer in layers],
            "rules": rules,
            "seed": zlib.crc32(seed_key.encode()),
        }
        self.module_expectations(params, layers)

    def module_expectations(self, params: list[str], layers: list[tuple[str, Layer]]) -> None:
        expect = self.case.data.get("expect") or {}
        if "error" in expect:
            self.v.expects.append(
                Expect("error", dict(expect["error"]), self.case.locate(("expect", "error")))
            )
        for name in ("global_shape", "local_shape", "local_shapes", "padded_local_shape"):
            if name in expect:
                raise self.fail(
                    ("expect", name),
                    f"expect.{name} is for tensor cases; a module case can't use it",
                )
        for name in ("sharded_params", "unsharded_params"):
            for i, param in enumerate(expect.get(name, [])):
                if param not in params:
                    raise self.fail(
                        (("expect", name, i)),
                        f"'{short(param)}' is not a parameter of this module"
                        + (_suggest(param, params) or f"; its parameters are: {', '.join(params)}"),
                    )
            if name in expect:
                self.v.expects.append(
                    Expect(name, list(expect[name]), self.case.locate(("expect", name)))
                )
        specs = expect.get("sharding_spec")
        if specs is not None:
            if not isinstance(specs, dict) or any(k.isdigit() for k in specs):
                raise self.fail(
                    ("expect", "sharding_spec"),
                    "a module case's expect.sharding_spec maps parameter names to spec strings, such as {fc1.weight: '{devices=[4,1]0,1,2,3}'}",
                )
            for param, value in specs.items():
                if param not in params:
                    raise self.fail(
                        ("expect", "sharding_spec", param),
                        f"'{short(param)}' is not a parameter of this module"
                        + _suggest(param, params),
                    )
                found = self.spec_strings(
                    value, ("expect", "sharding_spec", param), f"sharding_spec[{short(param)}]"
                )
                if found:
                    self.v.expects.append(found)
        if "forward" in expect:
            fwd = expect["forward"]
            shape = list(self.shape(fwd["input_shape"], ("expect", "forward", "input_shape")))
            first = layers[0][1]
            problem = first.input_problem(shape)
            if problem:
                raise self.fail(("expect", "forward", "input_shape"), problem)
            if math.prod(shape) > self.max_elements:
                raise self.fail(
                    ("expect", "forward", "input_shape"),
                    f"forward.input_shape {shape} is over the limit of {self.max_elements} elements",
                )
            self.v.request["forward"] = {"input_shape": shape, "rtol": fwd.get("rtol", 1.3e-6)}
            self.v.expects.append(
                Expect(
                    "forward",
                    {"atol": fwd.get("atol", 1e-5), "rtol": fwd.get("rtol", 1.3e-6)},
                    self.case.locate(("expect", "forward")),
                )
            )


def _suggest(word: str, options: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
