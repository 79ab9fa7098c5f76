"""The end-of-run text: outcomes and time per engine and device count, skip reasons, checks
not made. Plain functions over the plugin's ledger (records as made by
:func:`runner.coverage.record`), so they work the same with and without pytest-xdist.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from .coverage import case_name

ORDER = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "not run")
NO_RECORD = "spec files with errors"
MAX_NAMED = 4  # cases named per skip reason before "+N more"


def _plural(count: int, outcome: str) -> str:
    return f"{count} {outcome}{'s' if outcome == 'error' and count != 1 else ''}"


def results(
    records: Mapping[str, dict[str, Any]],
    outcomes: Mapping[str, str],
    durations: Mapping[str, float],
    others: Iterable[str] = (),
) -> list[str]:
    """One line per engine and device count: outcomes and the time the tests took.

    ``others``: node ids of shardspec items without a record (a spec file's errors).
    """
    groups: dict[tuple[str, int] | None, Counter] = defaultdict(Counter)
    expected: Counter = Counter()
    seconds: dict[tuple[str, int] | None, float] = defaultdict(float)
    for nodeid, rec in records.items():
        key = (str(rec["engine"]), int(rec["n"]))
        outcome = outcomes.get(nodeid, "not run")
        groups[key][outcome] += 1
        if outcome == "passed" and rec.get("expects_error"):
            expected[key] += 1
        seconds[key] += durations.get(nodeid, 0.0)
    for nodeid in others:
        groups[None][outcomes.get(nodeid, "not run")] += 1
        seconds[None] += durations.get(nodeid, 0.0)
    lines = []
    for key in sorted(groups, key=lambda k: (k is None, k or ("", 0))):
        counts = groups[key]
        parts = []
        for outcome in [*ORDER, *sorted(set(counts) - set(ORDER))]:
            if counts[outcome]:
                part = _plural(counts[outcome], outcome)
                if outcome == "passed" and expected[key]:
                    part += f" ({expected[key]} by raising the expected error)"
                parts.append(part)
        label = NO_RECORD if key is None else f"{key[0]} n={key[1]}"
        lines.append(f"{label}: {', '.join(parts)} in {seconds[key]:.2f}s")
    return lines


def skip_reasons(records: Mapping[str, dict[str, Any]], skips: Mapping[str, str]) -> list[str]:
    """Skip reasons, most frequent first, each with its count and the cases it skipped."""
    counts: Counter = Counter()
    cases: dict[str, dict[str, None]] = defaultdict(dict)
    for nodeid, reason in skips.items():
        rec = records.get(nodeid)
        if rec is not None:
            # A reason may start with the case id (pytest's -rs shows it that way): the
            # cases are named after it here.
            prefix = f"{rec['case']}: "
            reason = reason.removeprefix(prefix)
            cases[reason][case_name(rec)] = None
        else:
            cases[reason][nodeid] = None
        counts[reason] += 1
    lines = []
    for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        names = list(cases[reason])
        named = ", ".join(names[:MAX_NAMED])
        if len(names) > MAX_NAMED:
            named += f", +{len(names) - MAX_NAMED} more"
        lines.append(f"{count:>4} skipped: {reason} [{named}]")
    return lines


def unchecked(records: Mapping[str, dict[str, Any]], ran: Iterable[str]) -> list[str]:
    """The checks not made by the tests that ran: one line per test and check."""
    lines = []
    for nodeid in sorted(ran):
        rec = records.get(nodeid)
        for note in (rec or {}).get("unchecked") or ():
            lines.append(f"{nodeid}: {note}")
    return lines
