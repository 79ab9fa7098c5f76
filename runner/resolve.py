"""Sizes, shapes, the mesh and placements of one case at one device count.

A :class:`Resolver` reads values of the merged case and turns them into numbers for n,
raising :class:`Invalid` with a located, plain-words problem when one can't be used.
"""

from __future__ import annotations

import math
from typing import Any

from . import expr
from . import placements as placement_parser
from .placements import Placement
from .problems import Problem
from .requires import requires_hint
from .spec import Case
from .yamlload import JsonPath, short


class Invalid(Exception):
    """A value of the case that can't be used at this n."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


class Resolver:
    """Resolves a case's values for one device count."""

    def __init__(self, case: Case, n: int):
        self.case = case
        self.n = n
        self.notes: list[str] = []  # expectations not checked at this n (a map without it)

    def fail(self, path: JsonPath, message: str) -> Invalid:
        return Invalid(self.case.problem(path, message))

    def hint(self, text: str, minimum: int = 1) -> str:
        return requires_hint(text, self.n, minimum, self.case.data.get("requires"))

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

    def shape(self, value: Any, path: JsonPath, *, minimum: int = 1) -> tuple[int, ...]:
        if not isinstance(value, list):
            raise self.fail(path, "a shape must be a list of sizes, such as [8, 3]")
        return tuple(self.size(item, (*path, i), minimum=minimum) for i, item in enumerate(value))

    def by_n(self, value: Any, path: JsonPath) -> tuple[Any, JsonPath] | None:
        """For a value that may be a map from device count to value: this n's entry and
        its path (None when the map has none); any other value as it is."""
        if isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
            key = str(self.n)
            return (value[key], (*path, key)) if key in value else None
        return value, path

    def mesh_with_names(self) -> tuple[tuple[int, ...], tuple[str, ...] | None]:
        """The mesh's sizes, and its axis names when written as {shape: [...], names: [...]}."""
        raw = self.case.data.get("mesh")
        names = raw.get("names") if isinstance(raw, dict) else None
        sizes = self.mesh()
        if names is not None and len(names) != len(sizes):
            raise self.fail(
                ("mesh", "names"),
                f"mesh.names has {len(names)} name(s) for {len(sizes)} mesh axis/axes; give one "
                "name per axis",
            )
        return sizes, tuple(names) if names is not None else None

    def mesh(self) -> tuple[int, ...]:
        data = self.case.data
        if "mesh" not in data:
            raise self.fail((), "the case needs a mesh, such as mesh: [n]")
        raw = data["mesh"]
        base: JsonPath = ("mesh",)
        if isinstance(raw, dict):  # {shape: [...], names: [...]}
            raw, base = raw.get("shape", []), ("mesh", "shape")
        sizes = [self.size(s, (*base, i), allow_minus_one=True) for i, s in enumerate(raw)]
        if sizes.count(-1) > 1:
            raise self.fail(
                base, "mesh may hold at most one -1 (the size worked out from the rest)"
            )
        known = math.prod(s for s in sizes if s != -1)
        # A mesh written without n fits one device count only: say which requires that is.
        fixed = all(isinstance(s, int) for s in raw)
        written = f"[{', '.join(map(str, raw))}]"  # as in the YAML: [2, n/2]
        if -1 in sizes:
            if self.n % known:
                skip = (
                    f"requires: {{devices_divisible_by: {known}}}" if fixed else "a requires: entry"
                )
                raise self.fail(
                    base,
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
                base,
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
        """Parsed placements, one per mesh axis; Shard dims made non-negative for ``rank``."""
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
