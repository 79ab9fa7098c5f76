"""Placements as written in specs: ``Shard(d)``, ``Replicate()``, ``Partial()``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .yamlload import short

_FORMS = re.compile(
    r"^\s*(?:Shard\(\s*(?P<dim>[+-]?[0-9]{1,6})\s*\)|(?P<other>Replicate|Partial)\(\s*\))\s*$"
)
EXAMPLES = "Shard(0), Shard(-1), Replicate() or Partial()"


@dataclass(frozen=True)
class Placement:
    """One mesh axis's placement; ``dim`` is set for Shard only (may be negative)."""

    kind: str  # "shard" | "replicate" | "partial"
    dim: int | None = None

    def __str__(self) -> str:
        if self.kind == "shard":
            return f"Shard({self.dim})"
        return "Replicate()" if self.kind == "replicate" else "Partial()"

    def normalized(self, rank: int) -> Placement:
        """Shard with a non-negative dim for a tensor of this rank."""
        if self.kind != "shard" or self.dim is None or self.dim >= 0:
            return self
        return Placement("shard", self.dim + rank)

    def as_json(self) -> list:
        return ["shard", self.dim] if self.kind == "shard" else [self.kind]


def parse(text: str) -> Placement:
    """Parse a placement string; raises ValueError with a plain hint."""
    match = _FORMS.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"'{short(text)}' is not a placement; write {EXAMPLES}")
    if match.group("dim") is not None:
        return Placement("shard", int(match.group("dim")))
    return Placement(match.group("other").lower())
