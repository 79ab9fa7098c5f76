"""Placements as written in specs: ``Shard(d)``, ``Replicate()``, ``Partial()``.

``Partial()`` means ``Partial(sum)``; ``Partial(avg)``, ``Partial(max)`` and ``Partial(min)``
name the other reductions (DESIGN.md settled point 10).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .yamlload import short

REDUCE_OPS = ("sum", "avg", "max", "min")
_FORMS = re.compile(
    r"^\s*(?:Shard\(\s*(?P<dim>[+-]?[0-9]{1,6})\s*\)|Replicate\(\s*\)(?P<rep>)"
    r"|Partial\(\s*(?P<op>sum|avg|max|min)?\s*\))\s*$"
)
EXAMPLES = "Shard(0), Shard(-1), Replicate() or Partial()"
_PARTIAL_FORMS = "Partial(), Partial(sum), Partial(avg), Partial(max) or Partial(min)"


@dataclass(frozen=True)
class Placement:
    """One mesh axis's placement; ``dim`` is set for Shard only (may be negative).

    ``reduce`` is the reduction of a Partial other than sum (``avg``, ``max``, ``min``);
    it is None for sum, so ``Placement("partial")`` is ``Partial()`` = ``Partial(sum)``.
    """

    kind: str  # "shard" | "replicate" | "partial"
    dim: int | None = None
    reduce: str | None = None

    def __post_init__(self) -> None:
        if self.reduce == "sum":
            object.__setattr__(self, "reduce", None)  # one form for Partial() and Partial(sum)
        if self.reduce is not None and (self.kind != "partial" or self.reduce not in REDUCE_OPS):
            raise ValueError(f"a {self.kind} placement can't have the reduction '{self.reduce}'")

    @property
    def reduce_op(self) -> str | None:
        """The Partial's reduction ("sum" for ``Partial()``); None for Shard and Replicate."""
        return (self.reduce or "sum") if self.kind == "partial" else None

    def __str__(self) -> str:
        if self.kind == "shard":
            return f"Shard({self.dim})"
        if self.kind == "replicate":
            return "Replicate()"
        if self.kind == "partial":
            return f"Partial({self.reduce})" if self.reduce else "Partial()"
        return self.kind if self.kind.endswith(")") else f"{self.kind}()"  # one torch has

    def normalized(self, rank: int) -> Placement:
        """Shard with a non-negative dim for a tensor of this rank."""
        if self.kind != "shard" or self.dim is None or self.dim >= 0:
            return self
        return Placement("shard", self.dim + rank)

    def as_json(self) -> list:
        """``["shard", d]``, ``["replicate"]``, ``["partial"]`` (sum) or ``["partial", op]``."""
        if self.kind == "shard":
            return ["shard", self.dim]
        return [self.kind, self.reduce] if self.reduce else [self.kind]

    @classmethod
    def from_json(cls, raw: list) -> Placement:
        """The inverse of :meth:`as_json`, for what a worker observed: a placement shardspec
        has no word for (``["_StridedShard"]``, a Partial of another reduction) keeps its
        own name, so it is shown as it is and equals none of ours."""
        kind = str(raw[0])
        if kind == "shard":
            return cls("shard", int(raw[1]))
        if kind == "partial" and len(raw) > 1:
            reduce = str(raw[1])
            return (
                cls("partial", reduce=reduce) if reduce in REDUCE_OPS else cls(f"Partial({reduce})")
            )
        return cls(kind)


def parse(text: str) -> Placement:
    """Parse a placement string; raises ValueError with a plain hint."""
    match = _FORMS.match(text) if isinstance(text, str) else None
    if not match:
        hint = ""
        if isinstance(text, str) and text.strip().startswith("Partial("):
            hint = f"; a Partial is written {_PARTIAL_FORMS}"
        raise ValueError(f"'{short(text)}' is not a placement; write {EXAMPLES}{hint}")
    if match.group("dim") is not None:
        return Placement("shard", int(match.group("dim")))
    if match.group("rep") is not None:
        return Placement("replicate")
    return Placement("partial", reduce=match.group("op"))
