"""``requires:``: which device counts a case runs at, and the requires that would skip a count."""

from __future__ import annotations

import functools
from typing import Any

from . import expr
from .spec import Case

HINT_COUNTS = range(1, 65)  # the device counts a suggested requires is checked against


def unmet_requirement(case: Case, n: int) -> str | None:
    """Why the case does not run at n (its ``requires`` is not met), or None."""
    req = case.data.get("requires")
    return unmet(req if isinstance(req, dict) else {}, n)


def unmet(req: dict, n: int) -> str | None:
    if "min_devices" in req and n < req["min_devices"]:
        return f"requires min_devices: {req['min_devices']}, but this run has n={n}"
    if "max_devices" in req and n > req["max_devices"]:
        return f"requires max_devices: {req['max_devices']}, but this run has n={n}"
    div = req.get("devices_divisible_by")
    if div and n % div:
        return f"requires devices_divisible_by: {div}, but this run has n={n}"
    return None


def runs_at(case: Case, limit: int = 16) -> list[int]:
    """The device counts up to ``limit`` at which the case's requires are met."""
    return [m for m in range(1, limit + 1) if unmet_requirement(case, m) is None]


def _mask(counts: Any) -> int:
    return sum(1 << m for m in counts)


@functools.cache
def _candidates() -> list[tuple[str, int, int]]:
    """Every simple requires: (its words, the counts it allows, the count it names or 0)."""
    out: list[tuple[str, int, int]] = []
    divisible = {k: _mask(m for m in HINT_COUNTS if m % k == 0) for k in range(2, 17)}
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

    good = _mask(m for m in HINT_COUNTS if ok(m))
    req = requires if isinstance(requires, dict) else {}
    now = _mask(m for m in HINT_COUNTS if not unmet(req, m))  # counts the case runs at today
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
